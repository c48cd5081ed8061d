#!/usr/bin/env python3
"""ccfactory LAB STAND-IN for NVIDIA gpu-admin-tools (``nvidia_gpu_tools.py``).

Not NVIDIA's tool: it keeps the real tool's file name, command line, log format, messages,
exit codes and per-device order (each traced to gpu-admin-tools v2025.10.20 in ccfactory's
docs/gpu.md; the device-id tables in ``gpu/devid_names.py`` are copied from the tool, MIT
licence), and acts on a ccfactory lab node's simulated hardware instead of a GPU: the PCI tree under ``/sys/bus/pci/devices`` and
the GPU state file ``/var/lib/ccfactory-lab/state/gpus.json`` (see ``utils/labstate.py``).
Outside a lab node it refuses to run. Standard library only, like the real tool.

Usage is the real tool's::

    python3 nvidia_gpu_tools.py --devices gpus --query-cc-mode
    python3 nvidia_gpu_tools.py --devices gpus --set-cc-mode=on --reset-after-cc-mode-switch
"""

import cli.main

if __name__ == "__main__":
    cli.main.main()
