"""What the runtime stage wants on one node: shims, handlers, Kata settings, containerd choice (pure).

Shims (Kata ``src/runtime/config/configuration-<shim>.toml.in``): ``qemu-snp`` or
``qemu-tdx`` by the node's TEE, plus ``qemu-nvidia-gpu-snp`` / ``-tdx`` on nodes with
GPUs. Handler name ``kata-<shim>`` and ``runtime_type`` ``io.containerd.kata-<shim>.v2`` as
kata-deploy writes them (``tools/packaging/kata-deploy/binary/src/runtime/containerd.rs``).

Example::

    >>> shims_for("snp", gpus=True)
    ('qemu-snp', 'qemu-nvidia-gpu-snp')
    >>> handler_name("qemu-snp"), runtime_type("qemu-snp")
    ('kata-qemu-snp', 'io.containerd.kata-qemu-snp.v2')
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

KATA_PREFIX = "/opt/kata"
SHIM_BINARY = f"{KATA_PREFIX}/bin/containerd-shim-kata-v2"
KATA_RUNTIME = f"{KATA_PREFIX}/bin/kata-runtime"
DEFAULTS_DIR = f"{KATA_PREFIX}/share/defaults/kata-containers"
RUNTIMES_DIR = f"{DEFAULTS_DIR}/runtimes"  # kata-deploy's per-shim copies, each with config.d/
DROPIN_NAME = "50-ccfactory.toml"
SHIM_LINK_DIR = "/usr/local/bin"  # containerd < 1.7 ignores runtime_path: it looks up containerd-shim-<type>-v2

TEE_SHIMS = {"snp": "qemu-snp", "tdx": "qemu-tdx"}
GPU_SHIMS = {"snp": "qemu-nvidia-gpu-snp", "tdx": "qemu-nvidia-gpu-tdx"}
KNOWN_SHIMS = (*TEE_SHIMS.values(), *GPU_SHIMS.values())

POD_ANNOTATIONS = ("io.katacontainers.*",)
CONTAINER_ANNOTATIONS = ("io.kubernetes.container.terminationMessage*",)
NYDUS_SNAPSHOTTER = "nydus-for-kata-tee"  # kata-deploy's name (cc-stack.md §4.3)
NYDUS_ADDRESS = "/run/nydus-for-kata-tee/containerd-nydus-grpc.sock"
# kata-deploy sets proxy_plugins.<nydus>.exports.root = /var/lib/<nydus>
# (kata-containers@4.1.0:tools/packaging/kata-deploy/binary/src/artifacts/snapshotters.rs:194-198)
NYDUS_ROOT = "/var/lib/nydus-for-kata-tee"

# RuntimeClass overheads (kata-deploy helm runtimeclasses.yaml; cc-stack.md §4.4)
OVERHEAD = {
    "qemu-snp": {"memory": "2048Mi", "cpu": "1.0"},
    "qemu-tdx": {"memory": "2048Mi", "cpu": "1.0"},
    "qemu-nvidia-gpu-snp": {"memory": "10240Mi", "cpu": "1.0"},
    "qemu-nvidia-gpu-tdx": {"memory": "10240Mi", "cpu": "1.0"},
}
NODE_SELECTOR = {
    "snp": {"amd.feature.node.kubernetes.io/snp": "true"},
    "tdx": {"intel.feature.node.kubernetes.io/tdx": "true"},
}
GPU_NODE_SELECTOR = {"nvidia.com/cc.ready.state": "true"}
CCFACTORY_LABEL = "ccfactory.io/kata-runtime"  # node label ccfactory sets: <handler>=true


def shims_for(tee: str, gpus: bool) -> tuple[str, ...]:
    if tee not in TEE_SHIMS:
        return ()
    return (TEE_SHIMS[tee], GPU_SHIMS[tee]) if gpus else (TEE_SHIMS[tee],)


def handler_name(shim: str) -> str:
    return f"kata-{shim}"


def runtime_type(shim: str) -> str:
    return f"io.containerd.kata-{shim}.v2"


def shim_link(shim: str) -> str:
    """``/usr/local/bin/containerd-shim-kata-<shim>-v2``: what containerd looks up for the type."""
    return f"{SHIM_LINK_DIR}/containerd-shim-kata-{shim}-v2"


def upstream_config(shim: str) -> str:
    return f"{DEFAULTS_DIR}/configuration-{shim}.toml"


def shim_config(shim: str) -> str:
    """The per-shim copy containerd points at (its own ``config.d/`` beside it)."""
    return f"{RUNTIMES_DIR}/{shim}/configuration-{shim}.toml"


def shim_dropin(shim: str) -> str:
    return f"{RUNTIMES_DIR}/{shim}/config.d/{DROPIN_NAME}"


def is_gpu_shim(shim: str) -> bool:
    return "nvidia-gpu" in shim


def shim_tee(shim: str) -> str:
    return "snp" if shim.endswith("snp") else "tdx" if shim.endswith("tdx") else "none"


def select_shims(tee: str, gpu_count: int, gpus_found: int, requested: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[str]]:
    """(shims, problems): the node's shims, or the requested ones checked against the node."""
    if requested is None:
        return shims_for(tee, gpu_count > 0), []
    problems = []
    for shim in requested:
        if shim not in KNOWN_SHIMS:
            problems.append(f"unknown Kata shim {shim!r}; known: {', '.join(KNOWN_SHIMS)}")
            continue
        if shim_tee(shim) != tee:
            problems.append(f"shim {shim} needs a {shim_tee(shim).upper()} node, this node's tee is {tee}")
        if is_gpu_shim(shim) and (gpu_count == 0 or gpus_found == 0):
            problems.append(
                f"GPU shim {shim} requested on a node without GPUs (inventory gpu_count {gpu_count}, "
                f"{gpus_found} NVIDIA GPU(s) found); remove it, or fix gpu_count and run the gpu stage first"
            )
    return tuple(requested), problems


# ------------------------------------------------------------------ versions and requirements

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``'v2.3.5'``, ``'1.6.20~ds1'``, ``'containerd://2.2.0'`` -> (major, minor, patch)."""
    if not text:
        return None
    m = _VERSION.search(text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def at_least(version: str | None, minimum: str) -> bool:
    have, want = parse_version(version), parse_version(minimum)
    return have is not None and want is not None and have >= want


@cache
def _kata_table() -> dict:
    return tomllib.loads(resources.files("ccfactory.coco").joinpath("kata.toml").read_text())


@dataclass(frozen=True)
class KataRequirement:
    min_containerd: str
    source: str


def kata_requirement(version: str, tarball_requires: dict | None = None) -> KataRequirement:
    """What Kata ``version`` needs from containerd: the tarball's own metadata first (the lab
    stand-in carries it), then ``kata.toml``'s release table, then its default by major."""
    if tarball_requires and tarball_requires.get("containerd"):
        return KataRequirement(str(tarball_requires["containerd"]), "the kata-static tarball's own metadata")
    table = _kata_table()
    for release in table.get("release", []):
        if release["version"] == version:
            return KataRequirement(release["min_containerd"], release["source"])
    parsed = parse_version(version)
    major = str(parsed[0]) if parsed else ""
    default = table.get("default", {}).get(major)
    if default:
        return KataRequirement(default, f"kata.toml default for Kata {major}.x")
    return KataRequirement("2.2", "no entry for this Kata release; assuming the newest known floor")


@dataclass(frozen=True)
class ContainerdChoice:
    """How the node gets a containerd new enough for the pinned Kata."""

    action: str  # "keep" | "distro" | "bom" | "fail"
    version: str  # the version the node will run
    reason: str
    problems: tuple[str, ...] = ()

    @property
    def config_version(self) -> int:
        v = parse_version(self.version)
        return 3 if v and v[0] >= 2 else 2

    @property
    def drop_in(self) -> bool:
        """containerd merges imported files per plugin table from 2.0 on; 1.x replaces whole
        plugin sections with an import's (kata-deploy: drop-ins only for containerd >= 2.0)."""
        v = parse_version(self.version)
        return bool(v and v[0] >= 2)


def choose_containerd(
    installed: str | None,
    distro_candidate: str | None,
    bom_version: str | None,
    bom_problem: str,
    minimum: str,
    kata_label: str,
) -> ContainerdChoice:
    """Keep the installed containerd, install the distribution's, or the BOM's pinned release.

    >>> choose_containerd("1.6.20", "1.6.20", "2.3.5", "", "1.6", "kata").action
    'keep'
    >>> choose_containerd(None, "1.6.20", "2.3.5", "", "2.2", "kata").action
    'bom'
    """
    if installed and at_least(installed, minimum):
        return ContainerdChoice("keep", installed, f"containerd {installed} meets {kata_label}'s minimum {minimum}")
    if distro_candidate and at_least(distro_candidate, minimum) and not installed_from_elsewhere(installed, distro_candidate):
        return ContainerdChoice("distro", distro_candidate, f"the distribution's containerd {distro_candidate} meets {minimum}")
    have = f"installed {installed}" if installed else "none installed"
    offer = f"the distribution offers {distro_candidate}" if distro_candidate else "the distribution offers none"
    if bom_version and at_least(bom_version, minimum) and not bom_problem:
        return ContainerdChoice(
            "bom", bom_version, f"{kata_label} needs containerd >= {minimum} ({have}, {offer}): the BOM's {bom_version}"
        )
    why = bom_problem or (f"the BOM's containerd {bom_version} is older than {minimum}" if bom_version else "the BOM pins no containerd")
    return ContainerdChoice(
        "fail",
        installed or "",
        "",
        (
            f"{kata_label} needs containerd >= {minimum}: {have}, {offer}, and {why}; nothing was changed. "
            "Pin a containerd release that meets it in the BOM (or make it reachable), or pin a Kata that "
            "supports this containerd",
        ),
    )


def installed_from_elsewhere(installed: str | None, candidate: str) -> bool:
    """True when a containerd runs that the distribution package would not replace cleanly
    (a newer static release): never downgrade it through apt."""
    have, cand = parse_version(installed), parse_version(candidate)
    return bool(have and cand and have > cand)


# ------------------------------------------------------------------ Kata per-shim settings


@dataclass(frozen=True)
class ShimSettings:
    """ccfactory's settings for one shim (the drop-in's values)."""

    shim: str
    tee: str
    gpu: bool
    firmware: str
    default_memory: int
    default_vcpus: int
    dial_timeout: int
    create_container_timeout: int
    snp_guest_policy: int = 0x30000
    tdx_qgs_port: int = 0
    force_guest_pull: bool = False
    enable_annotations: tuple[str, ...] = ()
    extra_kernel_params: tuple[str, ...] = ()


FIRMWARE = {"snp": f"{KATA_PREFIX}/share/ovmf/AMDSEV.fd", "tdx": f"{KATA_PREFIX}/share/ovmf/OVMF.inteltdx.fd"}
# Kata 4.1.0 DEFENABLEANNOTATIONS_COCO, the same list for every CoCo shim, GPU or not
# (kata-containers@4.1.0:src/runtime/Makefile:235)
ANNOTATIONS = ("enable_iommu", "kernel_params", "kernel_verity_params", "default_vcpus", "default_memory", "cc_init_data")
GPU_ANNOTATIONS = ANNOTATIONS


@dataclass(frozen=True)
class KataDefaults:
    """Sizing and timeouts (role arguments today; HostData ``runtime_kata_*`` later)."""

    memory: int = 2048
    vcpus: int = 1
    gpu_memory: int = 16384  # a GPU guest needs room for the driver and model staging
    gpu_vcpus: int = 4
    timeout: int = 300  # agent dial / create container, CPU guests
    gpu_timeout: int = 1200  # GPU guests boot slowly (cold-plugged GPUs, CC attestation)
    snp_guest_policy: int = 0x30000  # QEMU's default: SMT allowed, debug off, migration agent off
    # 0: the QGS Unix socket /var/run/tdx-qgs/qgs.socket if it exists, else vsock 4050
    # (kata-containers@4.1.0:src/runtime/pkg/govmm/qemu/qemu.go:53,541-552; Makefile:197 ships 0)
    tdx_qgs_port: int = 0
    extra_kernel_params: tuple[str, ...] = field(default=())


def shim_settings(shim: str, defaults: KataDefaults, extra_kernel_params: tuple[str, ...] = (),
                  force_guest_pull: bool = False) -> ShimSettings:
    """``force_guest_pull``: ``[runtime] experimental_force_guest_pull`` (the TEE guest pulls every
    image itself; docs/attestation.md, "How the image reaches the guest")."""
    tee, gpu = shim_tee(shim), is_gpu_shim(shim)
    return ShimSettings(
        shim=shim,
        tee=tee,
        gpu=gpu,
        firmware=FIRMWARE.get(tee, ""),
        default_memory=defaults.gpu_memory if gpu else defaults.memory,
        default_vcpus=defaults.gpu_vcpus if gpu else defaults.vcpus,
        dial_timeout=defaults.gpu_timeout if gpu else defaults.timeout,
        create_container_timeout=defaults.gpu_timeout if gpu else defaults.timeout,
        snp_guest_policy=defaults.snp_guest_policy,
        tdx_qgs_port=defaults.tdx_qgs_port,
        force_guest_pull=force_guest_pull,
        enable_annotations=GPU_ANNOTATIONS if gpu else ANNOTATIONS,
        extra_kernel_params=tuple(defaults.extra_kernel_params) + tuple(extra_kernel_params),
    )


def merged_kernel_params(upstream: str, extra: tuple[str, ...]) -> str:
    """Upstream's ``kernel_params`` plus ccfactory's (a drop-in replaces the whole string, so
    upstream's own parameters are carried over); a key ccfactory sets replaces upstream's."""
    ours = {p.split("=", 1)[0]: p for p in extra}
    kept = [p for p in upstream.split() if p.split("=", 1)[0] not in ours or p.split("=", 1)[0] in ("pci", "cgroup_no_v1")]
    out = kept + [p for p in extra if p not in kept]
    return " ".join(out)
