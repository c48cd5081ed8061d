"""The controller-side half of one BIOS stage on one host: plan, PATCH, reset, verify.

pyinfra-free, so it is tested against the lab's BMC emulator without SSH. The firmware
role (``ccfactory.roles.firmware.operations``) calls it between the SSH steps of the shared
reboot mechanism::

    driver = FirmwareDriver(cfg.bmc, cfg.tee, host="gpu-01")
    step = driver.next_step(due=())          # read only; None when compliant
    driver.apply(step)                       # PATCH (Dell: + config job)
    driver.reset(); driver.wait_for_bmc(1800)        # the reboot trigger
    #   ... the reboot mechanism waits for a new boot id over SSH ...
    outcome = driver.verify(step)            # Dell job, re-read, stage applied, else FirmwareVerifyError
    driver.close(); driver.requests          # Redfish requests sent, retries included

Rules (issue 4): only the first stage not applied is patched; values already pending are
not patched again; on Dell the pending values need a scheduled BIOS configuration job
(created when a re-run finds values pending and no job); after the reset the stage must
read back *applied*, otherwise the host fails with what the BMC reports (no second
PATCH, no loop). A one-shot the BMC locks until its trigger is applied is *deferred*:
``outcome.due`` carries it to the next pass of the same run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ccfactory.clients.redfish import (
    BiosSnapshot,
    JobStatus,
    RedfishAuthError,
    RedfishClient,
    RedfishError,
    RedfishTLSError,
)
from ccfactory.firmware.errors import FirmwareError, PlanError, ResolutionError
from ccfactory.firmware.plan import FirmwarePlan, SettingState, plan_firmware
from ccfactory.firmware.profile import BiosProfile, bios_profile_for
from ccfactory.firmware.resolve import AttributeRegistry, resolve_settings

if TYPE_CHECKING:
    from ccfactory.model import BmcConfig

log = logging.getLogger("ccfactory.firmware")

ClientFactory = Callable[["BmcConfig", str], RedfishClient]
Logger = Callable[[str, str], None]  # (message, level: "info" | "warning")

PROGRESS_EVERY = 30.0  # seconds between "still waiting" lines (bare metal takes minutes)
JOB_POLL = 5.0


class FirmwareVerifyError(FirmwareError):
    """After the reset, the BMC does not report the stage applied (or a job failed)."""


def default_client(bmc: BmcConfig, host: str) -> RedfishClient:
    """A client for ``bmc`` with its own retries; the password is read here, at use."""
    return RedfishClient.from_config(bmc, host=host)


def reading_client(bmc: BmcConfig, host: str) -> RedfishClient:
    """``default_client`` that keeps its HTTPS connection open: one TLS handshake and one
    Redfish session for a short burst of reads (``ccfactory firmware plan``)."""
    return RedfishClient.from_config(bmc, host=host, keep_alive=True)


@dataclass(frozen=True)
class Step:
    """One pass: the plan read now and what it needs from the BMC."""

    plan: FirmwarePlan
    snapshot: BiosSnapshot
    due: frozenset[str]  # one-shots deferred by this run (input of the plan)
    job: JobStatus | None = None  # Dell: a BIOS job already scheduled for pending values
    done: int = 0  # passes this run applied before this one (the title counts the run's passes)

    @property
    def stage(self) -> str:
        return self.plan.stage or ""

    @property
    def number(self) -> int:
        return self.done + (self.plan.number or 0)

    @property
    def total(self) -> int:
        return self.done + len(self.plan.passes)

    @property
    def title(self) -> str:
        extra = f" (one-shot {', '.join(self.plan.firing)})" if self.plan.firing else ""
        return f"BIOS pass {self.number}/{self.total} {self.stage!r}{extra}"

    def changes(self) -> list[SettingState]:
        """The settings this pass patches or finds pending."""
        return [s for st in self.plan.stages for s in st.settings if s.action in ("patch", "pending")]

    def describe(self) -> str:
        """``Snp Disabled -> Enabled, CpuMinSevAsid 1 -> 100 (pending)``"""
        parts = []
        for s in self.changes():
            tag = " (already pending)" if s.action == "pending" else ""
            parts.append(f"{s.attribute} {_show(s.current)} -> {_show(s.desired)}{tag}")
        return ", ".join(parts) or "no attribute"


@dataclass(frozen=True)
class Outcome:
    """What ``verify`` found after the reset."""

    plan: FirmwarePlan | None  # the plan read after the reset (compliant, or the next stage); None: see next pass
    due: frozenset[str]  # one-shots still to send in this run
    job: JobStatus | None = None
    applied: tuple[str, ...] = ()  # "Attr=value" of the stage, as read back


@dataclass
class Counters:
    requests_closed: int = 0  # from clients already closed
    clients: int = 0


class FirmwareDriver:
    """One host's BMC for the duration of a run (one Redfish client, reused).

    Example::

        driver = FirmwareDriver(cfg.bmc, "snp", host="gpu-01")
        while (step := driver.next_step()) is not None: ...
    """

    def __init__(
        self,
        bmc: BmcConfig,
        tee: str,
        *,
        host: str,
        client_factory: ClientFactory | None = None,
        log_fn: Logger | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        profile: BiosProfile | None = None,
    ):
        self.bmc = bmc
        self.tee = tee
        self.host = host
        self.profile = profile or bios_profile_for(
            bmc.vendor, tee, extra_dirs=bmc.bios_profile_dirs, overrides=bmc.bios_overrides or None
        )
        self._factory = client_factory or default_client
        self._log = log_fn or (lambda msg, level: getattr(log, level)("%s: %s", host, msg))
        # looked up now, not at import: under pyinfra, gevent has patched time.sleep by then
        self._clock, self._sleep = clock or time.monotonic, sleep or time.sleep
        self._client: RedfishClient | None = None
        self.counters = Counters()

    # -- client

    @property
    def client(self) -> RedfishClient:
        if self._client is None:
            problem = self.bmc.password.problem()
            if problem:
                raise FirmwareError(
                    f"{self.label}: the BMC password is not readable on this controller: {problem}; "
                    f"fix: provide it ({self.bmc.password.describe()}) on the machine that runs ccfactory"
                )
            try:
                self._client = self._factory(self.bmc, self.host)
            except RedfishError as exc:  # the login failed: its requests still count
                self.counters.requests_closed += getattr(exc, "requests_made", 0)
                raise
            self.counters.clients += 1
        return self._client

    @property
    def label(self) -> str:
        return self._client.label if self._client is not None else f"{self.host} (BMC {self.bmc.base_url})"

    @property
    def requests(self) -> int:
        """Redfish requests sent by every client of this driver, retries included."""
        live = self._client.requests_made if self._client is not None else 0
        return self.counters.requests_closed + live

    def close(self) -> None:
        """Log out; a later call opens a new session."""
        client, self._client = self._client, None
        if client is not None:
            self.counters.requests_closed += client.requests_made
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - logging out is best effort
                self._log(f"could not log out of the BMC: {type(exc).__name__}", "warning")

    # -- reading

    def read_plan(self, due: Collection[str] = ()) -> tuple[FirmwarePlan, BiosSnapshot]:
        """Read the BMC and plan (no write)."""
        snapshot = self.client.read_bios()
        return self.plan_for(snapshot, due), snapshot

    def plan_for(self, snapshot: BiosSnapshot, due: Collection[str] = ()) -> FirmwarePlan:
        registry = AttributeRegistry.from_redfish(snapshot.registry, snapshot.attributes)
        resolved = resolve_settings(self.profile, registry, bmc=self.label)
        return plan_firmware(
            self.profile, resolved, snapshot.attributes, snapshot.pending, registry, self.known_due(due),
            cpus=snapshot.processors,
        )

    def known_due(self, due: Collection[str]) -> frozenset[str]:
        """The due one-shots this profile has (a stale marker may name others)."""
        one_shots = {n for n, (_, s) in self.profile.settings().items() if s.one_shot}
        return frozenset(d for d in due if d in one_shots)

    def next_step(self, due: Collection[str] = (), *, done: int = 0) -> Step | None:
        """The pass to do now, or ``None`` when every setting is applied and nothing is due.
        ``done``: passes this run already applied (for the pass numbers in messages)."""
        plan, snapshot = self.read_plan(due)
        if plan.compliant:
            return None
        job = self.client.scheduled_bios_job() if self.client.quirks.job_create_path else None
        return Step(plan, snapshot, self.known_due(due), job, done)

    # -- writing

    def apply(self, step: Step) -> str | None:
        """PATCH the stage's attributes (only those not applied and not pending).

        Dell: the staged values need a scheduled BIOS configuration job; the PATCH with
        ``ApplyTime`` creates it, and a re-run that finds the values pending without a
        job creates one. Returns the job id (Dell) or ``None``.
        """
        client = self.client
        dell = bool(client.quirks.job_create_path)
        if step.plan.patch:
            if dell and step.job is not None:
                raise FirmwareError(
                    f"{client.label}: BIOS configuration job {step.job.job_id} is already {step.job.state} with other "
                    f"staged values, so iDRAC refuses new ones ({step.title} needs {step.describe()}); fix: clear it "
                    "(DellManager.ClearPending on the BIOS settings object, or delete the job) and re-run"
                )
            result = client.apply_bios(step.plan.patch, snapshot=step.snapshot)
            return result.job_id
        if dell:
            if step.job is not None:
                return step.job.job_id
            job_id = client.create_bios_job(step.snapshot.settings_path)
            self._log(f"values pending without a BIOS configuration job: created {job_id}", "info")
            return job_id
        return None

    def reset(self, *, force: bool = False) -> str:
        """Restart the system through the BMC; returns the ResetType used."""
        return self.client.reset(force=force)

    def wait_for_bmc(self, timeout: float, *, poll: float = 2.0) -> float:
        """Poll until the BMC answers and reports the system On; returns the seconds waited.

        A BMC busy with the reset (5xx, no answer) is polled again until ``timeout``;
        wrong credentials or TLS end the wait at once.
        """
        start = self._clock()
        last_progress = start
        state, error = "unknown", ""
        while True:
            try:
                state = self.client.power_state()
                error = ""
                if state == "On":
                    return self._clock() - start
            except (RedfishAuthError, RedfishTLSError):
                raise
            except RedfishError as exc:
                error = str(exc)
            elapsed = self._clock() - start
            if elapsed >= timeout:
                why = f"does not answer ({error})" if error else f"still reports the system {state}"
                raise FirmwareVerifyError(
                    f"{self.label}: {int(elapsed)}s after the reset the BMC {why} (reboot_timeout {int(timeout)}s); "
                    "check the server's console through the BMC (a hung POST), then re-run: nothing is repeated"
                )
            if self._clock() - last_progress >= PROGRESS_EVERY:
                self._log(f"waiting for the BMC to report the system On: {int(elapsed)}s of {int(timeout)}s", "info")
                last_progress = self._clock()
            self._sleep(poll)

    # -- after the reset

    def verify(self, step: Step, job_id: str | None = None, *, job_timeout: float = 1800.0) -> Outcome:
        """Dell job done, then the stage reads back applied; raises ``FirmwareVerifyError``.

        Never patches again: a value the BMC reverted or refused is reported, not retried.
        """
        job = None
        if job_id:
            job = self.client.wait_for_job(job_id, timeout=job_timeout, interval=min(JOB_POLL, job_timeout))
        due_after = (step.due - set(step.plan.firing)) | set(step.plan.deferred_one_shots)
        snapshot = self.client.read_bios()
        wanted = [s for s in step.changes() if not s.one_shot and s.attribute]
        before_ok = [s for s in step.plan.stages[0].settings if s.action == "ok" and s.attribute] if step.plan.stages else []
        try:
            check = self.plan_for(snapshot)  # judged without due one-shots
        except (PlanError, ResolutionError) as exc:
            # a setting no later pass can write: if this pass's own settings read back applied,
            # the next pass reports it with its own context; otherwise this pass failed
            unmet = [s for s in wanted if not _reads(snapshot.attributes, s)]
            if unmet or getattr(exc, "setting", "") in {s.setting for s in wanted}:
                raise FirmwareVerifyError(f"{step.title} after the reset: {exc}") from None
            return Outcome(None, frozenset(due_after), job, ())
        plan = self.plan_for(snapshot, due_after) if due_after else check
        ok_now = {s.setting for s in check.stages[0].settings if s.action == "ok"} if check.stages else set()
        problems = []
        unmet = [s for s in wanted if s.setting not in ok_now]
        if unmet:
            problems.append("the BMC reports " + ", ".join(
                f"{s.attribute}={_show(snapshot.attributes.get(s.attribute or ''))} (wanted {_show(s.desired)}"
                + (f", still pending {_show(snapshot.pending.get(s.attribute or ''))}" if _staged(snapshot, s) else "")
                + ")" for s in unmet))
        regressed = [s for s in before_ok if s.setting not in ok_now]
        if regressed:
            problems.append("applied before, not any more: " + ", ".join(
                f"{s.attribute}={_show(snapshot.attributes.get(s.attribute or ''))} (wanted {_show(s.desired)})"
                for s in regressed))
        for s in step.changes():
            if s.one_shot and s.attribute and str(snapshot.pending.get(s.attribute)) == str(s.desired):
                problems.append(f"one-shot {s.attribute} is still pending: the BMC did not run it at the reset")
        if problems:
            messages = snapshot.failed_messages()
            said = f"; the BMC's last settings result: {'; '.join(messages)}" if messages else ""
            raise FirmwareVerifyError(
                f"{self.label}: {step.title} is not applied after the reset: {'; '.join(problems)}{said}. "
                "Nothing is patched again (no loop): the BIOS kept or restored its old value; check the BMC's log "
                "and the setting's prerequisites (or a BIOS update), then re-run"
            )
        applied = tuple(
            f"{s.attribute}={_show(snapshot.attributes.get(s.attribute or ''))}" for s in wanted
        )
        return Outcome(plan, frozenset(due_after), job, applied)


def _staged(snapshot: BiosSnapshot, s: SettingState) -> bool:
    """A value still staged in the settings object (HPE/Lenovo show a full copy: equal is not staged)."""
    name = s.attribute or ""
    return name in snapshot.pending and str(snapshot.pending[name]) != str(snapshot.attributes.get(name))


def _reads(attributes: Any, s: SettingState) -> bool:
    return str(attributes.get(s.attribute or "")) == str(s.desired)


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


@dataclass
class RunReport:
    """Per-host figures for the operation output (timings, counts)."""

    started: float = field(default_factory=time.monotonic)
    stages: list[str] = field(default_factory=list)
    stage_seconds: list[float] = field(default_factory=list)
    reboots: int = 0
    escalations: int = 0  # GracefulRestarts the OS ignored, followed by a ForceRestart
    jobs: list[str] = field(default_factory=list)
    planning_requests: int = 0

    def summary(self, requests: int, *, now: float | None = None) -> str:
        """One parseable line: counts, requests, this run's time, and each pass's own time
        (PATCH to verified, reboot included; the run also waits for other hosts' passes)."""
        seconds = (now if now is not None else time.monotonic()) - self.started
        follow_ups = sum(1 for s in self.stages if s.endswith(" one-shot"))
        extra = f" + {follow_ups} one-shot pass(es)" if follow_ups else ""
        done = f" ({', '.join(self.stages)})" if self.stages else ""
        per = ""
        if self.stages:
            each = ", ".join(f"{s} {t:.1f}s" for s, t in zip(self.stages, self.stage_seconds, strict=False))
            per = f"; passes {sum(self.stage_seconds):.1f} s: {each}"
        forced = f"; {self.escalations} GracefulRestart(s) ignored, force-restarted" if self.escalations else ""
        return (
            f"ccfactory firmware: {len(self.stages) - follow_ups} stage(s){extra} applied{done}, "
            f"{self.reboots} reboot(s), {requests} Redfish request(s), {seconds:.1f} s{per}{forced}"
        )
