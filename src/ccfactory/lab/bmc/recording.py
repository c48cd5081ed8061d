"""Real BMC captures as the lab BMC's Bios resource and attribute registry.

A personality may name, per TEE, a recording: a directory holding a real ComputerSystem,
Bios resource, settings object and full attribute registry, captured from a real BMC
(``registry.json[.gz]``, ``bios.json[.gz]``, optional ``settings.json[.gz]`` and
``system.json[.gz]``; provenance and licence in ``recordings/SOURCES.tsv``)::

    [recording.tdx]
    dir = "hpe-dl380a-gen12-u72"   # under recordings/, or an absolute directory
    overlay = true                 # the personality's own [[attributes]] go on top

Every recorded attribute becomes an ``[[attributes]]`` entry (source ``rec: <dir>``), with
the recorded Bios value as its factory state, and every recorded ``Map`` dependency the
emulator can enforce (``ReadOnly``, ``GrayOut``, ``Hidden``, ``CurrentValue`` and iDRAC's
``Value`` limits, conditions on ``CurrentValue`` with EQU/NEQ/GTR/GEQ/LSS/LEQ and
AND/OR terms evaluated left to right, as DMTF states at
Redfish-Publications@2025.4:csdl/AttributeRegistry_v1.xml:362-365) a ``[[dependencies]]`` entry. The
personality's own attributes and dependencies (the lab's TEE overlay: the SEV-SNP switch
no capture has live, TEE-off factory defaults) are laid over them and keep their own
``source``, so :func:`ccfactory.lab.bmc.personality.provenance_report` names what no
recording backs. Recorded entries the emulator cannot enforce are counted in
``skipped_rules``.

With ``overlay = false`` the BMC is the recorded system as captured: only recorded
attributes and rules, its ComputerSystem model, CPU and BIOS version.

Example::

    >>> data = merge_recordings(tomllib.loads(text), personality_dir)
    >>> len(data["attributes"]) > 500
    True
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

RECORDINGS_DIR = Path(__file__).with_name("recordings")
_SETS = {"ReadOnly", "Hidden", "GrayOut", "CurrentValue", "Value"}
_CONDS = {"EQU", "NEQ", "GTR", "GEQ", "LSS", "LEQ"}
_TYPES = {"Enumeration", "Integer", "String", "Boolean", "Password"}


class RecordingError(ValueError):
    """A recording that cannot be read; the message names the directory and the file."""


def recording_dir(name: str, base: Path | None = None) -> Path:
    """``name`` as a directory: absolute, else under ``recordings/`` (then ``base``)."""
    path = Path(name)
    if path.is_absolute():
        return path
    for root in (RECORDINGS_DIR, base):
        if root is not None and (root / name).is_dir():
            return root / name
    return RECORDINGS_DIR / name


def read_part(directory: Path, part: str) -> Any:
    """``<part>.json`` or ``<part>.json.gz`` in ``directory``, or ``None`` if neither exists."""
    for name, opener in ((f"{part}.json", open), (f"{part}.json.gz", gzip.open)):
        path = directory / name
        if path.is_file():
            try:
                with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
                    return json.load(fh)
            except (OSError, ValueError) as exc:
                raise RecordingError(f"recording {directory}: cannot read {name}: {exc}") from None
    return None


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, str))


def _attribute(entry: dict[str, Any], tee: str, source: str, current: Any, field: str,
               ruled: set[tuple[str, str]], absent: bool) -> dict[str, Any] | None:
    kind = entry.get("Type")
    name = entry.get("AttributeName")
    if kind not in _TYPES or not isinstance(name, str):
        return None
    out: dict[str, Any] = {
        "name": name, "type": kind, "display": str(entry.get("DisplayName") or name), "source": source,
        "tee": [tee], "menu": str(entry.get("MenuPath") or "./"), "help": str(entry.get("HelpText") or ""),
        # a flag some rule drives is the capture's evaluation of that rule: the rule decides
        # (as ccfactory.firmware.resolve.AttributeRegistry.lock reads a registry)
        "read_only": any(bool(entry.get(prop)) and (name, prop) not in ruled for prop in ("ReadOnly", "GrayOut")),
        "immutable": bool(entry.get("Immutable")),
        "hidden": absent or (bool(entry.get("Hidden")) and (name, "Hidden") not in ruled and current is None),
        "absent": absent,
        "reset_required": entry.get("ResetRequired", True) is not False,
    }
    if isinstance(entry.get("WarningText"), str):
        out["warning"] = entry["WarningText"]
    if isinstance(entry.get("DisplayOrder"), int):
        out["order"] = entry["DisplayOrder"]
    default = next((v for v in (current, entry.get("CurrentValue"), entry.get("DefaultValue")) if v is not None), None)
    if kind == "Enumeration":
        values = [
            {"name": str(v["ValueName"]), "display": str(v.get("ValueDisplayName") or v["ValueName"])}
            for v in entry.get("Value") or [] if isinstance(v, dict) and v.get("ValueName") is not None
        ]
        if not values:
            return None
        out["values"] = values
        accepted = [v[field] for v in values]
        if default not in accepted:  # the Bios may show the other spelling (AMI: ValueName in Bios)
            other = "name" if field == "display" else "display"
            match = [v[field] for v in values if v[other] == default]
            default = match[0] if match else accepted[0]
    elif kind == "Integer":
        for key, prop in (("lower", "LowerBound"), ("upper", "UpperBound"), ("step", "ScalarIncrement")):
            if isinstance(entry.get(prop), int) and not isinstance(entry.get(prop), bool):
                out[key] = entry[prop]
        if isinstance(default, str) and default.lstrip("-").isdigit():
            default = int(default)
        if not isinstance(default, int) or isinstance(default, bool):
            default = out.get("lower", 0)
    elif kind in ("String", "Password"):
        for key, prop in (("min_length", "MinLength"), ("max_length", "MaxLength")):
            if isinstance(entry.get(prop), int):
                out[key] = entry[prop]
        default = default if isinstance(default, str) else ""
    else:
        default = default if isinstance(default, bool) else False
    out["default"] = default
    return out


def _dependency(raw: dict[str, Any], tee: str, source: str) -> dict[str, Any] | None:
    dep = raw.get("Dependency") or {}
    target, prop = dep.get("MapToAttribute"), dep.get("MapToProperty")
    if raw.get("Type", "Map") != "Map" or not isinstance(target, str) or prop not in _SETS:
        return None
    when = []
    for cond in dep.get("MapFrom") or []:
        if cond.get("MapFromProperty", "CurrentValue") != "CurrentValue":
            return None
        if cond.get("MapFromCondition", "EQU") not in _CONDS or not _scalar(cond.get("MapFromValue")):
            return None
        when.append({
            "attr": cond.get("MapFromAttribute"), "cond": cond.get("MapFromCondition", "EQU"),
            "value": cond["MapFromValue"], **({"terms": cond["MapTerms"]} if cond.get("MapTerms") in ("AND", "OR") else {}),
        })
    if not when or not all(isinstance(c["attr"], str) for c in when):
        return None
    value = dep.get("MapToValue", True)
    if prop == "Value":
        value = [str(v.get("ValueName")) for v in value or [] if isinstance(v, dict)]
        if not value:
            return None
    elif not _scalar(value):
        return None
    return {"for": target, "set": prop, "value": value, "when": when, "source": source, "tee": [tee]}


def _absent(entry: dict[str, Any], current: dict[str, Any], ruled: set[tuple[str, str]]) -> bool:
    """An attribute with no value on this system: not in the recorded Bios (when one was
    recorded), no registry CurrentValue (AMI lists live values there), and no Hidden rule that
    would explain why the Bios omits it. ccfactory's planner reads such an attribute as
    unset (ccfactory.firmware.resolve.AttributeRegistry.value_of); the emulator does too."""
    name = entry.get("AttributeName")
    return bool(current) and name not in current and entry.get("CurrentValue") is None and (name, "Hidden") not in ruled


def recorded_entries(directory: Path, tee: str, enum_field: str = "name") -> dict[str, Any]:
    """The attributes, dependencies and system facts of one recording, as personality data.

    ``enum_field``: ``"name"`` (clients write ValueName) or ``"display"`` (AMI).
    """
    registry = read_part(directory, "registry")
    if not isinstance(registry, dict) or not isinstance(registry.get("RegistryEntries"), dict):
        raise RecordingError(f"recording {directory}: registry.json[.gz] is missing or has no RegistryEntries")
    bios = read_part(directory, "bios") or {}
    current = bios.get("Attributes") or {}
    source = f"rec: {directory.name}"
    entries = registry["RegistryEntries"]
    ruled = {((d.get("Dependency") or {}).get("MapToAttribute"), (d.get("Dependency") or {}).get("MapToProperty"))
             for d in entries.get("Dependencies") or []}
    attrs = [a for e in entries.get("Attributes") or []
             if (a := _attribute(e, tee, source, current.get(e.get("AttributeName")), enum_field, ruled,
                                 absent=_absent(e, current, ruled)))]
    deps, skipped = [], 0
    for raw in entries.get("Dependencies") or []:
        dep = _dependency(raw, tee, source)
        if dep is None:
            skipped += 1
        else:
            deps.append(dep)
    return {"attributes": attrs, "dependencies": deps, "skipped_rules": skipped, "registry": registry,
            "bios": bios, "settings": read_part(directory, "settings"), "system": read_part(directory, "system")}


def merge_recordings(data: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Personality TOML data with its ``[recording.<tee>]`` captures merged in (see module doc)."""
    refs = data.pop("recording", None) or {}
    if not refs:
        return data
    enum_field = "display" if (data.get("bios") or {}).get("enum_value") == "ValueDisplayName" else "name"
    own_attrs: list[dict[str, Any]] = list(data.get("attributes") or [])
    own_deps: list[dict[str, Any]] = list(data.get("dependencies") or [])
    attrs: list[dict[str, Any]] = []
    deps: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    for tee, ref in refs.items():
        directory = recording_dir(str(ref["dir"]), base)
        rec = recorded_entries(directory, tee, enum_field)
        overlay = ref.get("overlay", True)
        own = {a["name"]: a for a in own_attrs if a.get("tee") is None or tee in a["tee"]}
        mine = set(own) if overlay else set()
        kept = [a for a in rec["attributes"] if a["name"] not in mine]
        for a in kept:  # behaviour no registry states (a one-shot that reads back its old value)
            if own.get(a["name"], {}).get("one_shot") is not None and not a["absent"]:
                a["one_shot"] = own[a["name"]]["one_shot"]
        names = {a["name"] for a in kept} | mine
        attrs.extend(kept)
        deps.extend(d for d in rec["dependencies"]
                    if d["for"] in names and all(c["attr"] in names for c in d["when"]))
        captured = {a["name"] for a in rec["attributes"]}
        meta[tee] = {"dir": str(directory), "overlay": overlay, "recorded_attributes": len(kept),
                     "skipped_rules": rec["skipped_rules"], "not_in_capture": sorted(mine - captured)}
        _fill_resources(data, tee, rec, overlay)
    if not all(m["overlay"] for m in meta.values()):
        own_attrs = [a for a in own_attrs if a.get("tee") is not None and all(
            t in meta and meta[t]["overlay"] for t in a["tee"])]
        own_deps = [d for d in own_deps if d.get("tee") is not None and all(
            t in meta and meta[t]["overlay"] for t in d["tee"])]
    data["attributes"] = [*attrs, *own_attrs]
    data["dependencies"] = [*deps, *own_deps]
    data["recordings"] = meta
    return data


def _fill_resources(data: dict[str, Any], tee: str, rec: dict[str, Any], overlay: bool) -> None:
    """The recorded Bios/registry identity (and, as captured, the system's model and CPU)."""
    resources = data.setdefault("resources", {})
    registry_id = rec["registry"].get("Id")
    if registry_id:
        resources.setdefault("registry", {}).setdefault("by_tee", {}).setdefault(tee, {})["Id"] = registry_id
    # what the recorded Bios names as its registry (Supermicro's recorded mismatch included)
    named = rec["bios"].get("AttributeRegistry") or registry_id
    if named:
        resources.setdefault("bios", {}).setdefault("by_tee", {}).setdefault(tee, {})["AttributeRegistry"] = named
        resources.setdefault("settings", {}).setdefault("by_tee", {}).setdefault(tee, {})["AttributeRegistry"] = named
    if overlay:
        return
    if registry_id:  # where real BMCs list it: /redfish/v1/Registries/<Id>
        data.setdefault("paths", {}).setdefault("by_tee", {}).setdefault(tee, {})["registry_file"] = (
            f"/redfish/v1/Registries/{registry_id}")
        resources.setdefault("registry_file", {}).setdefault("by_tee", {})[tee] = {
            "Id": registry_id, "Registry": str(rec["registry"].get("RegistryPrefix") or registry_id)}
    system = rec["system"] or {}
    summary = system.get("ProcessorSummary") or {}
    data.setdefault("identity", {}).setdefault("models", {})[tee] = {
        key: value if isinstance(value, str) else ""
        for key, value in (("model", system.get("Model")), ("cpu", summary.get("Model")),
                           ("bios_version", system.get("BiosVersion")))
    }
    data.pop("features", None)
