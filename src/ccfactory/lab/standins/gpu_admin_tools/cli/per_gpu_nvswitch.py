"""Actions on GPUs and NVSwitches: start-up mode warnings and PPCIe (the real tool's
cli/per_gpu_nvswitch.py messages and order)."""

from logging import error, info, warning

from gpu.error import GpuError
from utils import labstate


def main_per_gpu_or_nvswitch(device, opts):
    if device.is_gpu() and device.is_cc_query_supported:
        cc_mode = device.query_cc_mode()
        if cc_mode != "off":
            warning(f"{device} has CC mode {cc_mode}, some functionality may not work")
    if device.is_ppcie_query_supported:
        ppcie_mode = device.query_ppcie_mode()
        if ppcie_mode != "off":
            warning(f"{device} has PPCIe mode {ppcie_mode}, some functionality may not work")

    if opts.set_ppcie_mode:
        if not device.is_ppcie_query_supported:
            error(f"Configuring PPCIe not supported on {device}")
            return False
        if labstate.has_fault("ppcie_fw_update_required", device.bdf):
            error(f"{device} does not support PPCIe on current FW. A FW update is required.")
            return False

        device.set_ppcie_mode(opts.set_ppcie_mode)
        info(f"{device} PPCIe mode set to {opts.set_ppcie_mode}. It will be active after GPU or switch reset.")
        if opts.reset_after_ppcie_mode_switch:
            device.reset_with_os()
            new_mode = device.query_ppcie_mode()
            if new_mode != opts.set_ppcie_mode:
                raise GpuError(f"{device} failed to switch to PPCIe mode {opts.set_ppcie_mode}, current mode is {new_mode}.")
            info(f"{device} was reset to apply the new PPCIe mode.")

    if opts.query_ppcie_mode:
        if not device.is_ppcie_query_supported:
            error(f"Querying PPCIe mode is not supported on {device}")
            return False

        ppcie_mode = device.query_ppcie_mode()
        info(f"{device} PPCIe mode is {ppcie_mode}")

    return True
