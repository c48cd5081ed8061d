"""Resolve logical BIOS settings to the attribute names and values one BMC uses.

The BMC describes its attributes in its attribute registry (``RegistryEntries``:
``AttributeName``, ``DisplayName``, ``Type``, ``ReadOnly``, ``Value`` list, ``Dependencies``)
and shows their applied values in ``Bios.Attributes``. A logical setting of a profile
(:mod:`ccfactory.firmware.profile`) names candidates; each candidate is tried, in order,
at three levels, and the first level with a match wins:

1. **exact** ``AttributeName``;
2. **suffix-normalised**: the vendor's form-ID suffix removed (AMI ``#01A7`` / ``_3C79``)
   and case, spaces and punctuation ignored (``TrustDomainExtension(TDX)`` ==
   ``TrustDomainExtension_TDX__3C79``);
3. **DisplayName**, normalised the same way (``TME-MT/TDX key split`` ==
   ``TmeMtTdxKeySplit``), against the setting's menu labels and names.

Enumerated values resolve to the registry entry (``ValueName`` or ``ValueDisplayName``,
whichever the profile says the vendor writes), through the profile's aliases and
synonyms (``Enabled`` == ``Enable`` == ``On``).

Example::

    >>> reg = AttributeRegistry.from_redfish([{"AttributeName": "Sme", "DisplayName": "Secure Memory Encryption",
    ...     "Type": "Enumeration", "Value": [{"ValueName": "Enabled"}, {"ValueName": "Disabled"}]}])
    >>> from ccfactory.firmware.profile import bios_profile_for
    >>> res = resolve_settings(bios_profile_for("dell", "snp"), reg, bmc="node1")
    >>> res.attribute("smee")
    'Sme'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ccfactory.firmware.errors import ResolutionError
from ccfactory.firmware.profile import BiosProfile, BiosSetting

MatchLevel = Literal["exact", "suffix", "display"]
_NOT_ALNUM = re.compile(r"[^0-9a-z]")
_CONDITIONS = {
    "EQU": lambda a, b: a == b,
    "NEQ": lambda a, b: a != b,
    "GTR": lambda a, b: a > b,
    "GEQ": lambda a, b: a >= b,
    "LSS": lambda a, b: a < b,
    "LEQ": lambda a, b: a <= b,
}


def normalise(text: str) -> str:
    """Case, spaces and punctuation ignored: ``'TME-MT/TDX key split'`` -> ``'tmemttdxkeysplit'``."""
    return _NOT_ALNUM.sub("", text.casefold())


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class EnumValue:
    name: str
    display: str | None = None


@dataclass(frozen=True)
class AttributeInfo:
    """What the BMC says about one attribute (from its registry, or only its current value)."""

    name: str
    display_name: str | None = None
    type: str | None = None  # Enumeration, Integer, String, Boolean; None: not in a registry
    read_only: bool = False
    immutable: bool = False
    grey_out: bool = False
    hidden: bool = False
    values: tuple[EnumValue, ...] = ()
    lower: int | None = None
    upper: int | None = None
    current: Any = None  # registry CurrentValue (AMI BMCs fill it; Dell leaves null)
    menu_path: str | None = None  # "./ProcSettingsRef", "./MemoryOptions/MemEncryptionOptions"
    reset_required: bool | None = None  # None: the registry does not say

    def label(self) -> str:
        """``Rome0139 "TSME" (AMD CBS > ...)``: the name an operator finds in the BIOS menus.

        Example::

            >>> AttributeInfo("Tme", "Total Memory Encryption (TME)", menu_path="./MemoryOptions/MemEncryption").label()
            'Tme "Total Memory Encryption (TME)" (MemoryOptions > MemEncryption)'
        """
        out = self.name
        if self.display_name and self.display_name.strip() != self.name:
            out += f' "{self.display_name.strip()}"'
        menu = menu_text(self.menu_path)
        return f"{out} ({menu})" if menu else out


def menu_text(path: str | None) -> str:
    """``./MemoryOptions/MemEncryptionOptions`` -> ``MemoryOptions > MemEncryptionOptions``."""
    if not path:
        return ""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return " > ".join(parts)


@dataclass(frozen=True)
class _Condition:
    attribute: str
    condition: str
    value: Any
    terms: str | None


@dataclass(frozen=True)
class _Dependency:
    target: str
    prop: str  # MapToProperty: ReadOnly, GrayOut, Hidden, Immutable, CurrentValue, LowerBound, UpperBound, Value (Dell)
    value: Any
    conditions: tuple[_Condition, ...]


LockKind = Literal["immutable", "read_only", "grey_out", "hidden", "forced", "limited"]


@dataclass(frozen=True)
class Block:
    """Why the BMC refuses a value for one attribute in a given state, and what causes it.

    ``causes`` are the attributes whose values make the rule hold (empty for a static flag):
    changing one of them (in an earlier pass) may lift the block.
    """

    kind: LockKind
    reason: str
    causes: tuple[str, ...] = ()


# registry property -> kind of block it causes when its dependency holds (DMTF
# AttributeRegistry MapToProperty; "Value" is Dell's extension: the allowed-value list)
_LOCKING = (("Immutable", "immutable"), ("ReadOnly", "read_only"), ("GrayOut", "grey_out"))


@dataclass(frozen=True)
class AttributeRegistry:
    """A BMC's BIOS attributes, indexed by name, with its ``Map`` dependencies.

    The dependencies follow the DMTF AttributeRegistry schema
    (DMTF/Redfish-Publications@2025.4:csdl/AttributeRegistry_v1.xml:307-366, 393-511): a ``Map``
    dependency sets ``MapToProperty`` of ``MapToAttribute`` to ``MapToValue`` when its
    ``MapFrom`` conditions (EQU/NEQ/GTR/GEQ/LSS/LEQ on another attribute's ``CurrentValue``)
    hold, joined left to right by ``MapTerms`` (AND/OR). The registry's own flags are the
    state shown when the registry was read; where dependencies exist for a property, they
    decide, evaluated on the state given (what the BIOS has applied, or a simulated state).
    """

    attributes: Mapping[str, AttributeInfo]
    dependencies: tuple[_Dependency, ...] = ()
    has_registry: bool = False  # False: only Bios.Attributes was known (no types, no allowed values)

    @classmethod
    def from_redfish(
        cls,
        registry: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        current: Mapping[str, Any] | None = None,
    ) -> AttributeRegistry:
        """From a registry document (or its ``Attributes`` list) and/or ``Bios.Attributes``.

        Example::

            >>> AttributeRegistry.from_redfish(None, {"Sme": "Disabled"}).attributes["Sme"].type is None
            True
        """
        entries: Sequence[Mapping[str, Any]] = ()
        deps: Sequence[Mapping[str, Any]] = ()
        if isinstance(registry, Mapping):
            body = registry.get("RegistryEntries", registry)
            entries, deps = body.get("Attributes", ()), body.get("Dependencies", ())
        elif registry is not None:
            entries = registry
        attributes: dict[str, AttributeInfo] = {}
        for entry in entries:
            info = _attribute_info(entry)
            if info is not None:
                attributes[info.name] = info
        for name, value in (current or {}).items():
            if name not in attributes:
                attributes[name] = AttributeInfo(name=name, current=value)
        parsed = tuple(d for d in map(_dependency, deps) if d)
        return cls(attributes, parsed, bool(entries))

    def get(self, name: str) -> AttributeInfo | None:
        return self.attributes.get(name)

    def label(self, name: str) -> str:
        """AttributeName with DisplayName and menu path, for messages."""
        info = self.attributes.get(name)
        return info.label() if info else name

    def rules(self, name: str, prop: str) -> list[_Dependency]:
        return [d for d in self.dependencies if d.target == name and d.prop == prop]

    @property
    def has_dependencies(self) -> bool:
        return bool(self.dependencies)

    # -- locks

    def lock_reason(self, name: str, applied: Mapping[str, Any]) -> str | None:
        """Why the BMC will refuse any write to ``name`` now, or ``None`` (see :meth:`lock`)."""
        block = self.lock(name, applied)
        return block.reason if block else None

    def lock(self, name: str, applied: Mapping[str, Any]) -> Block | None:
        """The first of Immutable, ReadOnly, GrayOut that holds for ``name`` in ``applied``.

        ``Immutable`` (static) always locks. ``ReadOnly``/``GrayOut``/``Immutable`` come from
        the registry's ``Map`` dependencies evaluated on ``applied`` when the registry has
        any for that property (that is how iDRAC keeps ``IntelSgx`` read-only until
        ``MemoryEncryption`` is applied); otherwise from the flag itself. GrayOut counts as
        a lock: DMTF says a greyed-out value "can be modified", but the BIOS does not act on
        it (iLO: ``TdxSeamldrEnable`` greyed out while ``TdxEnable`` is Disabled).
        """
        info = self.attributes.get(name)
        if info is None:
            return None
        if info.immutable:
            return Block("immutable", "the registry marks it Immutable (it reflects the hardware or a platform lock)")
        for prop, kind in _LOCKING:
            static = {"Immutable": False, "ReadOnly": info.read_only, "GrayOut": info.grey_out}[prop]
            block = self._flag(name, prop, kind, static, applied)
            if block:
                return block
        # hidden by a rule that holds (AMI suppressif, iDRAC TDX until TME-MT is active): the
        # BMC refuses it (PropertyUnknown) or the BIOS ignores it; a static Hidden flag alone
        # does not lock (iDRAC lists settable attributes as hidden)
        if any(_truthy(d.value) for d in self.rules(name, "Hidden")):
            return self._flag(name, "Hidden", "hidden", False, applied)
        return None

    def block(self, name: str, value: Any, applied: Mapping[str, Any]) -> Block | None:
        """Why writing ``value`` to ``name`` would be refused (or undone) in ``applied``.

        Locks first, then a ``CurrentValue`` dependency that forces another value, then a
        value-list (Dell ``Value``) or bound (``LowerBound``/``UpperBound``) dependency that
        excludes ``value``.
        """
        block = self.lock(name, applied)
        if block:
            return block
        for dep in self.rules(name, "CurrentValue"):
            if self._holds(dep.conditions, applied) and not _same(dep.value, value):
                return Block(
                    "forced",
                    f"the BIOS forces it to {dep.value!r} while {_describe(dep.conditions, self, applied)}",
                    self._causes(dep.conditions, applied),
                )
        for dep in self.rules(name, "Value"):
            if self._holds(dep.conditions, applied):
                allowed = [str(v.get("ValueName")) for v in dep.value or () if isinstance(v, Mapping)]
                if not any(_same(a, value) for a in allowed):
                    return Block(
                        "limited",
                        f"its values are limited to {', '.join(allowed) or 'none'} while "
                        f"{_describe(dep.conditions, self, applied)}",
                        self._causes(dep.conditions, applied),
                    )
        for prop, op in (("LowerBound", lambda v, b: v < b), ("UpperBound", lambda v, b: v > b)):
            for dep in self.rules(name, prop):
                if self._holds(dep.conditions, applied) and _num(value) is not None and _num(dep.value) is not None:
                    if op(_num(value), _num(dep.value)):
                        return Block(
                            "limited",
                            f"its {prop} is {dep.value} while {_describe(dep.conditions, self, applied)}",
                            self._causes(dep.conditions, applied),
                        )
        return None

    def hidden(self, name: str, applied: Mapping[str, Any]) -> bool:
        """Whether the BMC hides the attribute now (informational: hidden is not read-only)."""
        info = self.attributes.get(name)
        return bool(info and self._flag(name, "Hidden", "read_only", info.hidden, applied))

    def _flag(self, name: str, prop: str, kind: LockKind, static: bool, applied: Mapping[str, Any]) -> Block | None:
        rules = [d for d in self.rules(name, prop) if _truthy(d.value)]
        if not rules:
            return Block(kind, f"the registry marks it {prop}") if static else None
        for dep in rules:
            if self._holds(dep.conditions, applied):
                return Block(
                    kind,
                    f"{_PROP_WORDS.get(prop, prop)} while {_describe(dep.conditions, self, applied)} (registry dependency)",
                    self._causes(dep.conditions, applied),
                )
        return None

    # -- values

    def value_of(self, name: str, applied: Mapping[str, Any]) -> Any:
        """Applied value: ``Bios.Attributes``, else the registry's ``CurrentValue``."""
        if name in applied:
            return applied[name]
        info = self.attributes.get(name)
        return info.current if info else None

    def settle(self, state: Mapping[str, Any], *, limit: int = 20) -> dict[str, Any]:
        """The state after the BIOS applies its ``CurrentValue`` dependencies (forced values),
        repeated until nothing changes: what a POST does to the values it was given.

        Example::

            >>> reg = AttributeRegistry.from_redfish({"RegistryEntries": {"Attributes": [], "Dependencies": [
            ...     {"Type": "Map", "Dependency": {"MapToAttribute": "EnableMkTme", "MapToProperty": "CurrentValue",
            ...      "MapToValue": "Enabled", "MapFrom": [{"MapFromAttribute": "MemoryEncryption",
            ...      "MapFromCondition": "EQU", "MapFromProperty": "CurrentValue", "MapFromValue": "MultipleKeys"}]}}]}})
            >>> reg.settle({"MemoryEncryption": "MultipleKeys", "EnableMkTme": "Disabled"})["EnableMkTme"]
            'Enabled'
        """
        out = dict(state)
        forced = [d for d in self.dependencies if d.prop == "CurrentValue"]
        for _ in range(limit):
            changed = False
            for dep in forced:
                if self._holds(dep.conditions, out) and not _same(self.value_of(dep.target, out), dep.value):
                    out[dep.target] = dep.value
                    changed = True
            if not changed:
                break
        return out

    def _causes(self, conditions: Sequence[_Condition], applied: Mapping[str, Any]) -> tuple[str, ...]:
        """The attributes of the conditions that hold (what the operator would change)."""
        held = [c.attribute for c in conditions
                if self.value_of(c.attribute, applied) is not None
                and _compare(c.condition, self.value_of(c.attribute, applied), c.value)]
        return tuple(dict.fromkeys(held or [c.attribute for c in conditions]))

    def _holds(self, conditions: Sequence[_Condition], applied: Mapping[str, Any]) -> bool:
        # DMTF: MapTerms "should be evaluated in array order, meaning ... left-to-right"
        # (Redfish-Publications@2025.4:csdl/AttributeRegistry_v1.xml:362-365); each term joins
        # a condition to the result so far. iDRAC omits MapTerms where the help text means
        # "any of these" (IntelSgx read-only if NodeInterleave, MemOpMode or MemoryEncryption
        # says so), so a missing term is OR.
        result = False
        for i, cond in enumerate(conditions):
            value = self.value_of(cond.attribute, applied)
            ok = value is not None and _compare(cond.condition, value, cond.value)
            if i == 0:
                result = ok
            elif (cond.terms or "OR").upper() == "AND":
                result = result and ok
            else:
                result = result or ok
        return result


_PROP_WORDS = {"ReadOnly": "read-only", "GrayOut": "greyed out", "Immutable": "immutable", "Hidden": "hidden"}


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _same(a: Any, b: Any) -> bool:
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        return na == nb
    return str(a) == str(b)


def _compare(condition: str, actual: Any, expected: Any) -> bool:
    op = _CONDITIONS.get(condition.upper())
    if op is None:
        return False
    try:
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            return op(float(actual), float(expected))
        return op(str(actual), str(expected))
    except (TypeError, ValueError):
        return False


def _describe(conditions: Sequence[_Condition], registry: AttributeRegistry | None = None,
              applied: Mapping[str, Any] | None = None) -> str:
    """``TdxEnable "Trust Domain Extension (TDX)" is Disabled``; with a registry and state,
    only the conditions that hold are named (the ones the operator must change)."""
    words = {"EQU": "is", "NEQ": "is not", "GTR": ">", "GEQ": ">=", "LSS": "<", "LEQ": "<="}
    parts = []
    for c in conditions:
        if registry is not None and applied is not None and (c.terms or "OR").upper() == "OR" and len(conditions) > 1:
            value = registry.value_of(c.attribute, applied)
            if value is None or not _compare(c.condition, value, c.value):
                continue
        name = registry.label(c.attribute) if registry is not None else c.attribute
        text = f"{name} {words.get(c.condition, c.condition)} {c.value}"
        parts.append(text if not parts else f"{(c.terms or 'or').lower()} {text}")
    return " ".join(parts) or "its conditions hold"


def _attribute_info(entry: Mapping[str, Any]) -> AttributeInfo | None:
    name = entry.get("AttributeName")
    if not isinstance(name, str):
        return None
    values = tuple(
        EnumValue(str(v.get("ValueName")), v.get("ValueDisplayName"))
        for v in entry.get("Value") or ()
        if isinstance(v, Mapping) and v.get("ValueName") is not None
    )
    return AttributeInfo(
        name=name,
        display_name=entry.get("DisplayName"),
        type=entry.get("Type"),
        read_only=entry.get("ReadOnly") is True,
        immutable=entry.get("Immutable") is True,
        grey_out=entry.get("GrayOut") is True,
        hidden=entry.get("Hidden") is True,
        values=values,
        lower=entry.get("LowerBound"),
        upper=entry.get("UpperBound"),
        current=entry.get("CurrentValue"),
        menu_path=entry.get("MenuPath") if isinstance(entry.get("MenuPath"), str) else None,
        reset_required=entry.get("ResetRequired") if isinstance(entry.get("ResetRequired"), bool) else None,
    )


def _dependency(raw: Mapping[str, Any]) -> _Dependency | None:
    dep = raw.get("Dependency") or {}
    if raw.get("Type", "Map") != "Map" or not dep.get("MapToAttribute"):
        return None
    conditions = tuple(
        _Condition(
            c.get("MapFromAttribute", ""), c.get("MapFromCondition", "EQU"), c.get("MapFromValue"), c.get("MapTerms")
        )
        for c in dep.get("MapFrom") or ()
        if c.get("MapFromProperty", "CurrentValue") == "CurrentValue"
    )
    if not conditions:
        return None
    return _Dependency(dep["MapToAttribute"], dep.get("MapToProperty", ""), dep.get("MapToValue"), conditions)


# ---------------------------------------------------------------- names


@dataclass(frozen=True)
class ResolvedName:
    """One logical setting bound to one BMC attribute."""

    setting: str
    attribute: str
    level: MatchLevel
    candidate: str


@dataclass(frozen=True)
class Resolution:
    """The outcome of resolving every setting of a profile on one BMC.

    ``missing`` holds the error of each setting that matched nothing; it is raised only
    when that setting is needed (its stage is the one to apply), because some BMCs show
    an attribute only once an earlier stage is applied (Dell TDX, cc-stack §1.2).
    """

    bmc: str
    profile: BiosProfile
    names: Mapping[str, ResolvedName] = field(default_factory=dict)
    missing: Mapping[str, ResolutionError] = field(default_factory=dict)

    def attribute(self, setting: str) -> str:
        """The BMC attribute of a setting; raises its :class:`ResolutionError` if none.

        Example::

            resolution.attribute("snp")   # 'Snp' on iDRAC, 'SEV-SNPSupport#01A7' on an AMI BMC
        """
        if setting in self.names:
            return self.names[setting].attribute
        if setting in self.missing:
            raise self.missing[setting]
        raise KeyError(f"{self.profile.label}: no setting {setting!r}")


def resolve_settings(
    profile: BiosProfile,
    registry: AttributeRegistry | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    current: Mapping[str, Any] | None = None,
    *,
    bmc: str = "BMC",
) -> Resolution:
    """Bind each logical setting of ``profile`` to one of the BMC's attributes.

    ``registry`` is the BMC's attribute registry (document, ``Attributes`` list, or an
    :class:`AttributeRegistry`); ``current`` its ``Bios.Attributes``. Either may be absent.

    Example::

        >>> from ccfactory.firmware.profile import bios_profile_for
        >>> res = resolve_settings(bios_profile_for("supermicro", "snp"), None,
        ...                        {"SEV-SNPSupport#01A7": "Disabled"}, bmc="node2")
        >>> res.names["snp"].attribute, res.names["snp"].level
        ('SEV-SNPSupport#01A7', 'suffix')
    """
    index = _as_registry(registry, current)
    matcher = _Matcher(index, profile.name_suffix)
    names: dict[str, ResolvedName] = {}
    missing: dict[str, ResolutionError] = {}
    for setting_name, (stage, setting) in profile.settings().items():
        try:
            names[setting_name] = matcher.resolve(
                setting_name, setting, bmc=bmc, where=f"{profile.label}, stage {stage.name!r}"
            )
        except ResolutionError as exc:
            missing[setting_name] = exc
    return Resolution(bmc=bmc, profile=profile, names=names, missing=missing)


def _as_registry(registry: Any, current: Mapping[str, Any] | None) -> AttributeRegistry:
    if isinstance(registry, AttributeRegistry):
        if not current:
            return registry
        extra = {k: AttributeInfo(name=k, current=v) for k, v in current.items() if k not in registry.attributes}
        return AttributeRegistry({**registry.attributes, **extra}, registry.dependencies, registry.has_registry)
    return AttributeRegistry.from_redfish(registry, current)


class _Matcher:
    """Indexes the BMC's attributes once per level."""

    def __init__(self, index: AttributeRegistry, suffix: str | None):
        self.index = index
        self._suffix = re.compile(suffix) if suffix else None
        self.by_name = {n: [n] for n in index.attributes}
        self.by_key: dict[str, list[str]] = {}
        self.by_display: dict[str, list[str]] = {}
        for name, info in index.attributes.items():
            self.by_key.setdefault(self.key(name), []).append(name)
            if info.display_name:
                self.by_display.setdefault(normalise(info.display_name), []).append(name)

    def key(self, name: str) -> str:
        return normalise(self._suffix.sub("", name) if self._suffix else name)

    def resolve(self, setting_name: str, setting: BiosSetting, *, bmc: str, where: str) -> ResolvedName:
        levels: tuple[tuple[MatchLevel, dict[str, list[str]], Iterable[str], Any], ...] = (
            ("exact", self.by_name, setting.names, lambda c: c),
            ("suffix", self.by_key, setting.names, self.key),
            ("display", self.by_display, (*setting.display_names, *setting.names), normalise),
        )
        for level, table, candidates, keyfn in levels:
            for candidate in candidates:
                found = table.get(keyfn(candidate), [])
                if len(found) == 1:
                    return ResolvedName(setting_name, found[0], level, candidate)
                if len(found) > 1:
                    raise ResolutionError(
                        f"{bmc}: BIOS setting {setting_name!r} ({where}): candidate {candidate!r} matches "
                        f"{len(found)} attributes ({', '.join(sorted(found))}) by {level}; "
                        "fix: put the exact AttributeName first in the profile's names",
                        bmc=bmc,
                        setting=setting_name,
                        tried=(candidate,),
                        suggestions=tuple(sorted(found)),
                    )
        raise self._not_found(setting_name, setting, bmc=bmc, where=where)

    def _not_found(self, setting_name: str, setting: BiosSetting, *, bmc: str, where: str) -> ResolutionError:
        tried = (*setting.names, *setting.display_names)
        suggestions = self._closest(tried)
        source = "its attribute registry" if self.index.has_registry else "Bios.Attributes (no registry)"
        message = (
            f"{bmc}: BIOS setting {setting_name!r} ({where}) matches no attribute in {source}; "
            f"tried names {', '.join(setting.names) or '-'}"
            + (f"; display names {', '.join(repr(d) for d in setting.display_names)}" if setting.display_names else "")
            + (f"; closest on this BMC: {', '.join(self.index.label(n) for n in suggestions)}" if suggestions else "")
            + "; fix: add the BMC's name to the profile (an OEM profile directory), or check the BIOS version"
        )
        return ResolutionError(message, bmc=bmc, setting=setting_name, tried=tried, suggestions=suggestions)

    def _closest(self, tried: Sequence[str]) -> tuple[str, ...]:
        # difflib on the normalised keys, mapped back to the BMC's own spelling
        keys = {self.key(n): n for n in self.index.attributes}
        displays = {normalise(i.display_name): i.name for i in self.index.attributes.values() if i.display_name}
        found: list[str] = []
        for candidate in tried:
            for table, probe in ((keys, self.key(candidate)), (displays, normalise(candidate))):
                for match in difflib.get_close_matches(probe, list(table), n=3, cutoff=0.6):
                    if table[match] not in found:
                        found.append(table[match])
        return tuple(found[:5])


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class ValueCheck:
    """The value to write for one setting and whether a read value already satisfies it."""

    write: Any  # what to PATCH
    accepted: frozenset[str]  # normalised spellings that count as "set" when read back
    error: str | None = None  # why the BMC would refuse it (not in the allowed list, out of bounds)
    allowed: tuple[str, ...] = ()

    def satisfied_by(self, value: Any) -> bool:
        return value is not None and _value_key(value) in self.accepted


def _value_key(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    return str(int(text)) if re.fullmatch(r"-?\d+", text) else normalise(text)


def check_value(profile: BiosProfile, setting: BiosSetting, value: Any, info: AttributeInfo | None) -> ValueCheck:
    """What to write for ``value`` on the attribute described by ``info``.

    Example::

        >>> from ccfactory.firmware.profile import bios_profile_for
        >>> p = bios_profile_for("supermicro", "tdx")
        >>> info = AttributeInfo("LimitCPUPAto46Bits_F319", type="Enumeration",
        ...     values=(EnumValue("0", "Disable"), EnumValue("1", "Enable")))
        >>> check_value(p, p.setting("limit_pa_46bit"), "Disabled", info).write
        'Disable'
    """
    if setting.kind == "int":
        return _check_int(value, info)
    spellings = _spellings(profile, setting, value)
    if info is None or not info.values:
        return ValueCheck(write=value, accepted=frozenset(_value_key(s) for s in spellings))
    entry = _find_entry(spellings, info.values)
    allowed = tuple(_show(v) for v in info.values)
    if entry is None:
        return ValueCheck(
            write=value,
            accepted=frozenset(_value_key(s) for s in spellings),
            error=f"value {value!r} is not one the BMC allows",
            allowed=allowed,
        )
    write = entry.display if profile.value_form == "ValueDisplayName" and entry.display else entry.name
    accepted = {_value_key(entry.name)} | ({_value_key(entry.display)} if entry.display else set())
    return ValueCheck(write=write, accepted=frozenset(accepted), allowed=allowed)


def _check_int(value: Any, info: AttributeInfo | None) -> ValueCheck:
    accepted = frozenset({str(int(value))})
    if info is None:
        return ValueCheck(write=int(value), accepted=accepted)
    if info.values:  # an integer setting shown as an Enumeration (older Dell BIOS for CpuMinSevAsid)
        entry = _find_entry([str(value)], info.values)
        allowed = tuple(_show(v) for v in info.values)
        if entry is None:
            return ValueCheck(
                write=str(value), accepted=accepted, error=f"value {value} is not one the BMC allows", allowed=allowed
            )
        return ValueCheck(write=entry.name, accepted=accepted | {_value_key(entry.name)}, allowed=allowed)
    lower, upper = info.lower, info.upper
    if (lower is not None and value < lower) or (upper is not None and value > upper):
        bounds = f"{lower if lower is not None else '-inf'}..{upper if upper is not None else 'inf'}"
        return ValueCheck(
            write=int(value), accepted=accepted, error=f"value {value} is outside {bounds}", allowed=(bounds,)
        )
    return ValueCheck(write=int(value), accepted=accepted)


def _spellings(profile: BiosProfile, setting: BiosSetting, value: Any) -> list[str]:
    """The value, the setting's aliases, then synonyms of each (in that order)."""
    out: list[str] = []
    for v in (value, *setting.value_aliases):
        if str(v) not in out:
            out.append(str(v))
    for v in list(out):
        for group in profile.value_synonyms:
            if normalise(v) in {normalise(g) for g in group}:
                out += [g for g in group if g not in out]
    return out


def _find_entry(spellings: Sequence[str], values: Sequence[EnumValue]) -> EnumValue | None:
    for compare in (lambda a, b: a == b, lambda a, b: normalise(a) == normalise(b)):
        for spelling in spellings:
            for entry in values:
                if compare(spelling, entry.name) or (entry.display is not None and compare(spelling, entry.display)):
                    return entry
    return None


def _show(value: EnumValue) -> str:
    return value.name if not value.display or value.display == value.name else f"{value.name} ({value.display})"
