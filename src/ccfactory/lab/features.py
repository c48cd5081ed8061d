"""Where a node's applied BIOS state comes from: the BMC emulator, or a local fallback.

The renderer asks ``platform_features(lab_dir, node)`` at every boot. The source is
``ccfactory.lab.bmc.state.platform_features_for`` once the BMC emulator provides it;
until then (module not importable) the local fallback reads
``<lab_dir>/nodes/<node>/platform.json``, a JSON object of ``PlatformFeatures`` fields
(missing fields take their defaults, i.e. a factory BIOS with every TEE feature off).
``lab up --platform-source local`` (or ``$CCFACTORY_LAB_PLATFORM=local``) forces the
fallback even when the BMC emulator is present (core tests; labs without BMCs).

Example::

    write_local_platform_features(lab, "node1", PlatformFeatures(smee=True, snp=True,
                                  rmp_coverage=True, sev_es_asid_limit=100))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ccfactory.lab.errors import LabError
from ccfactory.lab.platform import PlatformFeatures

log = logging.getLogger("ccfactory.lab")

_FIELDS = {f.name: f for f in dataclasses.fields(PlatformFeatures)}


def local_path(lab_dir: Path, node: str) -> Path:
    return Path(lab_dir) / "nodes" / node / "platform.json"


def local_platform_features_for(lab_dir: Path, node: str) -> PlatformFeatures:
    """Fallback source: ``<lab_dir>/nodes/<node>/platform.json`` (defaults if absent)."""
    path = local_path(lab_dir, node)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return PlatformFeatures()
    except ValueError as exc:
        raise LabError(f"{path}: not valid JSON: {exc}") from None
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise LabError(f"{path}: unknown PlatformFeatures field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    return PlatformFeatures(**raw)


def write_local_platform_features(lab_dir: Path, node: str, features: PlatformFeatures) -> Path:
    """Write the fallback file (tests, and labs without the BMC emulator)."""
    path = local_path(lab_dir, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(features), indent=2) + "\n")
    return path


SOURCES = ("auto", "bmc", "local")
ENV_SOURCE = "CCFACTORY_LAB_PLATFORM"


def _source(choice: str | None = None) -> Callable[[Path, str], PlatformFeatures]:
    """``auto`` (default): the BMC emulator's state if its module is importable, else local.
    ``local``: always platform.json (labs run without the BMC emulator, core tests)."""
    choice = choice or os.environ.get(ENV_SOURCE) or "auto"
    if choice not in SOURCES:
        raise LabError(f"platform source must be one of {', '.join(SOURCES)}, not {choice!r}")
    if choice == "local":
        return local_platform_features_for
    try:
        from ccfactory.lab.bmc.state import platform_features_for  # the BMC emulator owns BIOS state
    except ImportError as exc:  # not landed yet (or no such function yet)
        if choice == "bmc" or not (getattr(exc, "name", None) or "ccfactory.lab.bmc").startswith("ccfactory.lab.bmc"):
            raise
        return local_platform_features_for
    return platform_features_for


def platform_features(lab_dir: Path, node: str, source: str | None = None) -> PlatformFeatures:
    """The node's applied platform features, from the BMC emulator or the local fallback.

    ``source``: auto | bmc | local (default: ``$CCFACTORY_LAB_PLATFORM`` or auto).
    """
    return _source(source)(Path(lab_dir), node)


def source_name(source: str | None = None) -> str:
    """Which source ``platform_features`` uses (for status output)."""
    if _source(source) is local_platform_features_for:
        return "local (<lab>/nodes/<node>/platform.json)"
    return "bmc (ccfactory.lab.bmc.state)"


def bmc_post(lab_dir: Path, node: str) -> None:
    """Let the BMC apply pending BIOS settings at power-on self-test, if it offers the hook.

    On a real server pending BIOS settings apply at the next POST, whatever caused the
    reboot (Redfish reset or ``systemctl reboot``). Optional hook:
    ``ccfactory.lab.bmc.state.apply_pending_on_boot(lab_dir, node)``.
    """
    try:
        from ccfactory.lab.bmc.state import apply_pending_on_boot
    except ImportError:
        return
    apply_pending_on_boot(Path(lab_dir), node)
