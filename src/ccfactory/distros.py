"""Supported host distributions, from ``ccfactory/data/distros.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Distro:
    id: str
    versions: tuple[str, ...]
    update_bootloader: str
    update_initramfs: str


@cache
def distros() -> tuple[Distro, ...]:
    raw = tomllib.loads(resources.files("ccfactory.data").joinpath("distros.toml").read_text())
    return tuple(
        Distro(d["id"], tuple(d["versions"]), d["update_bootloader"], d["update_initramfs"]) for d in raw["distro"]
    )


def distro_for(os_id: str, version: str) -> Distro | None:
    """The supported distro matching os-release ID and VERSION_ID, or None."""
    for distro in distros():
        if distro.id == os_id and version in distro.versions:
            return distro
    return None


def supported_list() -> str:
    return "; ".join(f"{d.id} {', '.join(d.versions)}" for d in distros())
