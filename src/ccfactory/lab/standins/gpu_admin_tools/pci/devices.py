"""NVIDIA PCI devices of the lab node: found in sysfs, modes kept in the lab GPU state.

Selection (``--devices``) follows the real tool: ``gpus``, ``gpus[n]``, ``gpus[n:m]``,
``nvswitches``, ``nvswitches[n]``, ``vendor:device`` (4 hex digits each) and a PCI
address (a substring of the sysfs directory name, e.g. ``45:00.0``), comma-separated;
matches are sorted by address before indexing. GPUs are vendor 0x10de with class
0x030000/0x030200, NVSwitches class 0x068000.
"""

import os
from logging import debug, error, info, warning

from gpu.devid_names import gpu_identity, nvswitch_identity
from utils import labstate

GPU_CLASSES = (0x030000, 0x030200)
NVSWITCH_CLASS = 0x068000
NVIDIA = 0x10DE


def _read_number(path):
    with open(path) as f:
        return int(f.readline().strip(), 0)


def _bar0(dev_path):
    """First memory resource of the device (sysfs ``resource``), as the real tool finds BAR0."""
    try:
        with open(os.path.join(dev_path, "resource")) as f:
            lines = f.readlines()
    except OSError:
        return 0
    for line in lines[:6]:
        parts = line.split()
        if len(parts) >= 3 and int(parts[2], 16) & 0x1 == 0 and int(parts[0], 16) != 0:
            return int(parts[0], 16)
    return 0


class NvidiaDevice(object):
    kind = "nvidia"

    def __init__(self, dev_path):
        self.dev_path = dev_path
        self.bdf = os.path.basename(dev_path)
        self.vendor = _read_number(os.path.join(dev_path, "vendor"))
        self.device = _read_number(os.path.join(dev_path, "device"))
        self.bar0_addr = _bar0(dev_path)
        self.name = "?"
        self.arch = "unknown"

    # --- what the device supports (the real tool's support matrix)
    is_cc_query_supported = False
    is_ppcie_query_supported = False

    def is_gpu(self):
        return False

    def is_nvswitch(self):
        return False

    # --- sysfs
    def sysfs_get_driver(self):
        link = os.path.join(self.dev_path, "driver")
        if not os.path.islink(link):
            return None
        return os.path.basename(os.readlink(link))

    def is_driver_loaded(self):
        return False

    def sysfs_unbind(self):
        driver = self.sysfs_get_driver()
        unbind_path = os.path.join(self.dev_path, "driver", "unbind")
        if driver is None or not os.path.exists(unbind_path):
            debug("%s unbind not present: '%s', already unbound?", self, unbind_path)
            return
        with open(unbind_path, "w") as f:
            f.write(self.bdf)
        # what the kernel does on unbind
        os.unlink(os.path.join(self.dev_path, "driver"))
        member = os.path.join(labstate.PCI_DRIVERS, driver, self.bdf)
        if os.path.islink(member):
            os.unlink(member)
        debug("%s unbind done", self)

    def sysfs_bind(self, driver):
        driver_dir = os.path.join(labstate.PCI_DRIVERS, driver)
        bind_path = os.path.join(driver_dir, "bind")
        if not os.path.exists(bind_path):
            debug("%s bind not present: '%s'", self, bind_path)
            return
        with open(bind_path, "w") as f:
            f.write(self.bdf)
        # what the kernel does on bind
        real_dev = os.path.realpath(self.dev_path)
        link = os.path.join(self.dev_path, "driver")
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(os.path.relpath(os.path.realpath(driver_dir), real_dev), link)
        member = os.path.join(driver_dir, self.bdf)
        if not os.path.lexists(member):
            os.symlink(os.path.relpath(real_dev, os.path.realpath(driver_dir)), member)
        debug("%s bind to %s done", self, driver)

    # --- modes, kept in the lab GPU state
    def _defaults(self):
        return {"kind": self.kind, "model": self.model, "device_id": "%04x" % self.device}

    @property
    def model(self):
        return ""

    def _state(self):
        return labstate.read_device(self.bdf, self._defaults())

    def query_cc_mode(self):
        return self._state()["cc_mode"]

    def query_ppcie_mode(self):
        return self._state()["ppcie_mode"]

    def _knob(self, entry, feature):
        """The mode the device's configuration knobs hold: what its next reset applies."""
        return entry.get("pending_%s_mode" % feature) or entry["%s_mode" % feature]

    def set_cc_mode(self, mode):
        """nvidia_gpu_tools.py:3776-3828: on Hopper (PPCIe supported) the PPCIe knob is read
        first, and CC on/devtools also writes the PPCIe knob off."""
        ppcie_supported = self.is_ppcie_query_supported
        if ppcie_supported and self._knob(self._state(), "ppcie") == "on":
            info(f"{self} has PPCIe enabled. It will be turned off before switching to CC.")

        def change(entry):
            entry["pending_cc_mode"] = mode
            if mode != "off" and ppcie_supported:
                entry["pending_ppcie_mode"] = "off"

        labstate.update_device(self.bdf, self._defaults(), change)

    def set_ppcie_mode(self, mode):
        """nvidia_gpu_tools.py:1825-1854: the CC knob is read first; PPCIe on also writes the
        CC knobs off (GPUs: the lab keeps no CC state for NVSwitches)."""
        if self.is_gpu() and self._knob(self._state(), "cc") != "off":
            info("CC is currently active. It will be turned off before switching to PPCIe.")

        def change(entry):
            entry["pending_ppcie_mode"] = mode
            if mode == "on" and self.is_gpu():
                entry["pending_cc_mode"] = "off"

        labstate.update_device(self.bdf, self._defaults(), change)

    def reset_with_os(self):
        """A device reset (the real tool writes 1 to sysfs ``reset``, pci/device.py:477-490, and
        logs only at debug level): pending modes become current; a device with the
        ``stuck_after_reset`` fault keeps its old modes."""
        stuck = labstate.has_fault("stuck_after_reset", self.bdf)

        def reset(entry):
            if not stuck:
                entry["cc_mode"] = entry.get("pending_cc_mode") or entry["cc_mode"]
                entry["ppcie_mode"] = entry.get("pending_ppcie_mode") or entry["ppcie_mode"]
            entry["pending_cc_mode"] = None
            entry["pending_ppcie_mode"] = None

        labstate.update_device(self.bdf, self._defaults(), reset)
        debug("%s reset via sysfs", self)

    def __str__(self):
        return "PCI %s %s:%s" % (self.bdf, hex(self.vendor), hex(self.device))


class Gpu(NvidiaDevice):
    kind = "gpu"

    def __init__(self, dev_path):
        super(Gpu, self).__init__(dev_path)
        try:
            self.name, self.arch = gpu_identity(self.device)
        except KeyError:
            raise labstate.LabStateError(
                "ccfactory lab stand-in: GPU %s has device id 0x%04x, outside gpu-admin-tools' device-id "
                "tables; the real tool would read its BOOT_0 register, which the lab does not simulate"
                % (self.bdf, self.device)
            ) from None
        self.is_hopper = self.arch == "hopper"
        self.is_hopper_plus = self.arch in ("hopper", "blackwell")
        # nvidia_gpu_tools.py:3395-3396
        self.is_cc_query_supported = self.is_hopper_plus
        self.is_ppcie_query_supported = self.is_hopper

    @property
    def model(self):
        return self.name

    def is_gpu(self):
        return True

    def is_driver_loaded(self):
        # nvidia_gpu_tools.py:4361-4364: "if self.is_hopper_plus: # TODO, for now assume no driver."
        # Every GPU the stand-in knows is Hopper or later.
        return False

    def __str__(self):
        return "GPU %s %s %s BAR0 0x%x" % (self.bdf, self.name, hex(self.device), self.bar0_addr)


class NvSwitch(NvidiaDevice):
    kind = "nvswitch"

    def __init__(self, dev_path):
        super(NvSwitch, self).__init__(dev_path)
        try:
            self.name, self.arch = nvswitch_identity(self.device)
        except KeyError:
            raise labstate.LabStateError(
                "ccfactory lab stand-in: NVSwitch %s has device id 0x%04x, not in the stand-in's NVSwitch "
                "table; the real tool would read its BOOT_0 register, which the lab does not simulate"
                % (self.bdf, self.device)
            ) from None
        # nvidia_gpu_tools.py:3087-3088
        self.is_ppcie_query_supported = self.arch == "laguna"
        self.is_cc_query_supported = False

    def is_nvswitch(self):
        return True

    def __str__(self):
        return "NvSwitch %s %s %s BAR0 0x%x" % (self.bdf, self.name, hex(self.device), self.bar0_addr)


def _list_dev_paths():
    try:
        names = os.listdir(labstate.PCI_DEVICES)
    except OSError:
        return []
    return [os.path.join(labstate.PCI_DEVICES, n) for n in names]


def _matches(dev_path, vendor_ids, device_ids, class_ids):
    try:
        if vendor_ids is not None and _read_number(os.path.join(dev_path, "vendor")) not in vendor_ids:
            return False
        if device_ids is not None and _read_number(os.path.join(dev_path, "device")) not in device_ids:
            return False
        if class_ids is not None and _read_number(os.path.join(dev_path, "class")) not in class_ids:
            return False
    except (OSError, ValueError):
        return False
    return True


def find_dev_paths(vendor_ids, device_ids, class_ids):
    return [p for p in _list_dev_paths() if _matches(p, vendor_ids, device_ids, class_ids)]


def find_dev_path_by_bdf(pattern):
    for path in _list_dev_paths():
        if pattern in os.path.basename(path):
            return path
    return None


def sorted_dev_paths(paths):
    return sorted(paths, key=lambda p: int(os.path.basename(p).replace(":", "").replace(".", ""), 16))


def _index(index_str, items):
    if ":" in index_str:
        bounds = [int(x) if x else None for x in index_str.split(":")]
        bounds += [None] * (3 - len(bounds))
        return items[slice(*bounds[:3])]
    idx = int(index_str)
    if idx < len(items):
        return [items[idx]]
    error("Index %d out of range for array of length %d", idx, len(items))
    return []


_DEVICES = {}


def device_for(dev_path):
    """One object per device (as the real tool caches them)."""
    bdf = os.path.basename(dev_path)
    if bdf not in _DEVICES:
        cls = NvidiaDevice
        if _matches(dev_path, [NVIDIA], None, GPU_CLASSES):
            cls = Gpu
        elif _matches(dev_path, [NVIDIA], None, [NVSWITCH_CLASS]):
            cls = NvSwitch
        _DEVICES[bdf] = cls(dev_path)
    return _DEVICES[bdf]


def find_devices_from_string(devices_str):
    devices = []
    for spec in devices_str.split(","):
        spec = spec.strip()
        base = spec.split("[")[0]
        idx = spec[spec.index("[") + 1 : spec.index("]")] if "[" in spec else None
        if base == "gpus":
            paths = find_dev_paths([NVIDIA], None, list(GPU_CLASSES))
            if not paths:
                warning("No GPU devices found")
                continue
        elif base == "nvswitches":
            paths = find_dev_paths([NVIDIA], None, [NVSWITCH_CLASS])
            if not paths:
                warning("No NVSwitch devices found")
                continue
        elif ":" in base and len(base.split(":")) == 2 and all(len(x) == 4 for x in base.split(":")):
            vendor, device = (int(x, 16) for x in base.split(":"))
            paths = find_dev_paths([vendor], [device], None)
            if not paths:
                warning("No devices found matching vendor:device %x:%x" % (vendor, device))
                continue
        elif ":" in base:
            path = find_dev_path_by_bdf(base)
            if not path:
                warning("No device found at BDF %s" % base)
                continue
            paths = [path]
        else:
            raise ValueError("Unknown device specifier: %s" % spec)
        paths = sorted_dev_paths(paths)
        if idx is not None:
            paths = _index(idx, paths)
        devices.extend(device_for(p) for p in paths)
    return devices


def find_gpus(bdf_pattern=None):
    """(GPUs and NVSwitches, others) sorted by address, as the real tool lists them."""
    gpus = []
    for path in sorted_dev_paths(find_dev_paths([NVIDIA], None, list(GPU_CLASSES) + [NVSWITCH_CLASS])):
        if bdf_pattern and bdf_pattern not in os.path.basename(path):
            continue
        gpus.append(device_for(path))
    return gpus, []
