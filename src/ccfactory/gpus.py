"""The GPU table: PCI device IDs to model, architecture and CC/PPCIe support.

The table is data (``ccfactory/data/gpus.toml``); this module only loads it.

Example::

    >>> gpu_model_by_name("H100").ppcie
    True
    >>> gpu_by_device_id("2330").model
    'H100'
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

NVIDIA_VENDOR_ID = "10de"
GPU_PCI_CLASS = "0302"  # 3D controller
NVSWITCH_PCI_CLASS = "0680"  # bridge, other


@dataclass(frozen=True)
class GpuModel:
    model: str
    architecture: str
    device_ids: tuple[str, ...]
    cc: bool
    ppcie: bool
    kind: str = "gpu"  # "gpu" or "nvswitch"


@cache
def gpu_table() -> tuple[GpuModel, ...]:
    """Every GPU and NVSwitch model in the packaged table."""
    raw = tomllib.loads(resources.files("ccfactory.data").joinpath("gpus.toml").read_text())
    models = []
    for kind in ("gpu", "nvswitch"):
        for entry in raw.get(kind, []):
            models.append(
                GpuModel(
                    model=entry["model"],
                    architecture=entry["architecture"],
                    device_ids=tuple(d.lower() for d in entry["device_ids"]),
                    cc=bool(entry.get("cc", False)),
                    ppcie=bool(entry.get("ppcie", False)),
                    kind=kind,
                )
            )
    return tuple(models)


def gpu_models() -> tuple[str, ...]:
    """Names accepted in ``gpu_model`` (GPUs only, not NVSwitches)."""
    return tuple(m.model for m in gpu_table() if m.kind == "gpu")


def gpu_model_by_name(name: str) -> GpuModel | None:
    for model in gpu_table():
        if model.kind == "gpu" and model.model.lower() == name.lower():
            return model
    return None


def gpu_by_device_id(device_id: str) -> GpuModel | None:
    """Look up a GPU or NVSwitch by PCI device ID (hex, with or without 0x)."""
    wanted = device_id.lower().removeprefix("0x")
    for model in gpu_table():
        if wanted in model.device_ids:
            return model
    return None
