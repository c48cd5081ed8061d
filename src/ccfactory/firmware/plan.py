"""The firmware plan: the passes the BMC's registry requires, the PATCH of the first, the reboot.

``plan_firmware`` is pure: it reads the profile, the resolved names, the BMC's applied
(``Bios.Attributes``) and pending (settings object) values, its registry and the CPU model,
and returns a :class:`FirmwarePlan`. The loop around it (PATCH, reboot, re-read, plan
again) is the driver's and the role's; each turn applies the first pass only, and the
next turn recomputes from what the BMC then reports. docs/firmware.md explains the model.

Rules:

* first, whether the node can run the TEE at all (:mod:`ccfactory.firmware.capability`);
* a setting is **applied** when it reads back its value; compliant = every managed,
  non-one-shot setting applied;
* the **passes** are computed (:meth:`_Context.schedule`): pass 1 takes every remaining
  setting the registry lets be written in the applied state (no lock, no forced value,
  no value limit against it), pass 2 every one writable once pass 1 is applied (the
  BIOS's forced values applied too), and so on: the minimum the registry allows. A profile
  stage with ``boundary = "hint"`` keeps its settings after the previous stage's (a vendor
  rule not in the registry, with its source); without any registry dependency, every
  profile stage is a pass of its own;
* the PATCH holds only pass 1's attributes whose value is not already **pending** (a
  re-run before the reboot patches nothing);
* a **one-shot** (``sgx_factory_reset``) never counts as unapplied; it fires with the pass
  of its trigger when the BMC lets it be written then, otherwise it is **deferred** to the
  next pass (``deferred_one_shots``; the caller plans again with it in ``due_one_shots``);
* a setting no pass can write is a :class:`PlanError` before anything is written, naming
  the attribute (with DisplayName and menu path), the rule and the fix for its cause;
* when a reboot is planned, an applied attribute whose pending value would undo it is
  patched back; when compliant, such pending values are only reported as warnings.

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

from ccfactory.firmware.capability import require
from ccfactory.firmware.errors import PlanError
from ccfactory.firmware.profile import BiosProfile, BiosSetting
from ccfactory.firmware.resolve import AttributeRegistry, Block, Resolution, ValueCheck, check_value

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
    unapplied: tuple[str, ...] = ()  # the name of every pass still to run, in order
    passes: tuple[tuple[str, ...], ...] = ()  # the logical settings of each pass still to run (the forecast)
    mode: str = "registry"  # registry: passes from the registry's dependencies; profile: the profile's stage order

    @property
    def compliant(self) -> bool:
        return self.stage is None

    @property
    def number(self) -> int | None:
        """1-based number of the stage this plan applies, ``None`` when compliant."""
        return next((s.number for s in self.stages if s.name == self.stage), None)

    def expected_reboots(self) -> int:
        """Reboots to reach compliance from here: one per pass the registry requires (the
        same engine the run uses, pass by pass)."""
        return 0 if self.compliant else len(self.passes)

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
            "passes": [list(p) for p in self.passes],
            "mode": self.mode,
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
    cpus: Sequence[str] = (),
) -> FirmwarePlan:
    """Compute the passes from the BMC's registry and plan the first one.

    First, whether the node can run the TEE at all (:mod:`ccfactory.firmware.capability`:
    ``cpus`` are the ComputerSystem's processor models; a registry without the TEE's
    settings is refused too), with the reason, before anything else is judged.

    ``current`` is ``Bios.Attributes``; ``pending`` the settings object's ``Attributes``
    (only the staged values, or every attribute on BMCs that show a full copy);
    ``registry`` the attribute registry (document, list or :class:`AttributeRegistry`);
    ``due_one_shots`` the one-shot settings this run deferred (see the module docstring).
    Raises :class:`~ccfactory.firmware.errors.ResolutionError` when a needed setting has
    no attribute, :class:`PlanError` when a setting can never be written (with the real
    cause: immutable, greyed out by X, value limited by Y) or its value is not allowed.
    """
    pending = pending or {}
    index = registry if isinstance(registry, AttributeRegistry) else AttributeRegistry.from_redfish(registry, current)
    unknown = sorted(set(due_one_shots) - {n for n, (_, s) in profile.settings().items() if s.one_shot})
    if unknown:
        raise ValueError(f"{profile.label}: due one-shot(s) {', '.join(unknown)} are not one-shot settings")
    require(profile.tee, cpus, index, resolved, bmc=resolved.bmc)
    ctx = _Context(profile, resolved, current, pending, index, frozenset(due_one_shots))
    schedule = ctx.schedule()
    stages = [ctx.describe_applied(schedule)]
    for number, names in enumerate(schedule.passes, 1):
        stages.append(ctx.describe_pass(schedule, number, names))
    warnings = list(ctx.notes)
    if not schedule.passes:
        warnings += ctx.pending_undo()
        return FirmwarePlan(resolved.bmc, profile.vendor, profile.tee, tuple(stages), warnings=tuple(warnings),
                            mode=schedule.mode)
    target = stages[1]
    patch = {s.attribute: s.desired for st in stages[:2] for s in st.settings if s.action == "patch" and s.attribute}
    firing = tuple(n for n in schedule.passes[0] if n in ctx.due)
    what = f"one-shot {', '.join(firing)} (deferred until its trigger was applied)" if firing and not [
        n for n in schedule.passes[0] if n not in ctx.due
    ] else ("new settings patched" if patch else "settings already pending")
    reason = (
        f"BIOS pass 1/{len(schedule.passes)} {target.name!r} of {profile.label}: {what} apply at the next reset"
    )
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
        deferred_one_shots=tuple(schedule.deferred),
        firing=firing,
        unapplied=tuple(st.name for st in stages[1:]),
        passes=tuple(tuple(p) for p in schedule.passes),
        mode=schedule.mode,
    )


@dataclass
class Schedule:
    """The passes from the state read now: each a list of logical settings (one PATCH, one reset)."""

    passes: list[list[str]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # settings that already read back their value
    deferred: list[str] = field(default_factory=list)  # one-shots of pass 1 locked until their trigger applies
    pass_of: dict[str, int] = field(default_factory=dict)  # setting -> 1-based pass
    invisible: list[str] = field(default_factory=list)  # no attribute yet (no registry): placed by the profile order
    mode: str = "registry"  # "registry": dependencies decide; "profile": no dependencies known, the stage order


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
        self.settings = profile.settings()
        self.mode = "registry" if index.has_dependencies else "profile"
        self.stage_no = {name: profile.stages.index(stage) for name, (stage, _) in self.settings.items()}

    # -- reading

    def attribute(self, name: str) -> str | None:
        found = self.resolved.names.get(name)
        return found.attribute if found else None

    def check(self, name: str, setting: BiosSetting) -> ValueCheck:
        attribute = self.attribute(name)
        info = self.index.get(attribute) if attribute else None
        return check_value(self.profile, setting, setting.value, info)

    def is_set(self, name: str, setting: BiosSetting, state: Mapping[str, Any] | None = None) -> bool:
        attribute = self.attribute(name)
        if attribute is None:
            return False
        return self.check(name, setting).satisfied_by(self.index.value_of(attribute, self.current if state is None else state))

    def counts(self, name: str, setting: BiosSetting) -> bool:
        """Whether a setting decides compliance (managed, not one-shot, present or required)."""
        if not setting.managed or setting.one_shot:
            return False
        if setting.optional and self.attribute(name) is None:
            return False
        return True

    def label(self, name: str) -> str:
        attribute = self.attribute(name)
        return f"{self.index.label(attribute)} [setting {name!r}]" if attribute else f"setting {name!r}"

    # -- the schedule

    def gate(self, name: str) -> int:
        """Index of the profile stage whose predecessors must be applied before ``name`` is
        written: the nearest hinted stage boundary at or before its own stage (every
        boundary when the registry gives no dependencies)."""
        own = self.stage_no[name]
        for i in range(own, 0, -1):
            if self.mode == "profile" or self.profile.stages[i].boundary == "hint":
                return i
        return 0

    def gate_open(self, name: str, state: Mapping[str, Any]) -> bool:
        limit = self.gate(name)
        for other, (_, setting) in self.settings.items():
            if self.stage_no[other] < limit and self.counts(other, setting) and self.attribute(other) is not None:
                if not self.is_set(other, setting, state):
                    return False
        return True

    def schedule(self) -> Schedule:
        """Simulate the passes: each takes every wanted setting writable in the state the
        earlier passes leave (registry locks, forced values and value limits evaluated on
        that state, then the BIOS's forced values applied), so the count is the minimum
        the registry allows; a setting no pass can write is an error with its cause."""
        self.mode = "registry" if self.index.has_dependencies else "profile"
        out = Schedule(mode=self.mode)
        state: dict[str, Any] = dict(self.current)
        todo: list[str] = []
        for name, (_, setting) in self.settings.items():
            if not self.counts(name, setting):
                continue
            if self.attribute(name) is None:
                if self.index.has_registry:
                    self.resolved.attribute(name)  # absent from this BIOS: raises with names tried
                out.invisible.append(name)
                continue
            if self.is_set(name, setting):
                out.applied.append(name)
            else:
                todo.append(name)
        one_shots = [n for n, (_, s) in self.settings.items() if s.one_shot and s.managed]
        waiting_shot: list[str] = [n for n in one_shots if n in self.due]
        for name in waiting_shot:
            if self.attribute(name) is None:
                self.resolved.attribute(name)
        guard = 0
        while todo or waiting_shot:
            guard += 1
            if guard > len(self.settings) + 2:
                raise AssertionError("schedule did not converge")  # each pass takes at least one setting
            ready = [n for n in todo if self.gate_open(n, state) and self.block_for(n, state) is None]
            shots = [n for n in waiting_shot if self.block_for(n, state) is None]
            if not ready and not shots:
                self.refuse(todo or waiting_shot, state, out)
            number = len(out.passes) + 1
            # one-shots fire with their trigger, when the BMC lets them be written now
            firing: list[str] = []
            for shot in one_shots:
                if shot in waiting_shot or shot in self.due:
                    continue
                trigger = self.settings[shot][1].trigger or ""
                if trigger not in ready:
                    continue
                if self.attribute(shot) is None:
                    if self.settings[shot][1].optional:
                        continue
                    self.resolved.attribute(shot)
                if self.block_for(shot, state) is None:
                    firing.append(shot)
                else:
                    waiting_shot.append(shot)  # deferred: the next pass, once the trigger is applied
                    if number == 1:
                        out.deferred.append(shot)
                        self.notes.append(
                            f"{self.resolved.bmc}: one-shot {shot!r} ({self.attribute(shot)}) not sent with {trigger}: "
                            f"read-only now ({self.block_for(shot, state).reason}); it is sent once {trigger} is "
                            "applied, with the next pass"
                        )
            names = ready + shots + firing
            out.passes.append(names)
            for n in names:
                out.pass_of[n] = number
                if n in shots:
                    waiting_shot.remove(n)
                if not self.settings[n][1].one_shot:
                    state[self.attribute(n) or ""] = self.check(n, self.settings[n][1]).write
            settled = self.index.settle(state)
            for n in ready + out.applied:
                if not self.is_set(n, self.settings[n][1], settled):
                    attribute = self.attribute(n) or ""
                    raise self.error(
                        n,
                        f"{self.label(n)} would not keep {self.check(n, self.settings[n][1]).write!r}: the BIOS "
                        f"forces it to {settled.get(attribute)!r} once pass {number} is applied",
                        "fix: the profile asks for values this BIOS's rules contradict; check the registry "
                        "dependencies of the attribute (or the BIOS version)",
                    )
            state = settled
            todo = [n for n in todo if n not in ready and not self.is_set(n, self.settings[n][1], state)]
        if out.invisible and out.passes:
            # attributes some BMCs show only once an earlier stage is applied: after the passes
            # of the settings of earlier stages (no registry to say more)
            for name in out.invisible:
                before = [out.pass_of[n] for n in out.pass_of if self.stage_no[n] < self.stage_no[name]]
                at = max(before, default=0) + 1
                if at > len(out.passes):
                    out.passes.append([])
                out.passes[at - 1].append(name)
                out.pass_of[name] = at
        elif out.invisible:
            # nothing else to do: the missing setting is needed now
            self.resolved.attribute(out.invisible[0])
        if out.passes and any(self.attribute(n) is None for n in out.passes[0]):
            first_missing = next(n for n in out.passes[0] if self.attribute(n) is None)
            self.resolved.attribute(first_missing)
        return out

    def block_for(self, name: str, state: Mapping[str, Any]) -> Block | None:
        attribute = self.attribute(name)
        if attribute is None:
            return None
        setting = self.settings[name][1]
        check = self.check(name, setting)
        lock = self.index.lock(attribute, state)
        if lock:
            return lock
        # a locked attribute often lists only its current value (iDRAC IntelSgx: Off): a value
        # list read while it was locked is no reason to refuse
        info = self.index.get(attribute)
        stale_list = bool(info and info.values) and self.index.lock(attribute, self.current) is not None
        if check.error and not stale_list:
            raise self.error(
                name,
                f"{self.label(name)}: {check.error}; allowed: {', '.join(check.allowed) or '?'}",
                "fix: correct the value in bios_overrides or the profile",
            )
        return self.index.block(attribute, check.write, state)

    def refuse(self, names: Sequence[str], state: Mapping[str, Any], out: Schedule) -> None:
        """No pass can take any of ``names``: raise with the real cause of the first."""
        for name in names:
            if not self.gate_open(name, state):
                continue
            block = self.block_for(name, state)
            if block is None:
                continue
            after = f" after pass(es) 1-{len(out.passes)}" if out.passes else " in the state the BMC reports now"
            raise self.error(name, f"{self.label(name)} cannot be set to "
                             f"{self.check(name, self.settings[name][1]).write!r}{after}: {block.reason}",
                             self.fix(name, block))
        raise self.error(names[0], f"{self.label(names[0])}: its profile stage waits for settings no pass can apply",
                         "fix: check the earlier settings' errors (a profile stage hint orders them)")

    def fix(self, name: str, block: Block) -> str:
        if block.kind == "immutable":
            return (
                "fix: none through Redfish: an Immutable attribute reflects the hardware or a platform lock; check that "
                f"this CPU and BIOS support {self.profile.tee.upper()} (the capability check), system lockdown, or "
                "update the BIOS"
            )
        managed = {self.attribute(n): n for n in self.settings if self.attribute(n)}
        causes = [c for c in block.causes if c]
        if not causes:
            return (
                "fix: the registry marks it read-only with no rule that lifts it: check the BIOS version, a BMC "
                "lock (system lockdown), or the BIOS setup"
            )
        ours = [c for c in causes if c in managed]
        theirs = [c for c in causes if c not in managed]
        parts = []
        if theirs:
            parts.append(
                "change " + ", ".join(self.index.label(c) for c in theirs)
                + " so the rule no longer holds (the profile does not manage it: set it in the BIOS setup or "
                "through the BMC), then re-run"
            )
        if ours:
            parts.append(
                "the profile's own " + ", ".join(f"{managed[c]!r} ({c})" for c in ours)
                + " cannot take a value that lifts the rule: check bios_overrides"
            )
        return "fix: " + "; ".join(parts)

    def error(self, name: str, text: str, fix: str) -> PlanError:
        stage = self.settings[name][0].name
        return PlanError(
            f"{self.resolved.bmc}: {self.profile.label}: {text}; {fix}",
            bmc=self.resolved.bmc,
            setting=name,
            attribute=self.attribute(name) or "",
            stage=stage,
        )

    # -- describing

    def describe_applied(self, schedule: Schedule) -> StagePlan:
        """Settings already applied (restored when a pending value would undo them and a reset
        is planned), unmanaged settings and optional ones the BMC lacks."""
        states = []
        rebooting = bool(schedule.passes)
        placed = set(schedule.pass_of)
        for name, (_, setting) in self.settings.items():
            if name in placed:
                continue
            if not setting.managed:
                states.append(self.state(name, setting, "skip", note="not managed: no value; set one in bios_overrides"))
            elif setting.one_shot:
                trigger = setting.trigger or ""
                states.append(self.state(name, setting, "skip", note=f"one-shot: fires only with {trigger}"))
            elif self.attribute(name) is None:
                if setting.optional:
                    self.notes.append(f"{self.resolved.bmc}: optional setting {name!r} has no attribute on this BMC; skipped")
                states.append(self.state(name, setting, "skip", note="optional; not on this BMC"))
            elif rebooting and self.undone(name, setting):
                states.append(self.state(name, setting, "patch", note=_RESTORE))
            else:
                states.append(self.state(name, setting, "ok"))
        return StagePlan("applied", 0, "applied", tuple(states))

    def pass_name(self, names: Sequence[str]) -> str:
        stages = []
        for n in names:
            stage = self.settings[n][0].name
            if stage not in stages:
                stages.append(stage)
        return "+".join(stages) or "pass"

    def describe_pass(self, schedule: Schedule, number: int, names: Sequence[str]) -> StagePlan:
        states = []
        for name in names:
            setting = self.settings[name][1]
            if self.attribute(name) is None:
                states.append(self.state(name, setting, "unknown", note="not visible yet"))
                continue
            note = ""
            if setting.one_shot:
                note = (f"one-shot: deferred until {setting.trigger} was applied" if name in self.due
                        or schedule.pass_of.get(setting.trigger or "") != number else f"one-shot: fires with {setting.trigger}")
            if number > 1:
                states.append(self.state(name, setting, "later", note=note))
                continue
            attribute = self.attribute(name) or ""
            if self.check(name, setting).satisfied_by(self.pending.get(attribute)):
                states.append(self.state(name, setting, "pending", note=note))
            else:
                states.append(self.state(name, setting, "patch", note=note))
        status: StageStatus = "apply" if number == 1 else "waiting"
        return StagePlan(self.pass_name(names), number, status, tuple(states))

    def undone(self, name: str, setting: BiosSetting) -> bool:
        """Applied now, but a pending value would change it at the next reset."""
        attribute = self.attribute(name)
        if attribute is None or attribute not in self.pending or not self.counts(name, setting):
            return False
        return not self.check(name, setting).satisfied_by(self.pending[attribute])

    def pending_undo(self) -> list[str]:
        """Warnings for applied settings that a pending value would change at the next reset."""
        return [
            f"{self.resolved.bmc}: pending {self.attribute(name)}={self.pending[self.attribute(name) or '']!r} "
            f"would undo applied setting {name!r} at the next reset"
            for name, (_, setting) in self.settings.items()
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

        gpu-01 (dell/snp): pass 1/2 'snp': patch and reboot
          applied:
            Sme            [smee]              Enabled
          pass 1 snp: APPLY NOW
            Snp            [snp]               Disabled -> Enabled  (pending Enabled, not patched again)
            CpuMinSevAsid  [min_sev_asid]      1 -> 100
          pass 2 rmp: waiting
            Rmp            [snp_rmp_coverage]  Disabled -> Enabled later
          reboot: BIOS pass 1/2 'snp' of dell/snp: new settings patched apply at the next reset
          to compliance: 2 reboot(s) (passes snp, rmp; computed from the BMC's registry)
    """
    passes = [s for s in plan.stages if s.status != "applied"]
    if plan.compliant:
        head = f"{plan.bmc} ({plan.vendor}/{plan.tee}): compliant, every BIOS setting applied; no reboot"
    else:
        what = "patch and reboot" if plan.patch else "settings already pending; reboot"
        head = f"{plan.bmc} ({plan.vendor}/{plan.tee}): pass 1/{len(passes)} {plan.stage!r}: {what}"
    lines = [head]
    labels = {"applied": "applied", "apply": "APPLY NOW", "waiting": "waiting"}
    every = [s for stage in plan.stages for s in stage.settings]
    name_width = max((len(s.attribute or s.setting) for s in every), default=0)
    tag_width = max((len(s.setting) + 2 for s in every), default=0)
    for stage in plan.stages:
        if not stage.settings:
            continue
        title = "applied:" if stage.status == "applied" else f"pass {stage.number} {stage.name}: {labels[stage.status]}"
        lines.append(f"  {title}")
        for s in stage.settings:
            label = f"{(s.attribute or s.setting).ljust(name_width)}  {f'[{s.setting}]'.ljust(tag_width)}"
            lines.append(f"    {label}  {_render_change(s)}".rstrip())
    lines += [f"  warning: {w}" for w in plan.warnings]
    if plan.reboot:
        lines.append(f"  reboot: {plan.reason}")
        how = "computed from the BMC's registry" if plan.mode == "registry" else (
            "the profile's stage order: the BMC gives no dependencies"
        )
        lines.append(f"  to compliance: {plan.expected_reboots()} reboot(s) (passes {', '.join(plan.unapplied)}; {how})")
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
