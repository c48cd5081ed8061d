"""The runtime stage's options: its host-data keys, their defaults, meanings and ranges.

``ccfactory.config.HostData`` (the flat schema every inventory is validated against) is
assembled from every stage's options and the shared keys; cross-field rules live there.
Example::

    >>> RuntimeOptions.model_fields["runtime_kata_vcpus"].default
    1
"""

from __future__ import annotations

from ccfactory.model import OptionsModel
from ccfactory.model import opt as _opt


# Kata guest sizes: Kata's Go runtime refuses less than 256 MiB (virtcontainers/hypervisor.go,
# MinHypervisorMemory = 256); kata-types caps vCPUs at 256 (config/default.rs, MAX_QEMU_VCPUS).
# The memory ceiling (4 TiB) is ccfactory's: Kata itself caps at the host's memory at run time.
KATA_MIN_MEMORY_MIB = 256
KATA_MAX_MEMORY_MIB = 4 * 1024 * 1024
KATA_MAX_VCPUS = 256


class RuntimeOptions(OptionsModel):
    """Host-data keys of the runtime stage."""

    # --- runtime (containerd, Kata, CoCo guest components)
    runtime_shims: list[str] | None = _opt(
        None,
        "Kata shims to register; default by TEE and GPUs (qemu-snp/qemu-tdx, plus qemu-nvidia-gpu-snp/-tdx with GPUs).",
        "runtime",
    )
    runtime_guest_pull: bool = _opt(
        False, "Pull images inside the guest through the nydus snapshotter (BOM-pinned) for the Kata TEE handlers.",
        "runtime",
    )
    runtime_drain: bool = _opt(
        False, "Allow replacing Kata while sandboxes run on it (drain the node first).", "runtime"
    )
    runtime_smoke_image: str | None = _opt(
        None,
        "Image the attestation check's TEE guest pulls itself (`registry/name@sha256:<64 hex>`, a busybox image "
        "your guests can reach); required for that check outside the lab.",
        "runtime",
        pattern=r"^[^\s@]+@sha256:[0-9a-f]{64}$",
    )
    runtime_kubeconfig: str | None = _opt(
        None, "Controller-side kubeconfig; when set, RuntimeClasses and node labels are applied with kubectl.", "runtime"
    )
    runtime_output_dir: str = _opt(
        "~/.local/share/ccfactory/runtime",
        "Controller-side directory for Kubernetes manifests and the per-host initdata report.",
        "runtime",
    )
    runtime_kata_memory: int = _opt(
        2048, "Default guest memory (MiB) for CPU Kata shims; 256 (Kata's minimum) to 4194304 (4 TiB).", "runtime",
        ge=KATA_MIN_MEMORY_MIB, le=KATA_MAX_MEMORY_MIB,
    )
    runtime_kata_vcpus: int = _opt(
        1, "Default guest vCPUs for CPU Kata shims; 1 to 256 (Kata's MAX_QEMU_VCPUS).", "runtime", ge=1, le=KATA_MAX_VCPUS
    )
    runtime_kata_gpu_memory: int = _opt(
        16384, "Default guest memory (MiB) for GPU Kata shims; 1024 to 4194304 (4 TiB).", "runtime",
        ge=1024, le=KATA_MAX_MEMORY_MIB,
    )
    runtime_kata_gpu_vcpus: int = _opt(
        4, "Default guest vCPUs for GPU Kata shims; 1 to 256.", "runtime", ge=1, le=KATA_MAX_VCPUS
    )
    runtime_kata_timeout: int = _opt(
        300, "Agent dial and create-container timeout (s), CPU guests; 30 to 86400.", "runtime", ge=30, le=86400
    )
    runtime_kata_gpu_timeout: int = _opt(
        1200, "Agent dial and create-container timeout (s), GPU guests; 60 to 86400.", "runtime", ge=60, le=86400
    )
    runtime_snp_guest_policy: int = _opt(
        0x30000,
        "SEV-SNP guest policy for the SNP shims (AMD SEV-SNP ABI spec 56860, 'Guest Policy'): a 64-bit field (at most 2^63-1 in TOML), reserved "
        "bit 17 set; DEBUG (bit 19) only with `runtime_snp_debug_acknowledged` or in the lab.",
        "runtime",
        ge=0,
        # the ABI field is 64 bits, but TOML integers are signed 64-bit (TOML 1.0, Integer) and
        # bits 63:26 are reserved (must be zero), so 2**63-1 is the largest policy Kata can read
        le=2**63 - 1,
    )
    runtime_snp_debug_acknowledged: bool = _opt(
        False,
        "Acknowledge that the SNP guest policy's DEBUG bit lets the host read and write guest memory: "
        "required for it outside the lab.",
        "runtime",
    )
    runtime_tdx_qgs_port: int = _opt(
        0, "TDX quote generation service vsock port; 0 (Kata 4.1.0's default): the QGS Unix socket "
        "`/var/run/tdx-qgs/qgs.socket` if it exists, else vsock 4050.", "runtime", ge=0, le=65535
    )
    coco_resource_uris: list[str] = _opt(
        [], "KBS resources (`kbs:///repo/type/tag`) the guest's confidential data hub fetches at start.", "runtime"
    )
    runtime_health_timeout: float = _opt(
        60.0, "Seconds to wait for containerd to be healthy after a config change before rolling back (finite, "
        "at most 3600).", "runtime",
        gt=0, le=3600,
    )
