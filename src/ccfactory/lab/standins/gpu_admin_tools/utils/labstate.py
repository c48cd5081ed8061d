"""The lab node's simulated GPU state (stand-in only; the real tool talks to the GPU's firmware).

``gpus.json`` in the node's lab state directory (``/var/lib/ccfactory-lab/state``, bound
read-write from ``<lab_dir>/nodes/<node>/state``) holds, per PCI address, the device's
current and pending CC and PPCIe modes. Format version 1, written by ccfactory's lab
(``ccfactory.lab.gpustate``) and by this stand-in alike::

    {"version": 1, "devices": {"0000:18:00.0": {"kind": "gpu", "model": "H100",
      "device_id": "2330", "cc_mode": "off", "ppcie_mode": "off",
      "pending_cc_mode": null, "pending_ppcie_mode": null}}}

Writers hold ``flock`` on ``gpus.lock`` and replace the file atomically.

``faults.json`` beside it (optional, written by tests or an operator) injects faults::

    {"stuck_after_reset": ["0000:18:00.0"],        # a reset leaves the device in its old modes
     "ppcie_fw_update_required": ["0000:c5:00.0"]}  # --set-ppcie-mode fails: FW update required

(No fault makes the tool see a GPU driver: the real tool assumes none on Hopper and later,
``nvidia_gpu_tools.py:4361-4364``; ccfactory checks the sysfs driver link itself.)

Environment (tests only): ``CCFACTORY_LAB_STATE_DIR`` replaces the state directory and
``CCFACTORY_LAB_SYSFS_ROOT`` is prefixed to ``/sys`` paths.
"""

import contextlib
import fcntl
import json
import os

VERSION = 1
CC_MODES = ("off", "on", "devtools")
PPCIE_MODES = ("off", "on")
FIELDS = ("kind", "model", "device_id", "cc_mode", "ppcie_mode", "pending_cc_mode", "pending_ppcie_mode")

STATE_DIR = os.environ.get("CCFACTORY_LAB_STATE_DIR") or "/var/lib/ccfactory-lab/state"
SYSFS_ROOT = os.environ.get("CCFACTORY_LAB_SYSFS_ROOT", "").rstrip("/")
PCI_DEVICES = SYSFS_ROOT + "/sys/bus/pci/devices"
PCI_DRIVERS = SYSFS_ROOT + "/sys/bus/pci/drivers"


class LabStateError(Exception):
    """The node has no (valid) lab GPU state: this is not a ccfactory lab node."""


def state_file():
    return os.path.join(STATE_DIR, "gpus.json")


@contextlib.contextmanager
def _locked():
    if not os.path.isdir(STATE_DIR):
        raise LabStateError(
            "ccfactory lab stand-in of nvidia_gpu_tools.py: no lab GPU state directory %s; "
            "this tool only runs on ccfactory lab nodes" % STATE_DIR
        )
    with open(os.path.join(STATE_DIR, "gpus.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load():
    path = state_file()
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise LabStateError("ccfactory lab stand-in: %s does not exist (not a lab node?)" % path) from None
    except ValueError as exc:
        raise LabStateError("ccfactory lab stand-in: %s is not valid JSON: %s" % (path, exc)) from None
    if raw.get("version") != VERSION:
        raise LabStateError("ccfactory lab stand-in: %s has version %r, expected %d" % (path, raw.get("version"), VERSION))
    return {bdf: {k: d.get(k) for k in FIELDS} for bdf, d in raw.get("devices", {}).items()}


def _save(devices):
    path = state_file()
    tmp = os.path.join(STATE_DIR, ".gpus.json.%d" % os.getpid())
    body = {"version": VERSION, "devices": {b: devices[b] for b in sorted(devices)}}
    with open(tmp, "w") as f:
        f.write(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)


def _entry(devices, bdf, defaults):
    entry = devices.get(bdf)
    if entry is None:
        entry = {"cc_mode": "off", "ppcie_mode": "off", "pending_cc_mode": None, "pending_ppcie_mode": None}
        entry.update(defaults)
        entry = {k: entry.get(k) for k in FIELDS}
    return entry


def read_device(bdf, defaults):
    """The device's state (factory defaults when gpus.json does not list it yet)."""
    with _locked():
        return dict(_entry(_load(), bdf, defaults))


def update_device(bdf, defaults, change):
    """Apply ``change(entry) -> None`` (mutates) to the device's entry under the lock; returns it."""
    with _locked():
        devices = _load()
        entry = dict(_entry(devices, bdf, defaults))
        change(entry)
        devices[bdf] = entry
        _save(devices)
        return entry


def faults():
    """The injected faults (``{}`` without ``faults.json``)."""
    try:
        with open(os.path.join(STATE_DIR, "faults.json")) as f:
            raw = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise LabStateError("ccfactory lab stand-in: faults.json is not valid JSON: %s" % exc) from None
    return raw if isinstance(raw, dict) else {}


def has_fault(name, bdf):
    return bdf in (faults().get(name) or ())
