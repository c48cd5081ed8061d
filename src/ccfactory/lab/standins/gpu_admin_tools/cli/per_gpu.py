"""GPU-only actions (ccfactory lab stand-in of the real tool's ``cli/per_gpu.py``).

Only the CC part of ``main_per_gpu`` (gpu-admin-tools v2025.10.20 ``cli/per_gpu.py:155-223``),
with the real messages in the real order. A reset that does not apply the new mode raises
``GpuError``, which ends the run (later devices are not touched), exit status 1.
"""

from logging import error, info, warning

from gpu.error import GpuError


def main_per_gpu(gpu, opts):
    # per_gpu.py:156-161; the tool assumes no driver on Hopper and later (nvidia_gpu_tools.py:4361-4364)
    if gpu.is_driver_loaded():
        if not opts.ignore_nvidia_driver:
            error("The nvidia driver appears to be using %s, aborting. Specify --ignore-nvidia-driver to ignore this check.", gpu)
            return False
        else:
            warning("The nvidia driver appears to be using %s, but --ignore-nvidia-driver was specified, continuing.", gpu)

    # per_gpu.py:192-215
    if opts.set_cc_mode:
        if not gpu.is_gpu() or not gpu.is_cc_query_supported:
            error(f"Configuring CC not supported on {gpu}")
            return False

        gpu.set_cc_mode(opts.set_cc_mode)

        info(f"{gpu} CC mode set to {opts.set_cc_mode}. It will be active after GPU reset.")
        if opts.reset_after_cc_mode_switch:
            gpu.reset_with_os()
            new_mode = gpu.query_cc_mode()
            if new_mode != opts.set_cc_mode:
                raise GpuError(f"{gpu} failed to switch to CC mode {opts.set_cc_mode}, current mode is {new_mode}.")
            info(f"{gpu} was reset to apply the new CC mode.")

    # per_gpu.py:217-223
    if opts.query_cc_mode:
        if not gpu.is_gpu() or not gpu.is_cc_query_supported:
            error(f"Querying CC mode is not supported on {gpu}")
            return False

        cc_mode = gpu.query_cc_mode()
        info(f"{gpu} CC mode is {cc_mode}")

    return True
