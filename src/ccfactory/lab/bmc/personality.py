"""Vendor personalities: one TOML file per BMC vendor, read here, never hard-coded in code.

A personality says, as data, how one vendor's BMC looks and behaves:

* ``[identity]``: system/manager ids, manufacturer, models per TEE, reset types;
* ``[paths]``: where Bios, its settings object, the attribute registry, jobs live;
* ``[bios]``: which resources accept PATCH, whether the settings object shows only the
  staged values or everything, which registry field (``ValueName`` or
  ``ValueDisplayName``) clients write, supported apply times, whether applying needs a
  config job (Dell);
* ``[resources.*]``: static JSON fragments shaped after the real recordings;
* ``[[attributes]]``: the BIOS attribute registry (type, allowed values, bounds,
  read-only, default, one-shot), each with a ``source``;
* ``[[dependencies]]``: DMTF registry ``Map`` dependencies (read-only/hidden/greyed-out
  until another attribute is *applied*), each with a ``source``;
* ``[recording.<tee>]``: a real capture (Bios values, full registry and its rules) served
  under the file's own attributes (:mod:`ccfactory.lab.bmc.recording`);
* ``[features.common|snp|tdx]``: how applied attributes map to
  :class:`ccfactory.lab.platform.PlatformFeatures`, the lab's hardware truth.

An OEM adds a vendor by dropping ``<vendor>.toml`` into ``personalities/`` (or into a
directory listed in ``CCFACTORY_BMC_PERSONALITIES``); no code changes.

Example::

    >>> p = load_personality("dell")
    >>> p.defaults("snp")["Sme"]
    'Disabled'
    >>> p.platform_features("snp", {**p.defaults("snp"), "Sme": "Enabled"}).smee
    True
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ccfactory.lab.bmc.messages import message
from ccfactory.lab.bmc.recording import RecordingError, merge_recordings
from ccfactory.lab.errors import LabError
from ccfactory.lab.platform import PlatformFeatures

Tee = Literal["snp", "tdx", "none"]
TEES: tuple[str, ...] = ("snp", "tdx", "none")
Scalar = Union[bool, int, str]

PERSONALITY_DIR = Path(__file__).with_name("personalities")
# Extra search path for OEM-supplied personalities (os.pathsep separated).
PERSONALITY_PATH_ENV = "CCFACTORY_BMC_PERSONALITIES"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnumValue(_Model):
    name: str  # ValueName
    display: str  # ValueDisplayName


class AttrDef(_Model):
    """One BIOS attribute of the registry."""

    name: str
    type: Literal["Enumeration", "Integer", "String", "Boolean", "Password"]
    display: str
    source: str
    tee: list[Tee] | None = None  # None: present whatever the CPU
    values: list[Union[str, EnumValue]] = Field(default_factory=list)
    default: Union[Scalar, dict[str, Scalar]]  # dict: per TEE
    lower: int | None = None
    upper: int | None = None
    step: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    read_only: bool = False  # static (e.g. information-only attributes)
    immutable: bool = False
    hidden: bool = False
    one_shot: Scalar | None = None  # value it reads again after it fired (e.g. SGX factory reset)
    absent: bool = False  # in the registry, not in the recorded Bios: no value, hidden (recording.py)
    reset_required: bool = True
    menu: str = "./"
    help: str = ""
    warning: str | None = None
    order: int | None = None

    def enum_values(self) -> list[EnumValue]:
        return [v if isinstance(v, EnumValue) else EnumValue(name=v, display=v) for v in self.values]

    def default_for(self, tee: str) -> Scalar:
        if isinstance(self.default, dict):
            if tee not in self.default:
                raise LabError(f"attribute {self.name}: no default for TEE {tee!r}")
            return self.default[tee]
        return self.default


class Condition(_Model):
    attr: str
    cond: Literal["EQU", "NEQ", "GTR", "GEQ", "LSS", "LEQ"] = "EQU"
    value: Scalar
    terms: Literal["AND", "OR"] | None = None  # how it joins the previous condition (DMTF MapTerms)


class Dependency(_Model):
    """A DMTF attribute-registry ``Map`` dependency, evaluated on APPLIED values.

    ``set = "Value"`` is iDRAC's extension (not in the DMTF MapToProperty enum): while the
    conditions hold, the attribute accepts only the ValueNames listed in ``value``
    (R750 BIOS 1.13.2: MemoryEncryption SingleKey/Disabled while CpuPaLimit is Enabled).
    """

    for_: str = Field(alias="for")
    set: Literal["ReadOnly", "Hidden", "GrayOut", "CurrentValue", "Value"]
    value: Union[Scalar, list[str]] = True  # MapToValue (Value: the allowed ValueNames)
    when: list[Condition]
    source: str
    tee: list[Tee] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FeatureRule(_Model):
    """Maps one applied attribute to one PlatformFeatures field."""

    attr: str
    on: list[Scalar] | None = None  # bool feature: True when the value is one of these; None: int value
    requires: list[str] = Field(default_factory=list)  # other features that must also be True
    source: str = ""

    @field_validator("on", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, int)) and not isinstance(v, list) else v


class Identity(_Model):
    manufacturer: str
    vendor_label: str  # ServiceRoot.Vendor
    product: str  # ServiceRoot.Product
    system_id: str
    system_name: str = "System"
    manager_id: str
    manager_name: str = "Manager"
    manager_model: str = ""
    firmware_version: str = "1.00"
    default_username: str
    reset_types: list[str]
    system_odata_type: str = "#ComputerSystem.v1_13_0.ComputerSystem"
    models: dict[str, dict[str, str]]  # tee -> {model, cpu, bios_version}
    source: str = ""


class Paths(_Model):
    bios: str
    bios_link: str | None = None  # what ComputerSystem.Bios points to (HPE: no trailing slash)
    settings: str
    registry: str
    registry_file: str
    reset_bios: str | None = None
    clear_pending: str | None = None
    jobs: str | None = None
    job: list[str] = Field(default_factory=list)
    task_job: list[str] = Field(default_factory=list)
    job_location: str | None = None
    by_tee: dict[str, dict[str, str]] = Field(default_factory=dict)  # per-TEE overrides (HPE registries)
    source: str = ""

    def get(self, name: str, tee: str) -> Any:
        """A path, with the per-TEE override if the personality has one."""
        return self.by_tee.get(tee, {}).get(name, getattr(self, name))


class BiosBehaviour(_Model):
    patch_targets: list[Literal["bios", "settings"]] = ["settings"]
    settings_view: Literal["pending", "full"] = "pending"
    enum_value: Literal["ValueName", "ValueDisplayName"] = "ValueName"
    apply_times: list[str] = ["OnReset"]
    advertise_apply_times: bool = True
    apply_requires_job: bool = False  # Dell: staged values apply only through a config job
    reject_patch_while_job_scheduled: bool = False
    etag_style: Literal["strong", "weak"] = "strong"
    settings_status: bool = True  # @Redfish.Settings carries ETag/Time/Messages
    patch_status: int = 204
    patch_with_job_status: int = 202
    job_create_status: int = 200
    source: str = ""


class Actions(_Model):
    reject_if_match: bool = False  # Dell: 412 when If-Match is sent on an action POST
    source: str = ""


class RegistryStyle(_Model):
    """Which optional properties a registry entry shows (vendors differ: Dell has Hidden and
    Immutable, HPE has GrayOut and DefaultValue, AMI shows the live CurrentValue)."""

    attribute_props: list[
        Literal[
            "CurrentValue", "DefaultValue", "GrayOut", "Hidden", "Immutable", "ReadOnly", "ResetRequired",
            "WarningText", "WriteOnly",
        ]
    ] = ["CurrentValue", "Hidden", "Immutable", "ReadOnly", "ResetRequired", "WriteOnly"]
    current_value: Literal["null", "applied"] = "null"
    source: str = ""


class Personality(_Model):
    """A vendor personality loaded from ``personalities/<vendor>.toml``."""

    schema_: int = Field(alias="schema")
    vendor: str
    summary: str
    sources: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    identity: Identity
    paths: Paths
    bios: BiosBehaviour = BiosBehaviour()
    actions: Actions = Actions()
    registry: RegistryStyle = RegistryStyle()
    resources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    attributes: list[AttrDef]
    dependencies: list[Dependency] = Field(default_factory=list)
    features: dict[Literal["common", "snp", "tdx", "none"], dict[str, FeatureRule]] = Field(default_factory=dict)
    # per TEE: the recording merged in (ccfactory.lab.bmc.recording), filled at load
    recordings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @functools.cached_property
    def _by_tee(self) -> dict[str, dict[str, AttrDef]]:
        return {t: {a.name: a for a in self.attributes if a.tee is None or t in a.tee} for t in TEES}

    # ------------------------------------------------------------------ registry
    def attributes_for(self, tee: str) -> dict[str, AttrDef]:
        """The attributes this vendor's BIOS has on a CPU with ``tee`` (ordered)."""
        return _attrs_for(self, tee)

    def dependencies_for(self, tee: str) -> list[Dependency]:
        attrs = self.attributes_for(tee)
        return [
            d
            for d in self.dependencies
            if (d.tee is None or tee in d.tee) and d.for_ in attrs and all(c.attr in attrs for c in d.when)
        ]

    def defaults(self, tee: str) -> dict[str, Scalar]:
        """Factory defaults (TEE disabled) for every attribute, e.g. ``{"Sme": "Disabled", ...}``."""
        return {name: a.default_for(tee) for name, a in self.attributes_for(tee).items() if not a.absent}

    def accepted_values(self, attr: AttrDef) -> list[str]:
        """Enumeration values a client writes and reads (ValueName, or ValueDisplayName on AMI)."""
        field = "name" if self.bios.enum_value == "ValueName" else "display"
        return [getattr(v, field) for v in attr.enum_values()]

    # ------------------------------------------------------------ dependencies
    def flags(self, tee: str, applied: dict[str, Scalar]) -> dict[str, dict[str, bool]]:
        """ReadOnly/Hidden/GrayOut per attribute, static flags plus dependencies on APPLIED values.

        Example: ``p.flags("snp", applied)["Snp"]["ReadOnly"]`` is True until ``Sme`` is applied.
        """
        out = {
            name: {"ReadOnly": a.read_only or a.immutable, "Hidden": a.hidden, "GrayOut": False}
            for name, a in self.attributes_for(tee).items()
        }
        for dep in self.dependencies_for(tee):
            if dep.set not in ("CurrentValue", "Value") and _holds(dep.when, applied):
                out[dep.for_][dep.set] = bool(dep.value)
        return out

    def forced_values(self, tee: str, applied: dict[str, Scalar]) -> dict[str, Scalar]:
        """Values the BIOS forces at POST (``MapToProperty: CurrentValue`` dependencies)."""
        return {
            d.for_: d.value
            for d in self.dependencies_for(tee)
            if d.set == "CurrentValue" and _holds(d.when, applied)
        }

    def limits(self, tee: str, applied: dict[str, Scalar]) -> dict[str, list[str]]:
        """Allowed values narrowed by ``Value`` dependencies that hold on APPLIED values."""
        out: dict[str, list[str]] = {}
        for d in self.dependencies_for(tee):
            if d.set == "Value" and isinstance(d.value, list) and _holds(d.when, applied):
                allowed = out.get(d.for_)
                out[d.for_] = [v for v in d.value if allowed is None or v in allowed]
        return out

    def validate_write(self, tee: str, applied: dict[str, Scalar], attrs: dict[str, Any]) -> list[dict[str, Any]]:
        """Redfish messages for every attribute in ``attrs`` that cannot be staged ([] if all fine).

        Read-only and hidden are judged on APPLIED values: a dependency is met only after
        the reset that applies its prerequisite, which is what forces staged bring-up.
        """
        known = self.attributes_for(tee)
        flags = self.flags(tee, applied)
        limits = self.limits(tee, applied)
        errors: list[dict[str, Any]] = []
        for name, value in attrs.items():
            attr = known.get(name)
            if attr is None or flags[name]["Hidden"]:
                errors.append(message("PropertyUnknown", name, prop=name))
                continue
            if flags[name]["ReadOnly"] or flags[name]["GrayOut"]:
                errors.append(message("PropertyNotWritable", name, prop=name))
                continue
            if name in limits and value not in self._spellings(attr, limits[name]):
                errors.append(message("PropertyValueNotInList", _show(value), name, prop=name))
                continue
            errors.extend(self._check_value(attr, value))
        return errors

    def _spellings(self, attr: AttrDef, names: list[str]) -> list[str]:
        """The accepted spellings (ValueName or ValueDisplayName) of the ValueNames ``names``."""
        field = "name" if self.bios.enum_value == "ValueName" else "display"
        return [getattr(v, field) for v in attr.enum_values() if v.name in names]

    def _check_value(self, attr: AttrDef, value: Any) -> list[dict[str, Any]]:
        name, shown = attr.name, _show(value)
        if attr.type == "Enumeration":
            if not isinstance(value, str):
                return [message("PropertyValueTypeError", shown, name, prop=name)]
            if value not in self.accepted_values(attr):
                return [message("PropertyValueNotInList", shown, name, prop=name)]
        elif attr.type == "Integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return [message("PropertyValueTypeError", shown, name, prop=name)]
            too_low = attr.lower is not None and value < attr.lower
            too_high = attr.upper is not None and value > attr.upper
            if too_low or too_high:
                return [message("PropertyValueOutOfRange", shown, name, prop=name)]
        elif attr.type == "Boolean":
            if not isinstance(value, bool):
                return [message("PropertyValueTypeError", shown, name, prop=name)]
        elif attr.type in ("String", "Password"):
            if not isinstance(value, str):
                return [message("PropertyValueTypeError", shown, name, prop=name)]
            if (attr.max_length is not None and len(value) > attr.max_length) or (
                attr.min_length is not None and len(value) < attr.min_length
            ):
                return [message("PropertyValueFormatError", shown, name, prop=name)]
        return []

    # ----------------------------------------------------------------- features
    def platform_features(self, tee: str, applied: dict[str, Scalar]) -> PlatformFeatures:
        """The platform features the applied attributes give (the lab's truth).

        Example: ``p.platform_features("tdx", applied).tdx``
        """
        rules: dict[str, FeatureRule] = {**self.features.get("common", {}), **self.features.get(tee, {})}
        raw: dict[str, Any] = {}
        for field, rule in rules.items():
            if rule.attr not in applied:
                continue
            value = applied[rule.attr]
            raw[field] = (value in rule.on) if rule.on is not None else _as_int(value)

        resolved: dict[str, Any] = {}

        def resolve(field: str, seen: tuple[str, ...] = ()) -> Any:
            if field in resolved:
                return resolved[field]
            value = raw.get(field, getattr(_DEFAULT_FEATURES, field))
            rule = rules.get(field)
            if rule and field not in seen:
                for dep in rule.requires:
                    if not resolve(dep, (*seen, field)):
                        value = False if isinstance(value, bool) else value
            resolved[field] = value
            return value

        for field in rules:
            resolve(field)
        return dataclasses.replace(_DEFAULT_FEATURES, **resolved)

    def resource(self, name: str, tee: str) -> dict[str, Any]:
        """Static JSON of ``[resources.<name>]`` (deep copy), merged with its ``by_tee.<tee>`` table."""
        base = copy.deepcopy(self.resources.get(name, {}))
        override = base.pop("by_tee", {}).get(tee, {})
        return _merge(base, override)

    def model_for(self, tee: str) -> dict[str, str]:
        return self.identity.models.get(tee) or self.identity.models.get("none") or {}


_DEFAULT_FEATURES = PlatformFeatures()
_FEATURE_FIELDS = {f.name for f in dataclasses.fields(PlatformFeatures)}


def _attrs_for(p: Personality, tee: str) -> dict[str, AttrDef]:
    return p._by_tee[tee]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _compare(left: Any, cond: str, right: Any) -> bool:
    if left is None:  # an attribute without a value (absent from the Bios) meets no condition
        return False
    if cond == "EQU":
        return left == right
    if cond == "NEQ":
        return left != right
    try:
        lnum, rnum = float(left), float(right)
    except (TypeError, ValueError):
        return False
    return {"GTR": lnum > rnum, "GEQ": lnum >= rnum, "LSS": lnum < rnum, "LEQ": lnum <= rnum}[cond]


def _holds(conditions: list[Condition], applied: dict[str, Scalar]) -> bool:
    """DMTF MapFrom: left to right, each term joined to the previous by MapTerms (default OR)."""
    result: bool | None = None
    for c in conditions:
        value = _compare(applied.get(c.attr), c.cond, c.value)
        if result is None:
            result = value
        elif c.terms == "AND":
            result = result and value
        else:
            result = result or value
    return bool(result)


# ---------------------------------------------------------------------- loading
def provenance_report(p: Personality) -> dict[str, Any]:
    """What no recording backs in a personality: every attribute and dependency whose
    ``source`` is not ``rec:`` (a vendor document, ``cc-stack``, or a ``lab`` invention).

    A profile that passes the lab on such a name can still meet ``PropertyUnknown`` on
    hardware; docs/firmware.md lists these per vendor.

    Example::

        >>> r = provenance_report(load_personality("hpe"))
        >>> r["attributes"]["unrecorded"]
        ['AmdSecureNestedPaging']
    """
    def split(items: list[Any], key: Any) -> dict[str, Any]:
        unrecorded = [key(i) for i in items if not i.source.startswith("rec")]
        return {"total": len(items), "recorded": len(items) - len(unrecorded), "unrecorded": unrecorded}

    return {
        "vendor": p.vendor,
        "attributes": split(p.attributes, lambda a: a.name),
        "dependencies": split(p.dependencies, lambda d: f"{d.for_} {d.set} <- " + ", ".join(c.attr for c in d.when)),
        # per TEE: the capture served, and its rules the emulator cannot enforce (counted)
        "recordings": {tee: {"dir": Path(m["dir"]).name, "overlay": m["overlay"],
                             "skipped_rules": m["skipped_rules"],
                             # names the overlay serves that this TEE's capture does not have
                             "not_in_capture": m.get("not_in_capture", [])} for tee, m in p.recordings.items()},
    }


def personality_dirs() -> list[Path]:
    """Where personalities are looked up: ``$CCFACTORY_BMC_PERSONALITIES`` first, then the built-ins."""
    extra = [Path(p) for p in os.environ.get(PERSONALITY_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, PERSONALITY_DIR]


def available_vendors() -> list[str]:
    """Vendors with a personality file, e.g. ``['dell', 'generic', 'hpe', 'lenovo', 'supermicro']``."""
    names: set[str] = set()
    for d in personality_dirs():
        names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def load_personality(vendor: str) -> Personality:
    """Load and check ``<vendor>.toml``; raises ``LabError`` naming the file and the bad field.

    Example: ``load_personality("hpe").paths.settings`` -> ``'/redfish/v1/systems/1/bios/settings/'``
    """
    for d in personality_dirs():
        path = d / f"{vendor}.toml"
        if path.is_file():
            return _load(path, path.stat().st_mtime_ns)
    raise LabError(f"no BMC personality for vendor {vendor!r}; known: {', '.join(available_vendors())}")


@functools.lru_cache(maxsize=32)
def _load(path: Path, _mtime: int) -> Personality:
    try:
        data = merge_recordings(tomllib.loads(path.read_text()), path.parent)
    except (OSError, tomllib.TOMLDecodeError, RecordingError) as exc:
        raise LabError(f"cannot read BMC personality {path}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise LabError(f"invalid BMC personality {path}: [recording] needs dir = \"...\" per TEE ({exc})") from None
    try:
        p = Personality.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        raise LabError(f"invalid BMC personality {path}: {problems}") from None
    if p.vendor != path.stem:
        raise LabError(f"invalid BMC personality {path}: vendor = {p.vendor!r} must match the file name")
    _check_consistency(p, path)
    return p


def _check_consistency(p: Personality, path: Path) -> None:
    """Cross-field checks a schema cannot express; data bugs fail at load, not mid-test."""
    problems: list[str] = []
    for tee in TEES:
        attrs = p.attributes_for(tee)
        for a in attrs.values():
            default = a.default_for(tee) if not isinstance(a.default, dict) or tee in a.default else None
            if default is None:
                problems.append(f"{a.name}: no default for {tee}")
                continue
            if a.type == "Enumeration" and default not in p.accepted_values(a):
                problems.append(f"{a.name}: default {default!r} not among {p.accepted_values(a)}")
            if a.one_shot is not None and a.type == "Enumeration" and a.one_shot not in p.accepted_values(a):
                problems.append(f"{a.name}: one_shot {a.one_shot!r} not an accepted value")
        for d in p.dependencies:
            if d.tee is not None and tee not in d.tee:
                continue
            missing = [c.attr for c in d.when if c.attr not in attrs]
            if d.for_ in attrs and missing:
                problems.append(f"dependency for {d.for_} ({tee}) names unknown attribute(s) {missing}")
        rules = {**p.features.get("common", {}), **p.features.get(tee, {})}
        for field, rule in rules.items():
            if field not in _FEATURE_FIELDS:
                problems.append(f"features: {field!r} is not a PlatformFeatures field")
            elif rule.attr not in attrs and tee in p.features:
                problems.append(f"features.{tee}.{field}: attribute {rule.attr!r} not present on {tee}")
            for req in rule.requires:
                if req not in _FEATURE_FIELDS:
                    problems.append(f"features.{field}.requires: unknown feature {req!r}")
    for tee in TEES:
        for name in ("bios", "settings", "registry", "registry_file"):
            if not str(p.paths.get(name, tee)).startswith("/"):
                problems.append(f"paths.{name} ({tee}) must be an absolute path")
    if problems:
        raise LabError(f"invalid BMC personality {path}: " + "; ".join(problems[:10]))


def path_regex(template: str) -> re.Pattern[str]:
    """Compile a personality path (``{job_id}`` placeholders) to a regex on slash-stripped paths.

    Example: ``path_regex("/redfish/v1/JobService/Jobs/{job_id}").match("/redfish/v1/JobService/Jobs/JID_1")``
    """
    escaped = re.escape(template.rstrip("/"))
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", escaped)
    return re.compile(f"^{pattern}$")
