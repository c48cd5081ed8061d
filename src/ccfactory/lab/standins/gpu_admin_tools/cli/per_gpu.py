"""GPU-only actions: the nvidia-driver check and the CC mode (as in the real tool's cli/per_gpu.py).

Messages and their order are the real tool's; a reset that does not apply the new mode
raises ``GpuError``, which ends the run (later devices are not touched), exit status 1.
"""

from logging import error, info, warning

from gpu.error import GpuError


def main_per_gpu(gpu, opts):
    if gpu.is_driver_loaded():
        if not opts.ignore_nvidia_driver:
            error("The nvidia driver appears to be using %s, aborting. Specify --ignore-nvidia-driver to ignore this check.", gpu)
            return False
        else:
            warning("The nvidia driver appears to be using %s, but --ignore-nvidia-driver was specified, continuing.", gpu)

    if opts.set_cc_mode:
        if not gpu.is_gpu() or not gpu.is_cc_query_supported:
            error(f"Configuring CC not supported on {gpu}")
            return False
        if opts.set_cc_mode != "off" and not gpu.is_cc_enable_supported:
            error(f"Enabling CC not supported on {gpu}. Only disabling CC is allowed.")
            return False

        gpu.set_cc_mode(opts.set_cc_mode)
        info(f"{gpu} CC mode set to {opts.set_cc_mode}. It will be active after GPU reset.")
        if opts.reset_after_cc_mode_switch:
            gpu.reset_with_os()
            new_mode = gpu.query_cc_mode()
            if new_mode != opts.set_cc_mode:
                raise GpuError(f"{gpu} failed to switch to CC mode {opts.set_cc_mode}, current mode is {new_mode}.")
            info(f"{gpu} was reset to apply the new CC mode.")

    if opts.query_cc_mode:
        if not gpu.is_gpu() or not gpu.is_cc_query_supported:
            error(f"Querying CC mode is not supported on {gpu}")
            return False

        cc_mode = gpu.query_cc_mode()
        info(f"{gpu} CC mode is {cc_mode}")

    return True
