"""Per-GPU confidential-computing state of a lab node, persisted in ``gpus.json``.

File: ``<lab_dir>/nodes/<node>/state/gpus.json``. The ``state`` directory is bound
read-write into the node at ``/var/lib/ccfactory-lab/state``, so the GPU admin-tool
stand-in inside the node reads and writes the same file. Format (version 1)::

    {
      "version": 1,
      "devices": {
        "0000:18:00.0": {
          "kind": "gpu",                 # "gpu" or "nvswitch"
          "model": "H100",               # "" for NVSwitches
          "device_id": "2330",           # PCI device ID, 4 hex digits
          "cc_mode": "off",              # current: "off" | "on" | "devtools"
          "ppcie_mode": "off",           # current: "off" | "on"
          "pending_cc_mode": null,       # set by --set-cc-mode; null = nothing pending
          "pending_ppcie_mode": null     # set by --set-ppcie-mode
        }
      }
    }

Rules: a pending mode becomes current when the device is reset: by the tool's
``--reset-after-*-mode-switch`` (the stand-in applies it itself) or by a power cycle
or reboot of the node (``apply_pending`` runs before every boot). Devices come from
the node's hardware profile; factory default is CC off, PPCIe off. Writers replace
the file atomically (write a temp file, ``rename``) under ``flock`` on ``gpus.lock``.

Example::

    >>> st = GpuState.from_dict({"version": 1, "devices": {"0000:18:00.0": {"kind": "gpu", "model": "H100",
    ...     "device_id": "2330", "cc_mode": "off", "ppcie_mode": "off", "pending_cc_mode": "on"}}})
    >>> st.apply_pending().devices["0000:18:00.0"].cc_mode
    'on'
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ccfactory.lab.errors import LabError
from ccfactory.lab.hwprofile import Profile

VERSION = 1
CC_MODES = ("off", "on", "devtools")
PPCIE_MODES = ("off", "on")
NODE_STATE_DIR = "/var/lib/ccfactory-lab/state"  # where the state dir appears inside the node


@dataclass(frozen=True)
class GpuDeviceState:
    kind: str
    model: str
    device_id: str
    cc_mode: str = "off"
    ppcie_mode: str = "off"
    pending_cc_mode: str | None = None
    pending_ppcie_mode: str | None = None

    def validate(self, bdf: str) -> None:
        if self.kind not in ("gpu", "nvswitch"):
            raise LabError(f"gpus.json {bdf}: kind must be gpu or nvswitch")
        for key, allowed in (("cc_mode", CC_MODES), ("ppcie_mode", PPCIE_MODES)):
            for k in (key, f"pending_{key}"):
                v = getattr(self, k)
                if not (v in allowed or (v is None and k.startswith("pending_"))):
                    raise LabError(f"gpus.json {bdf}: {k} must be one of {', '.join(allowed)}, not {v!r}")


@dataclass(frozen=True)
class GpuState:
    devices: dict[str, GpuDeviceState] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> GpuState:
        if raw.get("version") != VERSION:
            raise LabError(f"gpus.json: unsupported version {raw.get('version')!r} (expected {VERSION})")
        devices = {}
        for bdf, d in raw.get("devices", {}).items():
            try:
                dev = GpuDeviceState(**d)
            except TypeError as exc:
                raise LabError(f"gpus.json {bdf}: {exc}") from None
            dev.validate(bdf)
            devices[bdf] = dev
        return cls(devices)

    def to_dict(self) -> dict:
        return {"version": VERSION, "devices": {b: asdict(d) for b, d in sorted(self.devices.items())}}

    def apply_pending(self) -> GpuState:
        """Pending modes become current (what a device reset does)."""
        out = {}
        for bdf, d in self.devices.items():
            out[bdf] = replace(
                d,
                cc_mode=d.pending_cc_mode or d.cc_mode,
                ppcie_mode=d.pending_ppcie_mode or d.ppcie_mode,
                pending_cc_mode=None,
                pending_ppcie_mode=None,
            )
        return GpuState(out)


def state_path(lab_dir: Path, node: str) -> Path:
    """``<lab_dir>/nodes/<node>/state/gpus.json``"""
    return Path(lab_dir) / "nodes" / node / "state" / "gpus.json"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("gpus.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, state: GpuState) -> None:
    tmp = path.with_name(f".gpus.json.{os.getpid()}")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def load_gpu_state(lab_dir: Path, node: str) -> GpuState:
    """The node's GPU state (empty if the file does not exist yet).

    Example: ``load_gpu_state(lab, "node1").devices["0000:18:00.0"].cc_mode``
    """
    path = state_path(lab_dir, node)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return GpuState()
    except ValueError as exc:
        raise LabError(f"{path}: not valid JSON: {exc}") from None
    return GpuState.from_dict(raw)


def ensure_gpu_state(lab_dir: Path, node: str, profile: Profile) -> GpuState:
    """Create/complete gpus.json from the profile (factory defaults); keeps known devices' modes."""
    path = state_path(lab_dir, node)
    with _locked(path):
        current = load_gpu_state(lab_dir, node)
        devices = {}
        for dev in profile.pci:
            if dev.role not in ("gpu", "nvswitch"):
                continue
            devices[dev.bdf] = current.devices.get(dev.bdf) or GpuDeviceState(
                kind=dev.role, model=dev.model, device_id=f"{dev.device:04x}"
            )
        new = GpuState(devices)
        if new != current or not path.exists():
            _write(path, new)
        return new


def apply_pending_on_reset(lab_dir: Path, node: str) -> GpuState:
    """Make pending modes current (called by the node supervisor before every boot)."""
    path = state_path(lab_dir, node)
    with _locked(path):
        current = load_gpu_state(lab_dir, node)
        new = current.apply_pending()
        if new != current:
            _write(path, new)
        return new
