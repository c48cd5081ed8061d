"""The gpu stage's options: its host-data keys, their defaults, meanings and ranges.

``ccfactory.config.HostData`` (the flat schema every inventory is validated against) is
assembled from every stage's options and the shared keys; cross-field rules live there.
Example::

    >>> GpuOptions.model_fields["gpu_count"].default
    0
"""

from __future__ import annotations

from ccfactory.gpus import gpu_models
from ccfactory.model import GpuCcMode, OptionsModel
from ccfactory.model import opt as _opt


class GpuOptions(OptionsModel):
    """Host-data keys of the gpu stage."""

    # --- GPUs
    gpu_count: int = _opt(0, "Number of NVIDIA GPUs the node must have (an integer, not a bool).", "gpu", ge=0, le=64)
    gpu_model: str | None = _opt(
        None, f"Expected GPU model: one of {', '.join(gpu_models())}.", "gpu"
    )
    gpu_cc_mode: GpuCcMode = _opt(
        "on",
        "GPU confidential-computing mode for all GPUs of the node: `on`, `devtools` "
        "(CC with debugging allowed, never for production), `off`, or `ppcie` "
        "(protected PCIe, HGX Hopper multi-GPU only).",
        "gpu",
    )
    gpu_devtools_acknowledged: bool = _opt(
        False,
        "Acknowledge that `gpu_cc_mode = devtools` lets the host debug the GPUs (no confidentiality): "
        "required for devtools outside the lab.",
        "gpu",
    )
