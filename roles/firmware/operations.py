"""Firmware operations: BIOS stages through the host's BMC, one reboot each, then the TEE verified.

The Redfish work runs on the controller, inside ``FunctionCommand``s at execute time, so a
``--dry`` run or pyinfra's change detection never writes: during Prepare the operations
only *read* the BMC (once per host) and print the plan. One operation is one **pass**:

1. read the BMC and plan (``ccfactory.firmware.driver``): nothing to do -> "No changes";
2. PATCH the first stage not applied (values already pending are not sent again; Dell:
   the BIOS configuration job, created if a re-run finds values pending without one);
3. the shared reboot mechanism (``ccfactory.operations.reboot``): the trigger resets the
   system through the BMC and waits for the BMC to report it On, then the mechanism waits
   for a new boot id over SSH (``reboot_timeout``, progress lines while waiting);
4. Dell: the job must end Completed; then the BMC is read again and the stage must read
   back applied, else the host fails with what the BMC reports (no second PATCH, no loop).

The role declares as many passes as the profile can need (stages, plus a follow-up for
each stage with a one-shot that the BMC locks until its trigger is applied); a pass with
nothing left to do changes nothing. ``_parallel`` (``reboot_batch_size``) on the passes
keeps at most N hosts in a pass, so at most N reboot at once. A one-shot deferred to a
follow-up pass is recorded on the node (``MARKER``) before the reset, so a run
interrupted between the two still fires it, and only once.

``tee_verified`` ends the stage: ``TeeHostStatus`` over SSH must show the BIOS side of the
TEE on (the checks a BIOS fixes); whether the TEE is fully active, or what the host stage
still has to do, is reported with the fact's hints. It also prints the per-host figures:
stages, reboots, Redfish requests and time.
"""

from __future__ import annotations

import logging
import shlex
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyinfra import host, state
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.context import ContextObject
from pyinfra.facts.files import FileContents

from ccfactory.clients.redfish import RedfishClient, RedfishError
from ccfactory.facts.tee import TeeHostStatus
from ccfactory.firmware import render_plan
from ccfactory.firmware.driver import ClientFactory, FirmwareDriver, RunReport, Step
from ccfactory.firmware.errors import FirmwareError
from ccfactory.firmware.profile import BiosProfile
from ccfactory.operations import reboot
from ccfactory.parsers.checks import CheckResult
from ccfactory.parsers.tee import TeeStatus

if TYPE_CHECKING:
    from ccfactory.model import BmcConfig, NodeConfig

logger = logging.getLogger("pyinfra")

MARKER = "/var/lib/ccfactory/firmware/one-shot-due"  # one-shots this run deferred, until sent

# Tests (and OEM tooling) may replace how a host's Redfish client is made.
CLIENT_FACTORY: ClientFactory | None = None


def passes_needed(profile: BiosProfile) -> int:
    """Operations the role declares: an upper bound of the passes the planner can compute.

    Each pass applies at least one setting (the planner refuses a state where none can be
    written), and a one-shot locked until its trigger is applied may take one more, so
    the bound is the number of settings with a value. Passes not needed are no-ops.

    Example::

        >>> from ccfactory.firmware import bios_profile_for
        >>> passes_needed(bios_profile_for("hpe", "tdx"))
        9
    """
    return sum(1 for _, setting in profile.settings().values() if setting.managed)


# ------------------------------------------------------------------ one host's run


@dataclass
class Preview:
    """What Prepare learned (read only): for ``--dry`` and change detection."""

    passes: int = 0
    text: str = ""
    error: str | None = None


class FirmwareRun:
    """One host in one pyinfra run: its driver (one Redfish session), marker state, figures."""

    def __init__(self, target_host: Any, cfg: NodeConfig):
        assert cfg.bmc is not None
        self.cfg = cfg
        self._host = weakref.ref(target_host)  # the key of _RUNS: a strong reference would keep it forever
        self.driver = FirmwareDriver(
            cfg.bmc, cfg.tee, host=target_host.name, client_factory=CLIENT_FACTORY or _default_factory, log_fn=self.log
        )
        self.report = RunReport()
        self.preview: Preview | None = None
        self.due: frozenset[str] | None = None  # one-shots due, as on the node's marker
        self.job_id: str | None = None
        self.reset_kind = ""  # the ResetType of this pass's reset
        self.stage_started = 0.0
        self.finished = False
        self.executing = False
        self.compliant = False  # known compliant in this run: later passes need not read the BMC

    @property
    def host(self) -> Any:
        return self._host()

    def log(self, message: str, level: str = "info") -> None:
        func = logger.warning if level == "warning" else logger.info
        self.host.log_styled(message, log_func=func, **({"fg": "yellow"} if level == "warning" else {}))

    def fail(self, message: str) -> bool:
        """Fail this host with ``message`` (closing the BMC session first)."""
        self.host.log_styled(f"ccfactory: firmware: {message}", fg="red", log_func=logger.error)
        self.finish(failed=True)
        return False

    def finish(self, *, failed: bool = False) -> str:
        if not self.finished:
            self.finished = True
            self.driver.close()
            summary = self.report.summary(self.driver.requests)
            if self.report.planning_requests:
                summary += f" (of which {self.report.planning_requests} while planning)"
            self.log(summary + (" - FAILED" if failed else ""))
            return summary
        return self.report.summary(self.driver.requests)

    def due_from(self, marker: list[str] | None) -> frozenset[str]:
        names = {line.strip() for line in marker or () if line.strip() and not line.startswith("#")}
        known = self.driver.known_due(names)
        if names - known:
            self.log(f"{MARKER} names {', '.join(sorted(names - known))}, not one-shots of this profile: ignored", "warning")
        return known

    # -- Prepare (read only)

    def plan_preview(self, due: frozenset[str]) -> Preview:
        if self.preview is None:
            try:
                plan, _ = self.driver.read_plan(due)
                passes = plan.expected_reboots()
                text = render_plan(plan)
                if plan.compliant:
                    text += "\n  no change, no reboot"
                else:
                    text += f"\n  would run {passes} BIOS pass(es), each one PATCH and one reboot (touching nothing now)"
                self.preview = Preview(passes, text)
            except Exception as exc:  # noqa: BLE001 - reported, and the pass will fail when it runs
                self.preview = Preview(error=_message(exc))
            finally:
                self.driver.close()
                self.report.planning_requests = self.driver.requests
            if self.preview.error:
                self.log(f"firmware plan: cannot plan this host: {self.preview.error}", "warning")
            else:
                self.log(f"firmware plan:\n{self.preview.text}")
        return self.preview

    # -- Execute (FunctionCommands)

    def apply(self, state: Any, host: Any, step: Step) -> bool:  # noqa: ARG002 - FunctionCommand passes state, host by name
        self.stage_started = time.monotonic()
        try:
            self.job_id = self.driver.apply(step)
        except Exception as exc:  # noqa: BLE001 - every error fails this host, clearly
            return self.fail(f"{step.title}: {_message(exc)}")
        what = "PATCH" if step.plan.patch else "nothing to PATCH (already pending)"
        job = f"; BIOS job {self.job_id}" if self.job_id else ""
        self.log(f"{step.title}: {what}: {step.describe()}{job}")
        if self.job_id:
            self.report.jobs.append(self.job_id)
        return True

    def trigger(self, state: Any, host: Any) -> bool:  # noqa: ARG002
        """The reboot mechanism's trigger: reset through the BMC, wait for it to report On."""
        timeout = float(self.cfg.reboot.timeout)
        try:
            kind = self.reset_kind = self.driver.reset()
            self.report.reboots += 1
            self.log(f"reset through the BMC ({kind}); waiting for the BMC, then for SSH (up to {int(timeout)}s each)")
            waited = self.driver.wait_for_bmc(timeout)
        except Exception as exc:  # noqa: BLE001
            return self.fail(_message(exc))
        self.log(f"the BMC reports the system On ({waited:.0f}s)")
        return True

    def force_reset(self, host: Any) -> str | None:  # noqa: ARG002 - the reboot mechanism passes the host
        """The reboot mechanism's escalation: the node still runs its old boot long after a
        GracefulRestart (an OS that ignores ACPI), so reset it again with ForceRestart.
        None when this pass's reset was a forced one already (nothing harder to do)."""
        if self.reset_kind != "GracefulRestart":
            return None
        self.reset_kind = kind = self.driver.reset(force=True)
        self.report.escalations += 1
        return f"{kind} through the BMC"  # the reboot mechanism goes on waiting for the new boot

    def verify(self, state: Any, host: Any, step: Step) -> bool:  # noqa: ARG002
        try:
            outcome = self.driver.verify(step, self.job_id, job_timeout=float(self.cfg.reboot.timeout))
        except Exception as exc:  # noqa: BLE001
            return self.fail(_message(exc))
        self.due = outcome.due
        took = time.monotonic() - self.stage_started
        self.report.stages.append(step.stage + (" one-shot" if step.plan.firing else ""))
        self.report.stage_seconds.append(took)
        job = f", job {outcome.job.job_id} {outcome.job.state}" if outcome.job else ""
        read = f": {', '.join(outcome.applied)}" if outcome.applied else ""
        nxt = ""
        if outcome.plan is not None and outcome.plan.compliant:
            nxt = "; every setting applied"
            self.compliant = True
        elif outcome.plan is not None and outcome.plan.firing:
            nxt = f"; next: one-shot {', '.join(outcome.plan.firing)}, deferred until {step.stage!r} was applied"
        elif outcome.plan is not None:
            nxt = f"; next: pass {outcome.plan.stage!r}"
        self.log(f"{step.title} applied and verified after the reset ({took:.1f}s{job}){read}{nxt}")
        self.job_id = None
        return True


_RUNS: weakref.WeakKeyDictionary[Any, FirmwareRun] = weakref.WeakKeyDictionary()


def _real(target_host: Any) -> Any:
    """The ``Host`` itself: pyinfra's ``host`` is a context proxy that hashes like whichever
    host is current, so it must never be a dictionary key (stale entries, reused ids)."""
    return target_host._get_module() if isinstance(target_host, ContextObject) else target_host


def firmware_run(target_host: Any, cfg: NodeConfig) -> FirmwareRun:
    """The run of ``target_host`` in this pyinfra run (a ``Host`` belongs to one state)."""
    real = _real(target_host)
    run = _RUNS.get(real)
    if run is None:
        run = _RUNS[real] = FirmwareRun(real, cfg)
    return run


def _default_factory(bmc: BmcConfig, name: str) -> RedfishClient:
    return RedfishClient.from_config(bmc, host=name)


def _message(exc: BaseException) -> str:
    """A host failure message: ours and the client's name the BMC and the fix; never a secret
    (the client redacts its own). Unexpected errors keep their type for the bug report."""
    if isinstance(exc, (FirmwareError, RedfishError)):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _never(state: Any, host: Any) -> bool:  # noqa: ARG001 - only yielded in Prepare, never run
    return True


def _fail_run(state: Any, host: Any, run: FirmwareRun, message: str) -> bool:  # noqa: ARG001
    return run.fail(message)


def _marker_command(due: Iterable[str]) -> StringCommand:
    names = sorted(due)
    if not names:
        return StringCommand(f"rm -f {MARKER}")
    body = "".join(f"{n}\n" for n in names)
    directory = MARKER.rsplit("/", 1)[0]
    return StringCommand(f"mkdir -p {directory} && printf %s {shlex.quote(body)} > {MARKER}")


# ------------------------------------------------------------------ operations


@operation(is_idempotent=True)
def bios_stage(index: int, passes: int, cfg: NodeConfig):
    """The next BIOS stage of the host's profile applied through its BMC, with one reboot.

    + index: this pass's number (1-based); the role declares ``passes`` of them
    + passes: how many the profile can need (``passes_needed``)
    + cfg: the host's ``NodeConfig`` (BMC, TEE, reboot policy)

    Does nothing once every stage is applied. Pass ``_parallel`` (``reboot.rolling``) so
    that at most ``reboot_batch_size`` hosts are in a pass, i.e. rebooting, at once.

    **Example:**

    .. code:: python

        for i in host.loop(range(1, n + 1)):
            firmware.bios_stage(name=f"BIOS pass {i}", index=i, passes=n, cfg=cfg,
                                **reboot.rolling(cfg.reboot.batch_size), _sudo=True)
    """
    run = firmware_run(host, cfg)
    if not state.is_executing:
        if run.preview is None:
            run.due = run.due_from(host.get_fact(FileContents, path=MARKER))
        preview = run.plan_preview(run.due or frozenset())
        if preview.error:
            if index == 1:  # would fail: shown as a change, and the run will say why
                yield FunctionCommand(_never, (), {})
            return
        if index <= preview.passes:
            yield FunctionCommand(_never, (), {})
        else:
            host.noop(f"BIOS pass {index}: not needed (plan: {preview.passes} pass(es))")
        return

    if not run.executing:  # first pass of Execute: the node's marker as it is now
        run.executing = True
        run.report = RunReport(planning_requests=run.report.planning_requests)
        run.due = run.due_from(host.get_fact(FileContents, path=MARKER))
    if run.finished or run.due is None:
        return
    if run.compliant:
        host.noop("BIOS compliant (read by an earlier pass of this run)")
        return
    try:
        step = run.driver.next_step(run.due, done=len(run.report.stages))
    except Exception as exc:  # noqa: BLE001 - never crash the run: fail this host
        yield FunctionCommand(_fail_run, (run, _message(exc)), {})
        return
    if step is None:
        run.compliant = True
        host.noop(f"BIOS compliant: every setting of {run.driver.profile.label} applied")
        return
    before = run.due
    yield FunctionCommand(run.apply, (step,), {})
    if step.plan.deferred_one_shots:
        # before the reset: a run interrupted from here on still sends them, once
        yield _marker_command(before | set(step.plan.deferred_one_shots))
        before = before | set(step.plan.deferred_one_shots)
    yield from reboot.rebooted._inner(
        reason=step.plan.reason,
        timeout=cfg.reboot.timeout,
        trigger=run.trigger,
        escalation=reboot.Escalation(after=cfg.reboot.graceful_timeout, action=run.force_reset),
    )
    yield FunctionCommand(run.verify, (step,), {})
    if run.due != before:
        yield _marker_command(run.due)


@operation(is_idempotent=True)
def tee_verified(cfg: NodeConfig, tee_name: str, bios_checks: list[str], host_stage_hint: str = ""):
    """The BIOS side of the host's TEE is on, proven on the running kernel (changes nothing).

    + cfg: the host's ``NodeConfig``
    + tee_name: for messages (``AMD SEV-SNP``)
    + bios_checks: ``TeeHostStatus`` checks whose failure means the BIOS is wrong
    + host_stage_hint: what to run when the rest (kernel side) is not done yet

    Fails the host when a BIOS check fails (with the fact's hint). Reports "active", or
    which kernel-side checks the host stage still has to fix. Prints the host's figures.
    """
    if not state.is_executing:
        host.noop(f"{tee_name}: verified on the node after the BIOS stages")
        return
    status = host.get_fact(TeeHostStatus)
    run = _RUNS.get(_real(host))
    if run is not None:
        run.finish()
    verdict = judge_tee(status, cfg.tee, bios_checks)
    if verdict.bios_failed:
        message = (
            f"{tee_name} is not enabled by the BIOS on the running node although the BMC reports every stage "
            "applied:\n  - " + "\n  - ".join(str(c) for c in verdict.bios_failed)
        )
        yield FunctionCommand(_fail, (message,), {})
        return
    if verdict.active:
        host.log_styled(f"{tee_name} active", log_func=logger.info)
        return
    rest = "\n  - ".join(str(c) for c in verdict.others)
    host.log_styled(
        f"{tee_name}: the BIOS side is on ({', '.join(verdict.bios_ok) or 'no BIOS check failed'}); "
        f"not active yet, for reasons the BIOS does not decide{host_stage_hint}:\n  - {rest}",
        fg="yellow",
        log_func=logger.warning,
    )


def _fail(state: Any, host: Any, message: str) -> bool:  # noqa: ARG001 - FunctionCommand passes them
    host.log_styled(f"ccfactory: firmware: {message}", fg="red", log_func=logger.error)
    return False


@dataclass(frozen=True)
class TeeVerdict:
    active: bool
    bios_failed: tuple[CheckResult, ...]
    bios_ok: tuple[str, ...]
    others: tuple[CheckResult, ...]  # failed checks the BIOS does not decide


def judge_tee(status: TeeStatus, tee: str, bios_checks: Iterable[str]) -> TeeVerdict:
    """Split the TEE's failed checks into BIOS causes and the rest (pure).

    Example::

        judge_tee(host.get_fact(TeeHostStatus), "snp", ["cpu_sev_snp", "rmp_table"]).bios_failed
    """
    names = set(bios_checks)
    tee_status = getattr(status, tee)
    checks = tee_status.checks
    bios_failed = tuple(c for c in checks if c.name in names and c.failed)
    bios_ok = tuple(c.name for c in checks if c.name in names and c.ok is True)
    others = tuple(c for c in checks if c.failed and c.name not in names)
    if not tee_status.active and not others and not bios_failed:
        others = (CheckResult(f"{tee}_active", False, "not active and no check says why", "read the kernel log"),)
    return TeeVerdict(bool(tee_status.active), bios_failed, bios_ok, others)


__all__ = [
    "CLIENT_FACTORY",
    "MARKER",
    "FirmwareRun",
    "TeeVerdict",
    "bios_stage",
    "firmware_run",
    "judge_tee",
    "passes_needed",
    "tee_verified",
]

