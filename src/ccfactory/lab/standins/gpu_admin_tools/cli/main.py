"""Command line and main flow of the stand-in, shaped like the real tool's ``cli/main.py``
(gpu-admin-tools v2025.10.20, commit 82422cc1811c).

Output: the banner (``NVIDIA GPU Tools version ...``, ``Command line arguments: [...]``,
main.py:251-253) and ``Topo:`` go to stdout; everything else is logged through
``logging`` to stderr with the real format (main.py:260-262). Exit status: 0; 1 when an
action fails (``sys.exit(1)``, main.py:356-364) or a ``GpuError`` escapes (traceback);
2 for command-line errors (argparse). Devices are handled one at a time, each fully
(reset, then CC, then PPCIe) before the next (main.py:356-364).

Only the flags ccfactory needs are simulated; any other flag is refused by argparse.
The lab's PCI tree is flat, so ``Topo:`` lists the selected devices without bridges.
"""

import argparse
import logging
import sys
from logging import error, info

from cli.per_device import main_per_device
from cli.per_gpu import main_per_gpu
from cli.per_gpu_nvswitch import main_per_gpu_or_nvswitch
from pci import devices as pci_devices
from utils.labstate import LabStateError

# Marked so a log never passes for the real tool's. The pinned release prints "v2025.10.20o"
# (main.py:42); the release name here is kept until the lab's artifact tests follow the pin.
VERSION = "v2025.10.20o-ccfactory-lab.1"  # gpu-admin-tools@v2025.10.20:cli/main.py:42 + the stand-in mark


def auto_int(x):
    return int(x, 0)


def create_args():
    argp = argparse.ArgumentParser(prog="nvidia_gpu_tools.py")
    argp.add_argument(
        "--devices",
        help="Generic device selector supporting multiple comma-separated specifiers: 'gpus', 'gpus[n]', "
        "'gpus[n:m]', 'nvswitches', 'nvswitches[n]', 'vendor:device', 'domain:bus:device.function'",
    )
    argp.add_argument("--gpu", type=auto_int, default=-1)
    argp.add_argument("--gpu-bdf", help="Select a single GPU by providing a substring of the BDF, e.g. '01:00'.")
    argp.add_argument("--gpu-name", help="Select a single GPU by providing a substring of the GPU name, e.g. 'T4'.")
    argp.add_argument("--no-gpu", action="store_true", help="Do not use any of the GPUs.")
    argp.add_argument("--log", choices=["debug", "info", "warning", "error", "critical"], default="info")
    argp.add_argument("--mmio-access-type", choices=["devmem", "sysfs"], default="sysfs", help="Accepted; the lab has no MMIO.")
    argp.add_argument("--reset-with-os", action="store_true", default=False, help="Reset with OS through /sys/.../reset")
    argp.add_argument("--sysfs-bind", help="Bind devices to the specified driver")
    argp.add_argument("--sysfs-unbind", action="store_true", help="Unbind devices from the current driver")
    argp.add_argument("--query-cc-mode", action="store_true", default=False, help="Query the current CC mode of the GPU.")
    argp.add_argument("--query-ppcie-mode", action="store_true", default=False, help="Query the current PPCIe mode.")
    argp.add_argument("--set-cc-mode", choices=["off", "on", "devtools"], help="Configure Confidential Computing (CC) mode.")
    argp.add_argument("--reset-after-cc-mode-switch", action="store_true", default=False,
                      help="Reset the GPU after switching CC mode such that it is activated immediately.")
    argp.add_argument("--set-ppcie-mode", choices=["off", "on"], help="Configure Protected PCIe (PPCIe) mode.")
    argp.add_argument("--reset-after-ppcie-mode-switch", action="store_true", default=False,
                      help="Reset the GPU or switch after switching PPCIe mode such that it is activated immediately.")
    argp.add_argument("--ignore-nvidia-driver", action="store_true", default=False,
                      help="Do not treat nvidia driver apearing to be loaded as an error")
    return argp


def print_topo(devices):
    # The lab's PCI tree is flat (no bridges above the devices): every device is a root.
    print("Topo:")
    for d in devices:
        print(" ", d)
    sys.stdout.flush()


def _select(opts):
    if opts.gpu_bdf is not None:
        gpus, _ = pci_devices.find_gpus(opts.gpu_bdf)  # GPUs and NVSwitches, as in main.py:280
        if len(gpus) == 0:
            error("Matching for {0} found nothing".format(opts.gpu_bdf))
            sys.exit(1)
        if len(gpus) > 1:
            error("Matching for {0} found more than one GPU {1}".format(opts.gpu_bdf, ", ".join(str(g) for g in gpus)))
            sys.exit(1)
        return gpus
    if opts.gpu_name is not None:
        gpus, _ = pci_devices.find_gpus()
        gpus = [g for g in gpus if opts.gpu_name in g.name]
        if len(gpus) == 0:
            error("Matching for {0} found nothing".format(opts.gpu_name))
            sys.exit(1)
        return gpus[:1]
    if opts.devices:
        devices = pci_devices.find_devices_from_string(opts.devices)
        if len(devices) == 0:
            error(f"No devices found matching: {opts.devices}")
            sys.exit(1)
        return devices
    if opts.no_gpu:
        info("Using no GPU")
        return []
    gpus, other = pci_devices.find_gpus()
    print("GPUs:")
    for i, g in enumerate(gpus):
        print(" ", i, g)
    print("Other:")
    for i, o in enumerate(other):
        print(" ", i, o)
    sys.stdout.flush()
    if opts.gpu == -1:
        info("No GPU specified, select GPU with --gpu, --gpu-bdf, or --gpu-name")
        sys.exit(0)
    if opts.gpu >= len(gpus):
        raise ValueError("GPU index out of bounds")
    return [gpus[opts.gpu]]


def main():
    print(f"NVIDIA GPU Tools version {VERSION}")
    print(f"Command line arguments: {sys.argv}")
    sys.stdout.flush()

    opts = create_args().parse_args()
    logging.basicConfig(
        level=getattr(logging, opts.log.upper()),
        format="%(asctime)s.%(msecs)03d %(levelname)-8s %(message)s",
        datefmt="%Y-%m-%d,%H:%M:%S",
    )

    try:
        devices = _select(opts)
        if devices:
            print_topo(devices)
            for d in devices:
                info(f"Selected {d}")

        for d in devices:
            if not main_per_device(d, opts):
                sys.exit(1)
            if d.is_gpu():
                if not main_per_gpu(d, opts):
                    sys.exit(1)
            if d.is_gpu() or d.is_nvswitch():
                if not main_per_gpu_or_nvswitch(d, opts):
                    sys.exit(1)
    except LabStateError as exc:
        error("%s", exc)
        sys.exit(1)
