"""The firmware plan: which stage to apply next, the PATCH body, and whether to reboot.

``plan_firmware`` is pure: it reads the profile, the resolved names, the BMC's applied
(``Bios.Attributes``) and pending (settings object) values and its registry, and
returns a :class:`FirmwarePlan`. The loop around it (PATCH, reboot, re-read, plan
again) is the role's; each turn applies exactly one stage, because a stage's
attributes may be read-only or invisible until the previous stage is *applied*.

Rules:

* a stage is **applied** when every managed, non-one-shot setting reads back its value;
* the plan targets the **first** stage not applied; later stages wait;
* the PATCH holds only that stage's attributes whose value is neither applied nor
  already **pending** with the right value (a re-run before the reboot patches nothing);
* a **one-shot** setting (``sgx_factory_reset``) never counts as unapplied; it is
  patched only when its trigger (``sgx``) is being changed in this run. Where the BMC
  keeps it read-only until the trigger is *applied* (AMI: greyed out while SGX is off),
  it is **deferred**: the plan lists it in ``deferred_one_shots`` and the caller, which
  knows that this run turned the trigger on, plans again with it in ``due_one_shots``
  after the reset: the stage is then targeted once more, to PATCH only the one-shot
  (one more reboot). A due one-shot still read-only then is an error;
* an attribute the BMC marks read-only (or greys out) in the target stage is an error,
  since every earlier stage is applied; so is a value outside the registry's allowed
  list or bounds;
* when a reboot is planned, an applied attribute whose pending value would undo it is
  patched back; when every stage is applied the plan is empty, needs no reboot, and
  such pending values are only reported as warnings.

Example::

    >>> from ccfactory.firmware.profile import bios_profile_for
    >>> from ccfactory.firmware.resolve import resolve_settings
    >>> p = bios_profile_for("dell", "snp")
    >>> current = {"Sme": "Disabled", "IommuSupport": "Enabled", "ProcVirtualization": "Enabled",
    ...            "ProcX2Apic": "Enabled", "TransparentSme": "Disabled", "Snp": "Disabled",
    ...            "CpuMinSevAsid": 1, "Rmp": "Disabled"}
    >>> plan = plan_firmware(p, resolve_settings(p, None, current, bmc="node1"), current, {}, None)
    >>> plan.stage, plan.patch, plan.reboot
    ('sme', {'Sme': 'Enabled'}, True)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ccfactory.firmware.errors import PlanError
from ccfactory.firmware.profile import BiosProfile, BiosSetting, BiosStage
from ccfactory.firmware.resolve import AttributeRegistry, Resolution, ValueCheck, check_value

StageStatus = Literal["applied", "apply", "waiting"]
_RESTORE = "restore: a pending value would undo it at the reset"
Action = Literal["ok", "patch", "pending", "later", "skip", "unknown"]  # later: a waiting stage's change


@dataclass(frozen=True)
class SettingState:
    """One setting of one stage, as the plan sees it."""

    setting: str
    attribute: str | None  # None: not resolvable (yet)
    desired: Any  # the value to write, in the BMC's spelling
    current: Any
    pending: Any
    action: Action
    one_shot: bool = False
    note: str = ""


@dataclass(frozen=True)
class StagePlan:
    name: str
    number: int  # 1-based
    status: StageStatus
    settings: tuple[SettingState, ...]


@dataclass(frozen=True)
class FirmwarePlan:
    """What to do on one BMC now. ``patch`` is the ``Attributes`` body of the PATCH."""

    bmc: str
    vendor: str
    tee: str
    stages: tuple[StagePlan, ...]
    stage: str | None = None  # the stage this run applies; None when compliant
    patch: Mapping[str, Any] = field(default_factory=dict)
    reboot: bool = False
    reason: str = ""  # why the reboot is needed (for the reboot log)
    warnings: tuple[str, ...] = ()
    # one-shots whose trigger is patched now but that the BMC locks until the trigger is
    # applied: fire them in a follow-up pass (plan again with due_one_shots) after the reset
    deferred_one_shots: tuple[str, ...] = ()
    firing: tuple[str, ...] = ()  # due one-shots this plan patches (a follow-up pass)
    unapplied: tuple[str, ...] = ()  # every stage not applied now, in order (a dry run's count)
    predicted_follow_ups: tuple[str, ...] = ()  # one-shots of later stages locked now (forecast)

    @property
    def compliant(self) -> bool:
        return self.stage is None

    @property
    def number(self) -> int | None:
        """1-based number of the stage this plan applies, ``None`` when compliant."""
        return next((s.number for s in self.stages if s.name == self.stage), None)

    def expected_reboots(self) -> int:
        """Reboots to reach compliance from here, as far as the BMC shows now: one per
        unapplied stage, plus one per one-shot that will have to wait for its trigger
        (a later stage's attributes may still be hidden, so this is a forecast)."""
        if self.compliant:
            return 0
        stage_of = {s.setting: st.name for st in self.stages for s in st.settings}
        follow_ups = {stage_of[n] for n in (*self.deferred_one_shots, *self.predicted_follow_ups) if n in stage_of}
        return len(self.unapplied) + len(follow_ups)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (reports, ``--json``)."""
        return {
            "bmc": self.bmc,
            "vendor": self.vendor,
            "tee": self.tee,
            "compliant": self.compliant,
            "stage": self.stage,
            "patch": dict(self.patch),
            "reboot": self.reboot,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "deferred_one_shots": list(self.deferred_one_shots),
            "firing": list(self.firing),
            "unapplied": list(self.unapplied),
            "expected_reboots": self.expected_reboots(),
            "stages": [
                {"name": s.name, "number": s.number, "status": s.status, "settings": [vars(x) for x in s.settings]}
                for s in self.stages
            ],
        }


def plan_firmware(
    profile: BiosProfile,
    resolved: Resolution,
    current: Mapping[str, Any],
    pending: Mapping[str, Any] | None,
    registry: AttributeRegistry | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    due_one_shots: Collection[str] = (),
) -> FirmwarePlan:
    """Diff desired against applied values and plan the first stage not yet applied.

    ``current`` is ``Bios.Attributes``; ``pending`` the settings object's ``Attributes``
    (only the staged values, or every attribute on BMCs that show a full copy);
    ``registry`` the attribute registry (document, list or :class:`AttributeRegistry`);
    ``due_one_shots`` the one-shot settings this run deferred (see the module docstring):
    their stage counts as not applied until they are sent.
    Raises :class:`~ccfactory.firmware.errors.ResolutionError` when a setting of the
    target stage has no attribute, :class:`PlanError` when one is read-only or its
    value is not allowed. See the module docstring for an example.
    """
    pending = pending or {}
    index = registry if isinstance(registry, AttributeRegistry) else AttributeRegistry.from_redfish(registry, current)
    ctx = _Context(profile, resolved, current, pending, index, frozenset(due_one_shots))
    unknown = sorted(set(due_one_shots) - {n for n, (_, s) in profile.settings().items() if s.one_shot})
    if unknown:
        raise ValueError(f"{profile.label}: due one-shot(s) {', '.join(unknown)} are not one-shot settings")
    unapplied = tuple(stage.name for stage in profile.stages if not ctx.applied(stage) or ctx.due_in(stage))
    first = next((i for i, stage in enumerate(profile.stages) if not ctx.applied(stage) or ctx.due_in(stage)), None)
    target = profile.stages[first] if first is not None else None
    stages: list[StagePlan] = []
    warnings: list[str] = []
    for i, stage in enumerate(profile.stages):
        if first is None:
            stages.append(ctx.describe_stage(stage, i + 1, "applied"))
            warnings += ctx.pending_undo(stage)  # compliant: no reboot is planned, so only warn
        elif i < first:
            stages.append(ctx.describe_stage(stage, i + 1, "applied", restore=True))
        elif i == first:
            stages.append(ctx.plan_stage(stage, i + 1))
        else:
            stages.append(ctx.describe_stage(stage, i + 1, "waiting"))
    warnings += ctx.notes
    follow_ups = ctx.predicted_follow_ups(first)
    if first is None or target is None:
        return FirmwarePlan(resolved.bmc, profile.vendor, profile.tee, tuple(stages), warnings=tuple(warnings))
    patch = {s.attribute: s.desired for st in stages for s in st.settings if s.action == "patch" and s.attribute}
    firing = tuple(n for n in target.settings if n in ctx.due)
    what = f"one-shot {', '.join(firing)} (deferred until {target.name!r} was applied)" if firing and ctx.applied(
        target
    ) else ("new settings patched" if patch else "settings already pending")
    reason = f"BIOS stage {first + 1}/{len(profile.stages)} {target.name!r} of {profile.label}: {what} apply at the next reset"
    return FirmwarePlan(
        resolved.bmc,
        profile.vendor,
        profile.tee,
        tuple(stages),
        stage=target.name,
        patch=patch,
        reboot=True,
        reason=reason,
        warnings=tuple(warnings),
        deferred_one_shots=tuple(ctx.deferred),
        firing=firing,
        unapplied=unapplied,
        predicted_follow_ups=follow_ups,
    )


class _Context:
    """Everything one planning run reads; small methods answer one question each."""

    def __init__(
        self,
        profile: BiosProfile,
        resolved: Resolution,
        current: Mapping[str, Any],
        pending: Mapping[str, Any],
        index: AttributeRegistry,
        due: frozenset[str] = frozenset(),
    ):
        self.profile, self.resolved, self.current, self.pending, self.index = profile, resolved, current, pending, index
        self.due = due
        self.notes: list[str] = []
        self.deferred: list[str] = []

    # -- reading

    def attribute(self, name: str) -> str | None:
        found = self.resolved.names.get(name)
        return found.attribute if found else None

    def check(self, name: str, setting: BiosSetting) -> ValueCheck:
        attribute = self.attribute(name)
        info = self.index.get(attribute) if attribute else None
        return check_value(self.profile, setting, setting.value, info)

    def is_set(self, name: str, setting: BiosSetting) -> bool:
        attribute = self.attribute(name)
        if attribute is None:
            return False
        return self.check(name, setting).satisfied_by(self.index.value_of(attribute, self.current))

    def counts(self, name: str, setting: BiosSetting) -> bool:
        """Whether a setting decides if its stage is applied."""
        if not setting.managed or setting.one_shot:
            return False
        if setting.optional and self.attribute(name) is None:
            return False
        return True

    def applied(self, stage: BiosStage) -> bool:
        return all(self.is_set(n, s) for n, s in stage.settings.items() if self.counts(n, s))

    def due_in(self, stage: BiosStage) -> bool:
        """A one-shot of this stage was deferred by this run and not sent yet."""
        return any(n in self.due for n in stage.settings)

    def predicted_follow_ups(self, first: int | None) -> tuple[str, ...]:
        """One-shots of stages still to apply whose trigger changes and that the BMC locks
        now: each will probably need its own follow-up reboot (a dry run's forecast)."""
        if first is None:
            return ()
        out = []
        # what the BMC will have applied when this stage is patched: earlier stages done
        simulated = dict(self.current)
        for stage in self.profile.stages[first:]:
            for name, setting in stage.settings.items():
                if not setting.one_shot or name in self.due or name in self.deferred:
                    continue
                trigger = stage.settings[setting.trigger or ""]
                attribute = self.attribute(name)
                if not trigger.managed or self.attribute(setting.trigger or "") is None:
                    continue
                if self.is_set(setting.trigger or "", trigger) or attribute is None:
                    continue
                if self.index.lock_reason(attribute, simulated):
                    out.append(name)
            for name, setting in stage.settings.items():
                attribute = self.attribute(name)
                if attribute and setting.managed and not setting.one_shot:
                    simulated[attribute] = self.check(name, setting).write
        return tuple(out)

    # -- the target stage

    def plan_stage(self, stage: BiosStage, number: int) -> StagePlan:
        states = []
        for name, setting in stage.settings.items():
            if not setting.managed:
                states.append(
                    self.state(name, setting, "skip", note="not managed: no value; set one in bios_overrides")
                )
            elif setting.one_shot:
                states.append(self.plan_one_shot(stage, name, setting))
            else:
                states.append(self.plan_setting(stage, name, setting))
        return StagePlan(stage.name, number, "apply", tuple(states))

    def plan_setting(self, stage: BiosStage, name: str, setting: BiosSetting) -> SettingState:
        attribute = self.attribute(name)
        if attribute is None:
            if setting.optional:
                self.notes.append(
                    f"{self.resolved.bmc}: optional setting {name!r} has no attribute on this BMC; skipped"
                )
                return self.state(name, setting, "skip", note="optional; not on this BMC")
            self.resolved.attribute(name)  # raises the ResolutionError with names tried and suggestions
        if self.is_set(name, setting):
            if self.undone(name, setting):
                return self.write(stage, name, setting, note=_RESTORE)
            return self.state(name, setting, "ok")
        return self.write(stage, name, setting)

    def plan_one_shot(self, stage: BiosStage, name: str, setting: BiosSetting) -> SettingState:
        trigger_name = setting.trigger or ""
        trigger = stage.settings[trigger_name]
        if name in self.due:
            # deferred by this run until its trigger was applied: send it now; still locked is
            # an error (the prerequisite is applied), raised by write()
            if self.attribute(name) is None:
                self.resolved.attribute(name)
            return self.write(stage, name, setting, note=f"one-shot: deferred until {trigger_name} was applied")
        # fires only in the run that changes its trigger (never when the trigger is absent)
        firing = trigger.managed and self.attribute(trigger_name) is not None and not self.is_set(trigger_name, trigger)
        if not firing:
            return self.state(name, setting, "skip", note=f"one-shot: fires only with {setting.trigger}")
        attribute = self.attribute(name)
        if attribute is None:
            if setting.optional:
                return self.state(name, setting, "skip", note="optional one-shot; not on this BMC")
            self.resolved.attribute(name)
        lock = self.index.lock_reason(attribute or "", self.current)
        if lock and not self.check(name, setting).satisfied_by(self.pending.get(attribute or "")):
            # A later run would not know that the trigger was turned on by this one, so the
            # caller fires it after this stage's reset, in the same run (deferred_one_shots).
            self.deferred.append(name)
            self.notes.append(
                f"{self.resolved.bmc}: one-shot {name!r} ({attribute}) not sent with {setting.trigger}: "
                f"read-only now ({lock}); it is sent once {setting.trigger} is applied, with one more reboot"
            )
            return self.state(name, setting, "skip", note=f"one-shot deferred: locked until {setting.trigger} is applied")
        return self.write(stage, name, setting, note=f"one-shot: fires with {setting.trigger}")

    def write(self, stage: BiosStage, name: str, setting: BiosSetting, note: str = "") -> SettingState:
        attribute = self.attribute(name) or ""
        check = self.check(name, setting)
        if check.satisfied_by(self.pending.get(attribute)):
            return self.state(name, setting, "pending", note=note)
        # a locked attribute often lists only its current value: report the lock first
        lock = self.index.lock_reason(attribute, self.current)
        if lock:
            done = [s.name for s in self.profile.stages[: self.profile.stages.index(stage)]]
            after = f"although the earlier stages ({', '.join(done)}) are applied" if done else "in the first stage"
            raise PlanError(
                f"{self.resolved.bmc}: {self.profile.label} stage {stage.name!r}: attribute {attribute} "
                f"(setting {name!r}) is read-only: {lock}, {after}; "
                "fix: set its prerequisite in an earlier stage of the profile, or check the BIOS version",
                bmc=self.resolved.bmc,
                setting=name,
                attribute=attribute,
                stage=stage.name,
            )
        if check.error:
            raise PlanError(
                f"{self.resolved.bmc}: {self.profile.label} stage {stage.name!r}: setting {name!r} "
                f"(attribute {attribute}): {check.error}; allowed: {', '.join(check.allowed) or '?'}; "
                "fix: correct the value in bios_overrides or the profile",
                bmc=self.resolved.bmc,
                setting=name,
                attribute=attribute,
                stage=stage.name,
            )
        return self.state(name, setting, "patch", note=note)

    # -- other stages

    def describe_stage(self, stage: BiosStage, number: int, status: StageStatus, restore: bool = False) -> StagePlan:
        """An applied or waiting stage. ``restore``: a reboot is planned, so a pending value
        that would undo an applied setting is patched back (it was writable: it got applied)."""
        states = []
        for name, setting in stage.settings.items():
            if not setting.managed or setting.one_shot:
                states.append(self.state(name, setting, "skip"))
            elif self.attribute(name) is None:
                note = "not visible yet" if status == "waiting" else "optional; not on this BMC"
                states.append(self.state(name, setting, "unknown" if status == "waiting" else "skip", note=note))
            elif restore and self.undone(name, setting):
                states.append(self.state(name, setting, "patch", note=_RESTORE))
            else:
                states.append(self.state(name, setting, "ok" if self.is_set(name, setting) else "later"))
        return StagePlan(stage.name, number, status, tuple(states))

    def undone(self, name: str, setting: BiosSetting) -> bool:
        """Applied now, but a pending value would change it at the next reset."""
        attribute = self.attribute(name)
        if attribute is None or attribute not in self.pending or not self.counts(name, setting):
            return False
        return not self.check(name, setting).satisfied_by(self.pending[attribute])

    def pending_undo(self, stage: BiosStage) -> list[str]:
        """Warnings for applied settings that a pending value would change at the next reset."""
        return [
            f"{self.resolved.bmc}: pending {self.attribute(name)}={self.pending[self.attribute(name) or '']!r} "
            f"would undo {name!r} of applied stage {stage.name!r} at the next reset"
            for name, setting in stage.settings.items()
            if self.undone(name, setting)
        ]

    def state(self, name: str, setting: BiosSetting, action: Action, note: str = "") -> SettingState:
        attribute = self.attribute(name)
        desired = self.check(name, setting).write if setting.managed else None
        current = self.index.value_of(attribute, self.current) if attribute else None
        pending = self.pending.get(attribute) if attribute else None
        if attribute and self.index.hidden(attribute, self.current) and action in ("patch", "pending", "later"):
            note = "; ".join(filter(None, [note, "hidden in the BMC's menus"]))
        return SettingState(name, attribute, desired, current, pending, action, setting.one_shot, note)


# ---------------------------------------------------------------- rendering


def render_plan(plan: FirmwarePlan) -> str:
    """A human diff of the plan, for ``--dry`` and ``ccfactory firmware plan``.

    Example output::

        gpu-01 (dell/snp): stage 2/3 'snp': patch and reboot
          stage 1 sme: applied
            Sme            [smee]              Enabled
          stage 2 snp: APPLY NOW
            Snp            [snp]               Disabled -> Enabled  (pending Enabled, not patched again)
            CpuMinSevAsid  [min_sev_asid]      1 -> 100
          stage 3 rmp: waiting
            Rmp            [snp_rmp_coverage]  Disabled -> Enabled later
          reboot: BIOS stage 2/3 'snp' of dell/snp: new settings patched apply at the next reset
          to compliance: 2 reboot(s) (stages snp, rmp)
    """
    total = len(plan.stages)
    if plan.compliant:
        head = f"{plan.bmc} ({plan.vendor}/{plan.tee}): compliant, all {total} BIOS stage(s) applied; no reboot"
    else:
        number = next(s.number for s in plan.stages if s.name == plan.stage)
        what = "patch and reboot" if plan.patch else "settings already pending; reboot"
        head = f"{plan.bmc} ({plan.vendor}/{plan.tee}): stage {number}/{total} {plan.stage!r}: {what}"
    lines = [head]
    labels = {"applied": "applied", "apply": "APPLY NOW", "waiting": "waiting"}
    every = [s for stage in plan.stages for s in stage.settings]
    name_width = max((len(s.attribute or s.setting) for s in every), default=0)
    tag_width = max((len(s.setting) + 2 for s in every), default=0)
    for stage in plan.stages:
        lines.append(f"  stage {stage.number} {stage.name}: {labels[stage.status]}")
        for s in stage.settings:
            label = f"{(s.attribute or s.setting).ljust(name_width)}  {f'[{s.setting}]'.ljust(tag_width)}"
            lines.append(f"    {label}  {_render_change(s)}".rstrip())
    lines += [f"  warning: {w}" for w in plan.warnings]
    if plan.reboot:
        lines.append(f"  reboot: {plan.reason}")
        left = plan.expected_reboots()
        later = f" (stages {', '.join(plan.unapplied)}" + (
            f"; follow-up for one-shot {', '.join((*plan.deferred_one_shots, *plan.predicted_follow_ups))})"
            if plan.deferred_one_shots or plan.predicted_follow_ups
            else ")"
        )
        lines.append(f"  to compliance: {left} reboot(s){later}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def _render_change(s: SettingState) -> str:
    note = f"  ({s.note})" if s.note else ""
    change = {
        "skip": "-",
        "unknown": f"? -> {_show(s.desired)}",
        "ok": _show(s.current),
        "pending": f"{_show(s.current)} -> {_show(s.desired)}  (pending {_show(s.pending)}, not patched again)",
        "later": f"{_show(s.current)} -> {_show(s.desired)} later",
        "patch": f"{_show(s.current)} -> {_show(s.desired)}",
    }[s.action]
    return change + note
