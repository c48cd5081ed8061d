"""NVIDIA driver tools' text output: ``nvidia-smi`` and ``/proc/driver/nvidia``.

These run where a driver is loaded, i.e. inside a confidential guest (the host has no
NVIDIA driver in a CoCo setup). Formats follow the recordings of driver 580.159.04 in
``tests/fixtures/nvidia-{h100,h200}-real`` exactly; see docs/formats.md.

Example::

    >>> cc = parse_conf_compute("CC status: ON\\nConfidential Compute GPUs Ready state: ready\\n")
    >>> cc.cc_on, cc.gpus_ready
    (True, True)
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ccfactory.parsers.pci import normalize_bdf

# ------------------------------------------------------------------ nvidia-smi conf-compute

# Label (lower case) -> field. Each conf-compute query prints "<label>: <value>"; -q prints
# the same facts padded as "<label> : <value>". Labels as recorded with driver 580.159.04.
_CONF_COMPUTE_LABELS = {
    "cc status": "cc_status",  # -f
    "cc state": "cc_status",  # -q
    "confidential compute gpus ready state": "ready_state",  # -grs
    "cc gpus ready state": "ready_state",  # -q
    "cc environment": "environment",  # -e
    "devtools mode": "devtools_mode",  # -d
    "multi-gpu mode": "multi_gpu_mode",  # -mgm, -q
    "cpu cc capabilities": "cpu_caps",  # -gc, -q
    "gpu cc capabilities": "gpu_caps",  # -gg, -q
    "confidential compute key rotation threshold attacker advantage": "key_rotation_attacker_advantage",  # -gkr
}

# -grs prints "ready"/"not-ready", -q prints "Ready"/"Not Ready".
_READY_WORDS = {"ready": True, "not-ready": False, "not ready": False}

_GPU_HEADER = re.compile(r"^GPU (\d+): (.+) \(UUID: (\S+)\)\s*$")
_MEM_SIZE = re.compile(r"^(Protected|Unprotected) memory size:\s*(\d+)\s*KiB\s*$")


@dataclass(frozen=True)
class ConfComputeMemory:
    """One GPU's block of ``nvidia-smi conf-compute -gm``."""

    index: int
    name: str
    uuid: str
    protected_kib: int | None = None
    unprotected_kib: int | None = None


@dataclass(frozen=True)
class ConfComputeStatus:
    """What any mix of ``nvidia-smi conf-compute`` queries printed. None = not printed."""

    cc_status: str | None = None  # "ON" / "OFF"
    ready_state: str | None = None  # as printed: "ready", "not-ready", "Not Ready", ...
    environment: str | None = None  # "PRODUCTION", "UNAVAILABLE", ...
    devtools_mode: str | None = None
    multi_gpu_mode: str | None = None  # "None", "Protected PCIe", ...
    cpu_caps: str | None = None  # "None", "AMD SEV-SNP", ...
    gpu_caps: str | None = None  # "CC Capable", ...
    key_rotation_attacker_advantage: int | None = None
    memory: tuple[ConfComputeMemory, ...] = ()

    @property
    def cc_on(self) -> bool | None:
        return None if self.cc_status is None else self.cc_status.upper() == "ON"

    @property
    def gpus_ready(self) -> bool | None:
        return None if self.ready_state is None else _READY_WORDS.get(self.ready_state.strip().lower())

    @property
    def production(self) -> bool | None:
        return None if self.environment is None else self.environment.upper() == "PRODUCTION"


def parse_conf_compute(text: str) -> ConfComputeStatus:
    """Parse the output of one or more ``nvidia-smi conf-compute`` queries (-f -grs -e -d -mgm -gc -gg -gkr -gm -q)."""
    fields: dict[str, object] = {}
    memory: list[ConfComputeMemory] = []
    current: ConfComputeMemory | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _GPU_HEADER.match(line):
            if current:
                memory.append(current)
            current = ConfComputeMemory(int(m[1]), m[2], m[3])
            continue
        if (m := _MEM_SIZE.match(line)) and current is not None:
            key = "protected_kib" if m[1] == "Protected" else "unprotected_kib"
            current = ConfComputeMemory(**{**current.__dict__, key: int(m[2])})
            continue
        label, sep, value = line.partition(":")
        name = _CONF_COMPUTE_LABELS.get(label.strip().lower()) if sep else None
        if name:
            value = value.strip()
            fields[name] = int(value) if name == "key_rotation_attacker_advantage" and value.isdigit() else value
    if current:
        memory.append(current)
    return ConfComputeStatus(**fields, memory=tuple(memory))  # type: ignore[arg-type]


# ------------------------------------------------------------------ nvidia-smi -L

_LIST_LINE = re.compile(r"^GPU (\d+): (.+) \(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")


@dataclass(frozen=True)
class ListedGpu:
    index: int
    name: str
    uuid: str


def parse_nvidia_smi_list(text: str) -> tuple[ListedGpu, ...]:
    """``nvidia-smi -L``: ``GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)``; other lines ignored."""
    return tuple(
        ListedGpu(int(m[1]), m[2], m[3]) for m in (_LIST_LINE.match(line.strip()) for line in text.splitlines()) if m
    )


# ------------------------------------------------------------------ nvidia-smi -q

# "<indent><key padded with spaces> : <value>"; a line without " : " opens a section.
_KV = re.compile(r"^(?P<indent> *)(?P<key>\S.*?)\s+: ?(?P<value>.*)$")
_GPU_SECTION = re.compile(r"^GPU ([0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])$")


@dataclass(frozen=True)
class NvsmiGpu:
    """One ``GPU <bus id>`` block of ``nvidia-smi -q``, as ``section/key`` -> value pairs."""

    bus_id: str  # as printed: 00000000:00:06.0
    fields: tuple[tuple[str, str], ...]

    def get(self, path: str, default: str | None = None) -> str | None:
        """Value at ``path``, e.g. ``"PCI/Device Id"`` or ``"Product Name"``."""
        for key, value in self.fields:
            if key == path:
                return value
        return default

    @property
    def bdf(self) -> str:
        return normalize_bdf(self.bus_id)

    @property
    def product_name(self) -> str | None:
        return self.get("Product Name")

    @property
    def architecture(self) -> str | None:
        return self.get("Product Architecture")

    @property
    def uuid(self) -> str | None:
        return self.get("GPU UUID")

    @property
    def serial(self) -> str | None:
        return self.get("Serial Number")

    @property
    def vbios_version(self) -> str | None:
        return self.get("VBIOS Version")

    @property
    def device_id(self) -> str | None:
        """PCI device ID, 4 hex digits: ``Device Id : 0x233010DE`` -> ``2330``."""
        raw = self.get("PCI/Device Id")
        return raw.lower().removeprefix("0x")[:4] if raw and raw.lower().startswith("0x") else None

    @property
    def vendor_id(self) -> str | None:
        raw = self.get("PCI/Device Id")
        return raw.lower().removeprefix("0x")[4:8] if raw and raw.lower().startswith("0x") else None

    @property
    def virtualization_mode(self) -> str | None:
        return self.get("GPU Virtualization Mode/Virtualization Mode")

    @property
    def cc_protected_memory_total(self) -> str | None:
        """``Conf Compute Protected Memory Usage/Total`` as printed, e.g. ``0 MiB``."""
        return self.get("Conf Compute Protected Memory Usage/Total")


@dataclass(frozen=True)
class NvsmiLog:
    """``nvidia-smi -q`` (text): driver-wide values and one ``NvsmiGpu`` per GPU.

    Example::

        log = parse_nvidia_smi_q(text)
        log.driver_version, log.gpus[0].vbios_version     # ('580.159.04', '96.00.DA.00.0C')
    """

    driver_version: str | None
    cuda_version: str | None
    attached_gpus: int | None
    gpus: tuple[NvsmiGpu, ...]


def parse_nvidia_smi_q(text: str) -> NvsmiLog:
    top: dict[str, str] = {}
    gpus: list[NvsmiGpu] = []
    bus_id: str | None = None
    fields: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, section name) inside the current GPU

    def flush() -> None:
        if bus_id is not None:
            gpus.append(NvsmiGpu(bus_id, tuple(fields)))

    for raw in text.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        m = _KV.match(raw)
        if indent == 0:
            g = _GPU_SECTION.match(raw.strip())
            if g:
                flush()
                bus_id, fields, stack = g[1], [], []
                continue
            if m and bus_id is None:
                top[m["key"].strip()] = m["value"].strip()
            continue
        if bus_id is None:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m:
            path = "/".join([name for _, name in stack] + [m["key"].strip()])
            fields.append((path, m["value"].strip()))
        else:
            stack.append((indent, raw.strip()))
    flush()
    attached = top.get("Attached GPUs", "")
    return NvsmiLog(
        driver_version=top.get("Driver Version"),
        cuda_version=top.get("CUDA Version"),
        attached_gpus=int(attached) if attached.isdigit() else None,
        gpus=tuple(gpus),
    )


# ------------------------------------------------------------------ nvidia-smi --query-gpu (CSV)


@dataclass(frozen=True)
class QueriedGpu:
    """One row of ``nvidia-smi --query-gpu=<fields> --format=csv``, keyed by the header names."""

    fields: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        return dict(self.fields).get(name)

    @property
    def bdf(self) -> str | None:
        bus = self.get("pci.bus_id")
        return normalize_bdf(bus) if bus else None

    @property
    def device_id(self) -> str | None:
        raw = self.get("pci.device_id")  # 0x233010DE: device in the high half, vendor in the low
        return raw.lower().removeprefix("0x")[:4] if raw else None


def parse_query_gpu_csv(text: str) -> tuple[QueriedGpu, ...]:
    """CSV with a header row (``--format=csv``). Lines not in the table (prompts) are skipped."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("$ ", "["))]
    if not lines:
        return ()
    rows = list(csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True))
    header = [h.strip() for h in rows[0]]
    return tuple(
        QueriedGpu(tuple(zip(header, (c.strip() for c in row), strict=True)))
        for row in rows[1:]
        if len(row) == len(header)
    )


# ------------------------------------------------------------------ /proc/driver/nvidia/gpus/<bdf>/information


@dataclass(frozen=True)
class ProcGpuInformation:
    """``/proc/driver/nvidia/gpus/<bdf>/information``: ``Key: <tabs> value`` lines."""

    fields: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        return dict(self.fields).get(key)

    @property
    def model(self) -> str | None:
        return self.get("Model")

    @property
    def uuid(self) -> str | None:
        return self.get("GPU UUID")

    @property
    def video_bios(self) -> str | None:
        return self.get("Video BIOS")

    @property
    def bdf(self) -> str | None:
        loc = self.get("Bus Location")
        return normalize_bdf(loc) if loc else None

    @property
    def firmware(self) -> str | None:
        return self.get("GPU Firmware")

    @property
    def excluded(self) -> bool | None:
        value = self.get("GPU Excluded")
        return None if value is None else value.lower() == "yes"


def parse_proc_gpu_information(lines: Iterable[str]) -> ProcGpuInformation:
    fields = []
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields.append((key.strip(), value.strip()))
    return ProcGpuInformation(tuple(fields))
