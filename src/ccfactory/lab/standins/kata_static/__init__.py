"""The lab's kata-static stand-in as a BOM artifact (``kata-static``), for the lab artifact server.

The tarball keeps the real release's layout (``opt/kata/...``, extracted at ``/``; Kata
``tools/packaging/static-build``; docs/reference/cc-stack.md §4.1)::

    opt/kata/bin/containerd-shim-kata-v2          execs containerd-shim-runc-v2 (no VM in the lab)
    opt/kata/bin/kata-runtime                     --version / env / check, real output formats
    opt/kata/bin/qemu-system-x86_64{,-snp-experimental,-tdx-experimental}   --version only
    opt/kata/share/defaults/kata-containers/configuration-<shim>.toml      upstream structure
    opt/kata/share/kata-containers/{vmlinuz*.container,kata-containers*.img}  placeholders
    opt/kata/share/ovmf/AMDSEV.fd                 real data: OVMF AmdSev (last 4 KiB), measurable (data/SOURCES.md)
    opt/kata/share/ovmf/{OVMF.inteltdx.fd,OVMF.fd}                          placeholders
    opt/kata/share/kata-containers/ccfactory-lab-standin.toml               stand-in metadata

The configuration files carry the keys and per-shim values of Kata 4.1's
``src/runtime/config/configuration-qemu-*.toml.in`` (sections ``[hypervisor.qemu]``,
``[factory]``, ``[agent.kata]``, ``[runtime]``), with short comments.

Requirements: the real Kata 4.1.0 needs containerd >= 1.7 (its ``versions.yaml``
externals.containerd.minimum, kata-containers@4.1.0:versions.yaml:303-311). This stand-in
runs no VM and no Kata runtime code; what it needs from containerd is the shim v2 protocol
and a runc shim, which Debian 12's containerd 1.6 has. It says so in its own metadata
(``[requires] containerd = "1.6"``), which the runtime role reads from the tarball and
prefers over its table of upstream releases. docs/runtime.md explains the lab rule.

Register with the lab artifact server (``ccfactory.lab.artifacts.standins()``)::

    from ccfactory.lab.standins.kata_static import standin as kata_static_standin

Example::

    >>> files = tree()
    >>> "kata/bin/kata-runtime" in files and "kata/share/ovmf/AMDSEV.fd" in files
    True
"""

from __future__ import annotations

import hashlib
from importlib import resources

ARTIFACT = "kata-static"
UPSTREAM_VERSION = "4.1.0"
VERSION = f"{UPSTREAM_VERSION}-ccfactory-lab.1"
FILENAME = f"kata-static-{VERSION}-amd64.tar.xz"
TOP_DIR = "opt"  # the real tarball's members are ./opt/kata/...
MIN_CONTAINERD = "1.6"
METADATA = "kata/share/kata-containers/ccfactory-lab-standin.toml"
NOTE = (
    "lab only: kata-static layout, kata-runtime CLI and configuration files; the shim logs the QEMU "
    "launch the runtime would make, then execs containerd-shim-runc-v2 (no VM, no TEE); needs containerd >= 1.6 (the real 4.1.0 needs >= 1.7)"
)

PREFIX = "/opt/kata"
DEFAULTS = "kata/share/defaults/kata-containers"
ASSETS = "kata/share/kata-containers"
PLACEHOLDER = b"ccfactory lab stand-in: not a real guest asset (the lab starts no VM)\n"

# DEFENABLEANNOTATIONS_COCO (kata-containers@4.1.0:src/runtime/Makefile:235), every CoCo shim
_COCO_ANNOTATIONS = '["enable_iommu", "kernel_params", "kernel_verity_params", "default_vcpus", "default_memory", "cc_init_data"]'
_NV_ANNOTATIONS = _COCO_ANNOTATIONS
_KP = "cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
_KP_NV = "cgroup_no_v1=all pci=realloc pci=nocrs pci=assign-busses nvrc.smi.srs=1"

# Per shim: the values Kata 4.1.0's Makefile substitutes (docs/runtime.md, "Kata stand-in
# contract": each value with its upstream file:line, checked by tests/unit/test_standin_kata.py).
# cgroup_only: sandbox_cgroup_only (DEFSANDBOXCGROUPONLY false, _NV true: Makefile:297,503);
# disable_block: DEFDISABLEBLOCK := true (Makefile:265); timeout: [agent.kata] dial_timeout.
SHIMS: dict[str, dict] = {
    "qemu": dict(
        qemu="qemu-system-x86_64", kernel="vmlinux.container", image="kata-containers.img", firmware="",
        confidential=False, snp=False, tdx=False, kernel_params="", rootfs="ext4", memory=2048, vcpus=1,
        annotations='["enable_iommu", "virtio_fs_extra_args", "kernel_params"]', cold_plug="no-port",
        shared_fs="virtio-fs", timeout=60, create_timeout=60, guest_pull=False, cgroup_only=False,
        disable_block=False,
    ),
    "qemu-coco-dev": dict(
        qemu="qemu-system-x86_64", kernel="vmlinuz.container", image="kata-containers-confidential.img",
        firmware="", confidential=False, snp=False, tdx=False, kernel_params=_KP, rootfs="ext4", memory=2048,
        vcpus=1, annotations=_COCO_ANNOTATIONS, cold_plug="no-port", shared_fs="none", timeout=45,
        create_timeout=60, guest_pull=False, cgroup_only=False, disable_block=True,
    ),
    "qemu-snp": dict(
        qemu="qemu-system-x86_64", kernel="vmlinuz.container", image="kata-containers-confidential.img",
        firmware="AMDSEV.fd", confidential=True, snp=True, tdx=False, kernel_params=_KP, rootfs="ext4",
        memory=2048, vcpus=1, annotations=_COCO_ANNOTATIONS, cold_plug="no-port", shared_fs="none",
        timeout=90, create_timeout=60, guest_pull=False, cgroup_only=False, disable_block=True,
    ),
    "qemu-tdx": dict(
        qemu="qemu-system-x86_64", kernel="vmlinuz.container", image="kata-containers-confidential.img",
        firmware="OVMF.inteltdx.fd", confidential=True, snp=False, tdx=True, kernel_params=_KP, rootfs="ext4",
        memory=2048, vcpus=1, annotations=_COCO_ANNOTATIONS, cold_plug="no-port", shared_fs="none",
        timeout=60, create_timeout=60, guest_pull=False, cgroup_only=False, disable_block=True,
    ),
    "qemu-nvidia-gpu-snp": dict(
        qemu="qemu-system-x86_64-snp-experimental", kernel="vmlinuz-nvidia-gpu.container",
        image="kata-containers-nvidia-gpu-confidential.img", firmware="AMDSEV.fd", confidential=True, snp=True,
        tdx=False, kernel_params=_KP_NV, rootfs="erofs", memory=8192, vcpus=1, annotations=_NV_ANNOTATIONS,
        cold_plug="root-port", shared_fs="none", timeout=1200, create_timeout=1200, guest_pull=False,
        cgroup_only=True, disable_block=True,
    ),
    "qemu-nvidia-gpu-tdx": dict(
        qemu="qemu-system-x86_64-tdx-experimental", kernel="vmlinuz-nvidia-gpu.container",
        image="kata-containers-nvidia-gpu-confidential.img", firmware="OVMF.inteltdx.fd", confidential=True,
        snp=False, tdx=True, kernel_params=_KP_NV, rootfs="erofs", memory=8192, vcpus=1,
        annotations=_NV_ANNOTATIONS, cold_plug="root-port", shared_fs="none", timeout=1200,
        create_timeout=1200, guest_pull=False, cgroup_only=True, disable_block=True,
    ),
}

GUEST_ASSETS = (
    "vmlinux.container", "vmlinuz.container", "vmlinuz-nvidia-gpu.container", "kata-containers.img",
    "kata-containers-confidential.img", "kata-containers-initrd-confidential.img",
    "kata-containers-nvidia-gpu.img", "kata-containers-nvidia-gpu-confidential.img",
)  # fmt: skip
FIRMWARE = ("AMDSEV.fd", "OVMF.inteltdx.fd", "OVMF.fd")
QEMUS = ("qemu-system-x86_64", "qemu-system-x86_64-snp-experimental", "qemu-system-x86_64-tdx-experimental")


def commit() -> str:
    """A stable fake commit id (what ``kata-runtime --version`` prints after ``commit``)."""
    return hashlib.sha1(VERSION.encode()).hexdigest()  # noqa: S324 - an identifier, not security


def _b(value: bool) -> str:
    return "true" if value else "false"


def configuration(shim: str) -> str:
    """``configuration-<shim>.toml`` as kata-static ships it (Makefile values substituted)."""
    v = SHIMS[shim]
    hv = [
        f'path = "{PREFIX}/bin/{v["qemu"]}"',
        f'kernel = "{PREFIX}/share/kata-containers/{v["kernel"]}"',
        f'image = "{PREFIX}/share/kata-containers/{v["image"]}"',
        'machine_type = "q35"',
        "",
        "# rootfs filesystem type: ext4, xfs, erofs (default for NVIDIA)",
        f'rootfs_type = "{v["rootfs"]}"',
        "",
        "# Enable confidential guest support. Default false",
        f"confidential_guest = {_b(v['confidential'])}",
    ]
    if v["snp"]:
        hv += ["", "# enable SEV SNP VMs", "sev_snp_guest = true"]
    hv += [
        "",
        "rootless = false",
        "",
        "# List of valid annotation names for the hypervisor",
        f"enable_annotations = {v['annotations']}",
        f'valid_hypervisor_paths = ["{PREFIX}/bin/{v["qemu"]}"]',
    ]
    if v["snp"]:
        hv += [
            "",
            "# SNP 'ID Block' and 'ID Authentication Information Structure'.",
            'snp_id_block = ""',
            'snp_id_auth = ""',
            "",
            "# SNP Guest Policy, the 'POLICY' parameter to the SNP_LAUNCH_START command.",
            "snp_guest_policy = 196608",
        ]
    if v["tdx"]:
        hv += [
            "",
            "# Qgs port: 0 means the QGS Unix socket /var/run/tdx-qgs/qgs.socket if present, else vsock 4050",
            "tdx_quote_generation_service_socket_port = 0",
        ]
    firmware = f"{PREFIX}/share/ovmf/{v['firmware']}" if v["firmware"] else ""
    hv += [
        "",
        "# Optional space-separated list of options to pass to the guest kernel.",
        f'kernel_params = "{v["kernel_params"]}"',
        "",
        "# Path to the firmware.",
        f'firmware = "{firmware}"',
        'firmware_volume = ""',
        'machine_accelerators = ""',
        'cpu_features = "pmu=off"',
        "",
        "# Default number of vCPUs per SB/VM",
        f"default_vcpus = {v['vcpus']}",
        "default_maxvcpus = 0",
        "default_bridges = 1",
        "",
        "# Default memory size in MiB for SB/VM.",
        f"default_memory = {v['memory']}",
        "memory_slots = 10",
        "default_maxmemory = 0",
        "memory_offset = 0",
        "enable_virtio_mem = false",
        f"disable_block_device_use = {_b(v['disable_block'])}",
        f'shared_fs = "{v["shared_fs"]}"',
        f'virtio_fs_daemon = "{PREFIX}/libexec/virtiofsd"',
        f'valid_virtio_fs_daemon_paths = ["{PREFIX}/libexec/virtiofsd"]',
        'block_device_driver = "virtio-scsi"',
        'block_device_aio = "io_uring"',
        "enable_iommu = false",
        "enable_iommu_platform = false",
        "disable_image_nvdimm = true",
        "pcie_root_port = 0",
        "",
        "# Enable cold-plugging of VFIO devices to a bridge-port, root-port or switch-port.",
        f'cold_plug_vfio = "{v["cold_plug"]}"',
        "disable_vhost_net = false",
        'entropy_source = "/dev/urandom"',
        'valid_entropy_sources = ["/dev/urandom", "/dev/random", ""]',
        'guest_hook_path = ""',
        "enable_debug = false",
        "disable_nesting_checks = false",
        "disable_selinux = false",
        "disable_guest_selinux = true",
    ]
    factory = [
        "enable_template = false",
        'template_path = "/run/vc/vm/template"',
        "vm_cache_number = 0",
        'vm_cache_endpoint = "/var/run/kata-containers/cache.sock"',
    ]
    agent = [
        "enable_debug = false",
        "enable_tracing = false",
        "kernel_modules = []",
        "debug_console_enabled = false",
        "",
        "# Agent connection dialing timeout value in seconds",
        f"dial_timeout = {v['timeout']}",
    ]
    runtime = [
        "enable_debug = false",
        'internetworking_model = "tcfilter"',
        "disable_guest_seccomp = true",
        "enable_vcpus_pinning = false",
        "enable_tracing = false",
        "disable_new_netns = false",
        f"sandbox_cgroup_only = {_b(v['cgroup_only'])}",
        f"static_sandbox_resource_mgmt = {_b(v['confidential'])}",
        "sandbox_bind_mounts = []",
        f'vfio_mode = "{"guest-kernel" if v["cold_plug"] != "no-port" else "guest-kernel"}"',
        "disable_guest_empty_dir = true",
        f'emptydir_mode = "{"block-encrypted" if v["confidential"] else "shared-fs"}"',
        "experimental = []",
        "enable_pprof = false",
        "",
        "# Indicates the CreateContainer request timeout needed for the workload(s)",
        f"create_container_timeout = {v['create_timeout']}",
        'dan_conf = "/run/kata-containers/dans"',
        f"experimental_force_guest_pull = {_b(v['guest_pull'])}",
        'kubelet_root_dir = "/var/lib/kubelet"',
        f'pod_resource_api_sock = "{"/var/lib/kubelet/pod-resources/kubelet.sock" if v["cold_plug"] != "no-port" else ""}"',
    ]
    header = [
        "# Copyright (c) 2017-2019 Intel Corporation",
        "#",
        "# SPDX-License-Identifier: Apache-2.0",
        "#",
        "",
        "# XXX: WARNING: this file is auto-generated.",
        "# XXX:",
        f"# XXX: Source file: \"config/configuration-{shim}.toml.in\"",
        "# XXX: Project:",
        "# XXX:   Name: Kata Containers",
        "# XXX:   Type: kata",
        "#",
        f"# ccfactory lab stand-in of kata-static {UPSTREAM_VERSION}: same sections, keys and values for",
        "# this shim as the upstream file; comments shortened.",
    ]
    body = (
        header
        + ["", "[hypervisor.qemu]", *hv, "", "[factory]", *factory, "", "[agent.kata]", *agent, "", "[runtime]", *runtime]
    )
    return "\n".join(body) + "\n"


def _program(name: str) -> bytes:
    return resources.files(__name__).joinpath("program", name).read_bytes()


README = f"""\
# kata-static {VERSION} (ccfactory lab stand-in)

This is NOT Kata Containers. It keeps kata-static's layout under /opt/kata, the
`kata-runtime` command line (`--version`, `env`, `check`) and output formats, and the
configuration files' sections, keys and per-shim values of Kata {UPSTREAM_VERSION}. The lab has no
TEE and no KVM: `containerd-shim-kata-v2` starts no VM, it execs `containerd-shim-runc-v2`,
so a container run through a Kata handler runs as a plain runc container. When a sandbox
starts, the shim logs (syslog tag `kata`) the QEMU command line the real runtime would launch.
Guest kernels, images and the TDX firmware are placeholders; AMDSEV.fd is the last 4 KiB of a
real OVMF AmdSev build (measurable, not bootable).
"""

METADATA_TEXT = f"""\
# ccfactory lab stand-in metadata (not part of kata-static)
[standin]
version = "{VERSION}"
upstream_version = "{UPSTREAM_VERSION}"
note = "runs no VM; the shim execs containerd-shim-runc-v2"

[requires]
# the real kata-static {UPSTREAM_VERSION} needs containerd >= 1.7; this stand-in only needs the
# shim v2 protocol and a runc shim
containerd = "{MIN_CONTAINERD}"
"""


def tree() -> dict[str, bytes]:
    """``relative path (below opt/) -> content`` of the stand-in tarball (deterministic)."""
    runtime = _program("kata-runtime.py").replace(b"@VERSION@", VERSION.encode()).replace(b"@COMMIT@", commit().encode())
    files: dict[str, bytes] = {
        "kata/bin/containerd-shim-kata-v2": _program("containerd-shim-kata-v2.sh"),
        "kata/bin/kata-runtime": runtime,
        "kata/libexec/virtiofsd": PLACEHOLDER,
        "kata/README.ccfactory-lab.md": README.encode(),
        METADATA: METADATA_TEXT.encode(),
    }
    for qemu in QEMUS:
        files[f"kata/bin/{qemu}"] = _program("qemu-system.sh")
    for shim in SHIMS:
        files[f"{DEFAULTS}/configuration-{shim}.toml"] = configuration(shim).encode()
    files[f"{DEFAULTS}/configuration.toml"] = configuration("qemu").encode()
    for asset in GUEST_ASSETS:
        files[f"{ASSETS}/{asset}"] = PLACEHOLDER
    for fw in FIRMWARE:
        files[f"kata/share/ovmf/{fw}"] = PLACEHOLDER
    # Makefile:165 FIRMWARESNPPATH: sev-snp-measure measures it (data/SOURCES.md)
    files["kata/share/ovmf/AMDSEV.fd"] = resources.files(__name__).joinpath("data", "AMDSEV.fd").read_bytes()
    return dict(sorted(files.items()))


EXECUTABLES = frozenset({"kata/bin/containerd-shim-kata-v2", "kata/bin/kata-runtime", *(f"kata/bin/{q}" for q in QEMUS)})


def standin():
    """The ``StandIn`` entry for ``ccfactory.lab.artifacts.standins()``."""
    from ccfactory.lab.artifacts import StandIn

    return StandIn(
        name=ARTIFACT,
        version=VERSION,
        filename=FILENAME,
        top_dir=TOP_DIR,
        files=tree,
        executables=EXECUTABLES,
        note=NOTE,
    )
