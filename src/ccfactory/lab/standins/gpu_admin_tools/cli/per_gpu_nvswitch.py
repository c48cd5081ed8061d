"""Actions on GPUs and NVSwitches (ccfactory lab stand-in of the real tool's
``cli/per_gpu_nvswitch.py``): start-up mode warnings and PPCIe, real messages and order
(gpu-admin-tools v2025.10.20 ``cli/per_gpu_nvswitch.py:34-136``).

Lab devices are never broken, in recovery or still booting (``is_broken_gpu``,
``is_in_recovery``, ``is_boot_done`` read registers the lab does not have).
"""

from logging import error, info, warning

from gpu.error import GpuError
from utils import labstate


def main_per_gpu_or_nvswitch(device, opts):
    # per_gpu_nvswitch.py:61-75
    if device.is_gpu() and device.is_cc_query_supported:
        cc_mode = device.query_cc_mode()
        if cc_mode != "off":
            warning(f"{device} has CC mode {cc_mode}, some functionality may not work")
    if device.is_ppcie_query_supported:
        ppcie_mode = device.query_ppcie_mode()
        if ppcie_mode != "off":
            warning(f"{device} has PPCIe mode {ppcie_mode}, some functionality may not work")

    # per_gpu_nvswitch.py:102-128
    if opts.set_ppcie_mode:
        if not device.is_ppcie_query_supported:
            error(f"Configuring PPCIe not supported on {device}")
            return False

        # the real tool: FspRpcError with is_invalid_knob_error from set_ppcie_mode (older FW)
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

    # per_gpu_nvswitch.py:130-136
    if opts.query_ppcie_mode:
        if not device.is_ppcie_query_supported:
            error(f"Querying PPCIe mode is not supported on {device}")
            return False

        ppcie_mode = device.query_ppcie_mode()
        info(f"{device} PPCIe mode is {ppcie_mode}")

    return True
