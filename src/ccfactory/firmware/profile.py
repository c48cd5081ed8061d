"""BIOS profiles: per vendor and TEE, the logical settings that must hold, as data.

A profile is one TOML file per vendor (``ccfactory/data/bios/<vendor>.toml``) with a
section per TEE (``[snp]``, ``[tdx]``). Each TEE lists **stages** of **logical settings**
(``smee``, ``snp``, ``tme_mt``, ``sgx_factory_reset`` ...): candidate attribute names, the
desired value and flags. Names are resolved against the BMC later
(:mod:`ccfactory.firmware.resolve`). The passes (one PATCH, one reboot each) are computed
from the BMC's registry (:mod:`ccfactory.firmware.plan`); a stage boundary counts only where
the stage says ``boundary = "hint"`` (the default): a vendor rule not in the registry, with
its source in ``why``. ``boundary = "registry"`` makes the stage a grouping only.

An OEM adds a vendor by adding a file: ``bios_profile_for("acme", "snp",
extra_dirs=["/etc/ccfactory/bios"])`` reads ``/etc/ccfactory/bios/acme.toml``; extra
directories are searched before the packaged profiles, so a file there also replaces a
packaged vendor.

Example::

    >>> p = bios_profile_for("dell", "snp", overrides={"min_sev_asid": 509})
    >>> [s.name for s in p.stages]
    ['sme', 'snp', 'rmp']
    >>> p.setting("min_sev_asid").value
    509
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ccfactory.firmware.errors import ProfileError

Tee = Literal["snp", "tdx"]
TEES: tuple[Tee, ...] = ("snp", "tdx")
Value = StrictInt | StrictStr

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_VENDOR = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# Enumerations spell the same state differently (Dell IntelSgx On/Off, Supermicro
# Enable/Disable, HPE Enabled/Disabled). A profile may add groups.
DEFAULT_VALUE_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("Enabled", "Enable", "On", "Yes", "True"),
    ("Disabled", "Disable", "Off", "No", "False"),
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BiosSetting(_Model):
    """One logical setting: where the BMC may call it, what it must read, and why."""

    names: tuple[str, ...] = Field((), description="candidate AttributeNames, most likely first")
    display_names: tuple[str, ...] = Field((), description="candidate DisplayNames (BIOS menu labels)")
    value: Value | None = Field(None, description="desired value; unset = managed only when overridden")
    kind: Literal["enum", "int"] = "enum"
    value_aliases: tuple[Value, ...] = Field((), description="other spellings of the value on some BMCs")
    one_shot: bool = Field(False, description="reads back its old value after it fired (never 'applied')")
    trigger: str | None = Field(None, description="one-shot only: fire when this setting of the stage changes")
    optional: bool = Field(False, description="skip, with a note, when the BMC has no such attribute")
    unconfirmed: bool = Field(False, description="the reference marks the names UNCONFIRMED")
    source: str = Field(description="where the names and value come from")
    note: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> BiosSetting:
        if not self.names and not self.display_names:
            raise ValueError("give at least one candidate in names or display_names")
        if self.value is not None:
            _check_kind(self.kind, self.value)
        if self.one_shot and not self.trigger:
            raise ValueError("a one_shot setting needs trigger = '<setting it fires with>'")
        if self.trigger and not self.one_shot:
            raise ValueError("trigger is only for one_shot settings")
        if self.one_shot and self.value is None:
            raise ValueError("a one_shot setting needs a value")
        return self

    @property
    def managed(self) -> bool:
        """Whether ccfactory enforces this setting (it has a value)."""
        return self.value is not None


class BiosStage(_Model):
    """Settings applied together: one PATCH, one reboot."""

    name: str
    why: str = Field("", description="why this stage is separate from the previous one (the source of the rule)")
    boundary: Literal["hint", "registry"] = Field(
        "hint",
        description=(
            "hint: the BIOS rule that puts this stage after the previous one is not in the BMC's registry, "
            "so the planner keeps the order (``why`` gives the source); registry: the registry's dependencies "
            "decide, and the stage is only a grouping"
        ),
    )
    settings: dict[str, BiosSetting]

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError("must be lower_snake_case")
        return value

    @field_validator("settings")
    @classmethod
    def _setting_names(cls, value: dict[str, BiosSetting]) -> dict[str, BiosSetting]:
        if not value:
            raise ValueError("a stage needs at least one setting")
        bad = [k for k in value if not _IDENT.match(k)]
        if bad:
            raise ValueError(f"setting names must be lower_snake_case: {', '.join(bad)}")
        for name, setting in value.items():
            if setting.trigger and setting.trigger not in value:
                raise ValueError(
                    f"setting {name!r}: trigger {setting.trigger!r} is not a setting of this stage "
                    f"(a one-shot fires in the run that applies its trigger's stage)"
                )
            if setting.trigger and value[setting.trigger].one_shot:
                raise ValueError(f"setting {name!r}: trigger {setting.trigger!r} is itself one_shot")
        return value


class TeeSection(_Model):
    description: str = ""
    stages: tuple[BiosStage, ...]

    @model_validator(mode="after")
    def _unique(self) -> TeeSection:
        if not self.stages:
            raise ValueError("needs at least one [[<tee>.stages]]")
        seen: dict[str, str] = {}
        stage_names: set[str] = set()
        for stage in self.stages:
            if stage.name in stage_names:
                raise ValueError(f"stage {stage.name!r} is listed twice")
            stage_names.add(stage.name)
            for setting in stage.settings:
                if setting in seen:
                    raise ValueError(f"setting {setting!r} is in stage {seen[setting]!r} and in stage {stage.name!r}")
                seen[setting] = stage.name
        return self


class ProfileFile(_Model):
    """What one ``<vendor>.toml`` holds."""

    vendor: str
    description: str = ""
    value_form: Literal["ValueName", "ValueDisplayName"] = Field(
        "ValueName", description="which registry field the BMC expects in a PATCH for enumerations"
    )
    name_suffix: str | None = Field(None, description="regex of a vendor suffix to ignore in attribute names")
    value_synonyms: tuple[tuple[str, ...], ...] = ()
    snp: TeeSection | None = None
    tdx: TeeSection | None = None

    @field_validator("vendor")
    @classmethod
    def _vendor(cls, value: str) -> str:
        if not _VENDOR.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("name_suffix")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class BiosProfile(_Model):
    """The profile of one vendor and TEE, with operator overrides applied."""

    vendor: str
    tee: Tee
    origin: str
    description: str = ""
    value_form: Literal["ValueName", "ValueDisplayName"] = "ValueName"
    name_suffix: str | None = None
    value_synonyms: tuple[tuple[str, ...], ...] = DEFAULT_VALUE_SYNONYMS
    stages: tuple[BiosStage, ...]
    overridden: tuple[str, ...] = ()

    def settings(self) -> dict[str, tuple[BiosStage, BiosSetting]]:
        """Every logical setting, in stage order, with its stage."""
        return {name: (stage, s) for stage in self.stages for name, s in stage.settings.items()}

    def setting(self, name: str) -> BiosSetting:
        """One logical setting; ``KeyError`` lists the valid names."""
        try:
            return self.settings()[name][1]
        except KeyError:
            raise KeyError(f"{self.label}: no setting {name!r}; settings: {', '.join(self.settings())}") from None

    def stage_of(self, name: str) -> BiosStage:
        return self.settings()[name][0]

    @property
    def label(self) -> str:
        return f"{self.vendor}/{self.tee}"

    def with_overrides(self, overrides: Mapping[str, Value] | None) -> BiosProfile:
        """A copy with operator values on top; unknown settings are refused.

        Example::

            >>> bios_profile_for("dell", "snp").with_overrides({"tsme": "Disabled"}).setting("tsme").value
            'Disabled'
        """
        if not overrides:
            return self
        known = self.settings()
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            names = ", ".join(f"{u!r}{_did_you_mean(u, known)}" for u in unknown)
            raise ProfileError(f"overrides for {self.label}: unknown setting(s) {names}; valid: {', '.join(known)}")
        stages = []
        for stage in self.stages:
            settings = {}
            for name, setting in stage.settings.items():
                if name in overrides:
                    setting = setting.model_copy(
                        update={"value": _coerce_override(self.label, name, setting, overrides[name])}
                    )
                settings[name] = setting
            stages.append(stage.model_copy(update={"settings": settings}))
        return self.model_copy(update={"stages": tuple(stages), "overridden": tuple(sorted(overrides))})


def _check_kind(kind: str, value: Any) -> None:
    if kind == "int" and not isinstance(value, int):
        raise ValueError(f"kind is int but value {value!r} is not an integer")
    if kind == "enum" and not isinstance(value, str):
        raise ValueError(f"kind is enum but value {value!r} is not a string")


def _coerce_override(label: str, name: str, setting: BiosSetting, value: Any) -> Value:
    # Inventories are Python, but a value may come from a CLI flag as text: "100" -> 100.
    if isinstance(value, bool):
        raise ProfileError(f"overrides for {label}: {name}: {value!r} is a bool; give the BIOS value (e.g. 'Enabled')")
    if setting.kind == "int" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    try:
        _check_kind(setting.kind, value)
    except ValueError as exc:
        raise ProfileError(f"overrides for {label}: {name}: {exc}") from None
    return value


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- loading


def _packaged_dir() -> Traversable:
    return resources.files("ccfactory.data").joinpath("bios")


def _profile_files(extra_dirs: Iterable[str | Path]) -> list[Traversable]:
    """Profile files, OEM directories first (so they shadow packaged vendors)."""
    dirs: list[Traversable] = [Path(d).expanduser() for d in extra_dirs] + [_packaged_dir()]
    files = []
    for directory in dirs:
        if not directory.is_dir():
            raise ProfileError(f"BIOS profile directory {directory} does not exist")
        files += sorted(
            (f for f in directory.iterdir() if f.name.endswith(".toml") and not f.name.startswith("_")),
            key=lambda f: f.name,
        )
    return files


def known_vendors(extra_dirs: Iterable[str | Path] = ()) -> tuple[str, ...]:
    """Vendors with a BIOS profile, packaged or in ``extra_dirs``.

    Example::

        >>> known_vendors()
        ('dell', 'generic', 'hpe', 'lenovo', 'supermicro')
    """
    return tuple(sorted({f.name.removesuffix(".toml") for f in _profile_files(extra_dirs)}))


def bios_profile_for(
    vendor: str,
    tee: str,
    extra_dirs: Iterable[str | Path] = (),
    overrides: Mapping[str, Value] | None = None,
) -> BiosProfile:
    """The validated profile for ``vendor`` and ``tee``, OEM directories searched first.

    Example::

        >>> bios_profile_for("supermicro", "tdx").stages[0].name
        'tme'
    """
    if tee not in TEES:
        raise ProfileError(f"no BIOS profile for TEE {tee!r}: firmware profiles exist for {', '.join(TEES)}")
    extra_dirs = tuple(extra_dirs)
    for path in _profile_files(extra_dirs):
        if path.name == f"{vendor}.toml":
            return _load(str(path), path.read_text()).for_tee(tee).with_overrides(overrides)
    raise ProfileError(
        f"no BIOS profile for vendor {vendor!r}{_did_you_mean(vendor, known_vendors(extra_dirs))}; "
        f"known: {', '.join(known_vendors(extra_dirs))}; an OEM adds one as <dir>/{vendor}.toml "
        "in a profile directory"
    )


@cache
def _load(origin: str, text: str) -> _LoadedFile:
    return _LoadedFile(origin, parse_profile(text, origin))


class _LoadedFile:
    def __init__(self, origin: str, data: ProfileFile):
        self.origin = origin
        self.data = data

    def for_tee(self, tee: str) -> BiosProfile:
        section: TeeSection | None = getattr(self.data, tee)
        if section is None:
            present = [t for t in TEES if getattr(self.data, t) is not None]
            raise ProfileError(
                f"{self.origin}: no [{tee}] section; this vendor's profile covers {', '.join(present) or 'no TEE'}"
            )
        return BiosProfile(
            vendor=self.data.vendor,
            tee=tee,  # type: ignore[arg-type]
            origin=self.origin,
            description=section.description or self.data.description,
            value_form=self.data.value_form,
            name_suffix=self.data.name_suffix,
            value_synonyms=DEFAULT_VALUE_SYNONYMS + self.data.value_synonyms,
            stages=section.stages,
        )


def parse_profile(text: str, origin: str = "<profile>") -> ProfileFile:
    """Parse one profile file; every problem is reported as ``file: tee: stage: setting: field: what``.

    Example::

        >>> text = ('vendor = "x"\\n[snp]\\n[[snp.stages]]\\nname = "a"\\n[snp.stages.settings.smee]\\n'
        ...         'names = ["SMEE"]\\nvalue = "Enabled"\\nsource = "doc"\\n')
        >>> parse_profile(text).vendor
        'x'
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{origin}: not valid TOML: {exc}") from None
    stem = Path(origin).name.removesuffix(".toml")
    if origin.endswith(".toml") and raw.get("vendor") not in (None, stem):
        raise ProfileError(
            f"{origin}: vendor = {raw.get('vendor')!r} but the file is named {stem}.toml; make them equal"
        )
    try:
        return ProfileFile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError("\n".join(_problem(origin, raw, err) for err in exc.errors())) from None


def _problem(origin: str, raw: Any, err: Any) -> str:
    """``file: tdx: stage 2 'tme_mt': setting 'tdx': names: message``, from a pydantic error."""
    parts: list[str] = []
    node = raw
    loc = list(err["loc"])
    i = 0
    while i < len(loc):
        key = loc[i]
        if key == "stages" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            index = loc[i + 1]
            stage = node.get("stages", [])[index] if isinstance(node, dict) else {}
            name = stage.get("name", "?") if isinstance(stage, dict) else "?"
            parts.append(f"stage {index + 1} {name!r}")
            node, i = stage, i + 2
            continue
        if key == "settings" and i + 1 < len(loc) and isinstance(node, dict):
            parts.append(f"setting {loc[i + 1]!r}")
            node, i = node.get("settings", {}).get(loc[i + 1], {}), i + 2
            continue
        parts.append(str(key))
        node = node.get(key, {}) if isinstance(node, dict) else {}
        i += 1
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = _model_for(parts)
        message = f"unknown key{_did_you_mean(str(loc[-1]), parent.model_fields) if parent else ''}"
    elif err["type"] == "missing":
        message = "missing (required)"
    where = ": ".join(parts)
    return f"{origin}: {where}: {message}" if where else f"{origin}: {message}"


def _model_for(parts: list[str]) -> type[BaseModel] | None:
    """Which model an error path ends in, for 'did you mean' on unknown keys."""
    if len(parts) < 2:
        return ProfileFile
    if parts[-2].startswith("setting "):
        return BiosSetting
    if parts[-2].startswith("stage "):
        return BiosStage
    if parts[-2] in TEES:
        return TeeSection
    return None
