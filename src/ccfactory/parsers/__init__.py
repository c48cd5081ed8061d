"""Pure parsers: command output text in, frozen dataclasses out.

Nothing here touches a host. Facts (``ccfactory.facts``) run one command per domain and
hand its output to these functions; tests feed them real recordings. Every format they
accept, and where it was confirmed, is listed in ``docs/formats.md``.

Modules:

* ``sections``  - split one fact command's output at ``### ccfactory:<name>`` markers
* ``checks``    - ``CheckResult``: one readiness check with an operator hint
* ``kernel``    - ``/proc/cmdline``, ``/proc/modules``, ``/etc/modprobe.d``, sysfs module
  parameters, kernel release versions
* ``tee``       - kernel log lines and sysfs state proving SEV-SNP / TDX host support
* ``pci``       - sysfs PCI function listings and IOMMU groups
* ``nvidia``    - ``nvidia-smi`` (``-q``, ``-L``, ``--query-gpu``, ``conf-compute``) and
  ``/proc/driver/nvidia/gpus/*/information``
* ``gpuadmin``  - log lines of NVIDIA gpu-admin-tools (``nvidia_gpu_tools.py``)
"""
