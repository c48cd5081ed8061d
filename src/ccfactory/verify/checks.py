"""One library of named, graded checks, shared by ``deploy/verify.py`` and the testinfra suite.

A check is a function of a ``CheckContext``: the node's validated config and a way to
run a read-only command on it. Both pyinfra hosts and testinfra hosts provide that, so
the same check backs the readiness report and ``pytest --pyargs ccfactory.verify``.
A check that raises is reported as an ``error`` of that check, never a crash of the run.

Example::

    @check("host.iommu_on", stage="host", applies=lambda cfg: cfg.tee != "none")
    def iommu_on(ctx):
        groups = ctx.run("ls /sys/kernel/iommu_groups | wc -l").stdout.strip()
        if groups == "0":
            return fail("no IOMMU groups", hint="enable IOMMU in BIOS and on the kernel command line")
        return ok(f"{groups} IOMMU groups")
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ccfactory.model import NodeConfig
from ccfactory.verify.report import CheckResult


@dataclass(frozen=True)
class CommandOutput:
    rc: int
    stdout: str
    stderr: str = ""


class Runner(Protocol):
    def __call__(self, command: str) -> CommandOutput: ...


@dataclass(frozen=True)
class FleetHost:
    """Another host of the same inventory, as a check may read it (controller side only)."""

    cfg: NodeConfig
    data: Mapping[str, Any] = field(default_factory=dict)


def fact_command(fact_cls) -> str:
    """The shell command of a pyinfra fact that takes no arguments (what ``CheckContext.fact`` runs)."""
    fact = fact_cls()
    return fact.command() if callable(fact.command) else fact.command


# ------------------------------------------------------------------ batching
#
# The checks of one node declare the read-only commands they will run (``@check(facts=..., commands=...)``);
# ``run_checks`` runs them all as ONE remote shell command (``batch_script``) and hands each
# check the output of its own command (stdout, stderr and exit status, as if it had run alone),
# so a node costs one SSH round trip instead of one per command. Each command runs in its own
# ``sh -c`` (a command that fails, exits or does not parse affects only itself). When the batch
# cannot be used as a whole (connection lost, output cut short), nothing is taken from it and
# every check runs its own commands as before.

BATCH_MARKER = "### ccfactory-verify-batch"


def batch_script(commands: list[str], nonce: str) -> str:
    """One shell script that runs ``commands`` in order and prints, per command, its stdout,
    stderr and exit status between marker lines that carry ``nonce`` (so no command's own
    output, ccfactory's ``### ccfactory:`` sections included, can be taken for a marker).

    A part that does not end with a newline gets one, so the lines read back are exactly the
    lines the command printed (pyinfra and testinfra split output the same way).
    """
    marker = f"{BATCH_MARKER}-{nonce}"
    q = shlex.quote
    lines = [
        'T=$(mktemp -d 2>/dev/null) || { echo "mktemp failed" >&2; exit 97; }',
        "trap 'rm -rf \"$T\"' EXIT",
        'nl_end() { if [ -s "$1" ] && [ "$(tail -c 1 "$1" | wc -l)" -eq 0 ]; then echo; fi; }',
    ]
    for i, command in enumerate(commands):
        lines += [
            f'sh -c {q(command)} >"$T/o" 2>"$T/e" </dev/null; r=$?',
            f"echo {q(f'{marker} out {i}')}", 'cat "$T/o"', 'nl_end "$T/o"',
            f"echo {q(f'{marker} err {i}')}", 'cat "$T/e"', 'nl_end "$T/e"',
            f'echo "{marker} rc {i} $r"',
        ]
    lines.append(f"echo {q(f'{marker} end {len(commands)}')}")
    return "\n".join(lines) + "\n"


def parse_batch(stdout: str, nonce: str, count: int) -> list[CommandOutput] | None:
    """The ``count`` outputs of ``batch_script``'s commands, or None unless every one is complete."""
    marker = f"{BATCH_MARKER}-{nonce} "
    out: list[list[str]] = [[] for _ in range(count)]
    err: list[list[str]] = [[] for _ in range(count)]
    rcs: dict[int, int] = {}
    target: list[str] | None = None
    ended = False
    for line in stdout.split("\n"):
        if line.startswith(marker):
            kind, _, rest = line[len(marker):].partition(" ")
            index, _, value = rest.partition(" ")
            if not index.isdigit():
                return None
            i = int(index)
            if kind == "end":
                ended = i == count
                break
            if i >= count:
                return None
            if kind == "out":
                target = out[i]
            elif kind == "err":
                target = err[i]
            elif kind == "rc" and value.strip().lstrip("-").isdigit():
                rcs[i] = int(value)
                target = None
            else:
                return None
        elif target is not None:
            target.append(line)
    if not ended or len(rcs) != count:
        return None
    return [CommandOutput(rcs[i], "\n".join(out[i]), "\n".join(err[i])) for i in range(count)]


@dataclass
class CheckContext:
    """What a check may use: the node's config and read-only commands on the node.

    ``fleet`` (optional) maps every host name of the inventory to its ``FleetHost``, for
    checks that need another host's settings (the attestation check needs the KBS host's
    controller-side keys). ``None`` when the caller did not provide it; such checks then
    fail with a hint instead of guessing.

    ``run`` answers a command that ``prefetch`` already ran in a batch from that batch (once:
    the next identical command runs again); any other command runs on the node.
    """

    cfg: NodeConfig
    run: Runner
    data: dict = field(default_factory=dict)  # the host's raw inventory data (stage-specific keys)
    cache: dict = field(default_factory=dict)
    fleet: Mapping[str, FleetHost] | None = None
    prefetched: dict = field(default_factory=dict)  # command -> CommandOutput from a batch
    remote_commands: int = 0  # commands sent to the node through this context (a batch counts once)

    def __post_init__(self) -> None:
        runner = self.run
        self.runner = runner

        def run(command: str) -> CommandOutput:
            hit = self.prefetched.pop(command, None)
            if hit is not None:
                return hit
            self.remote_commands += 1
            return runner(command)

        self.run = run

    def prefetch(self, commands: Iterable[str]) -> int:
        """Run ``commands`` as one remote command; later ``run`` calls of the same commands get
        these outputs. Returns how many were fetched (0 when the batch could not be used)."""
        wanted = [c for c in dict.fromkeys(commands) if c not in self.prefetched]
        if len(wanted) < 2:  # one command alone needs no batch
            return 0
        nonce = secrets.token_hex(8)
        self.remote_commands += 1
        try:
            out = self.runner(batch_script(wanted, nonce))
        except Exception:  # noqa: BLE001 - the checks then run their own commands and report what fails
            return 0
        results = parse_batch(out.stdout, nonce, len(wanted)) if out.rc == 0 else None
        if results is None:
            return 0
        self.prefetched.update(zip(wanted, results))
        return len(wanted)

    def once(self, key: str, compute: Callable[[], object]):
        """Compute shared evidence (a parsed fact) once per node, for all checks."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def fact(self, fact_cls):
        """Run a pyinfra fact's own command through ``run`` and its own parser, once per node.

        Checks therefore see a node exactly as the stage's deploy does.
        """

        def compute():
            fact = fact_cls()
            command = fact_command(fact_cls)
            out = self.run(command)
            if out.rc != 0:
                raise RuntimeError(f"{fact_cls.__name__} command failed ({out.rc}): {out.stderr.strip()[:200]}")
            lines = out.stdout.splitlines()
            return fact.process(lines) if lines else fact_cls.default()

        return self.once(f"fact:{fact_cls.__module__}.{fact_cls.__name__}", compute)


@dataclass(frozen=True)
class Outcome:
    status: str
    detail: str
    hint: str = ""
    simulated: str = ""


# What the lab simulates, named in a check's result on a lab node (the report marks it simulated).
LAB_KERNEL = "the lab's nodes share the lab machine's kernel; SNP/TDX state is simulated from the BMC's BIOS state"
LAB_GPU = "GPUs and gpu-admin-tools are lab stand-ins (sysfs tree and state file)"


def lab_note(ctx: CheckContext, what: str) -> str:
    """``what`` on a lab node (the result is marked simulated), else nothing."""
    return what if ctx.cfg.lab else ""


def tee_node(cfg) -> bool:
    """A check that applies to SEV-SNP and TDX hosts."""
    return cfg.tee in ("snp", "tdx")


def gpu_node(cfg) -> bool:
    """A check that applies to hosts with GPUs in the inventory."""
    return cfg.has_gpus


def ok(detail: str, simulated: str = "") -> Outcome:
    return Outcome("pass", detail, simulated=simulated)


def fail(detail: str, hint: str, simulated: str = "") -> Outcome:
    return Outcome("fail", detail, hint, simulated)


@dataclass(frozen=True)
class Check:
    id: str
    stage: str
    func: Callable[[CheckContext], Outcome]
    applies: Callable[[NodeConfig], bool]
    description: str
    # the read-only commands the check runs on the node that can be known before it runs
    # (batched by run_checks); a command it does not declare still runs, on its own
    reads: Callable[[CheckContext], Iterable[str]] | None = None
    # long node-side work with no dependence on the other checks: run_checks runs it alongside them
    background: bool = False


REGISTRY: dict[str, Check] = {}


def _reads(facts: tuple = (), commands: Callable[[CheckContext], Iterable[str]] | None = None):
    if not facts and commands is None:
        return None

    def reads(ctx: CheckContext) -> list[str]:
        return [fact_command(f) for f in facts] + (list(commands(ctx)) if commands is not None else [])

    return reads


def check(check_id: str, *, stage: str, applies: Callable[[NodeConfig], bool] = lambda cfg: True,
          facts: tuple = (), commands: Callable[[CheckContext], Iterable[str]] | None = None):  # fmt: skip
    """Register a check under a stable id (``<stage>.<name>``).

    ``facts`` (fact classes the check reads with ``ctx.fact``) and ``commands`` (a function of
    the context giving other commands it runs) declare what ``run_checks`` may batch.
    """

    def register(func: Callable[[CheckContext], Outcome]) -> Callable[[CheckContext], Outcome]:
        if check_id in REGISTRY:
            raise ValueError(f"check {check_id} registered twice")
        REGISTRY[check_id] = Check(check_id, stage, func, applies, (func.__doc__ or "").strip().split("\n")[0],
                                   reads=_reads(facts, commands))  # fmt: skip
        return func

    return register


def declare(check_id: str, *, facts: tuple = (), commands: Callable[[CheckContext], Iterable[str]] | None = None,
            background: bool | None = None) -> None:  # fmt: skip
    """Declare the batchable reads (and ``background``) of a check registered elsewhere."""
    import dataclasses

    item = REGISTRY[check_id]
    changes: dict[str, Any] = {}
    if facts or commands is not None:
        changes["reads"] = _reads(facts, commands)
    if background is not None:
        changes["background"] = background
    REGISTRY[check_id] = dataclasses.replace(item, **changes)


def run_check(item: Check, ctx: CheckContext) -> CheckResult:
    """Run one check; not applicable, pass, fail, or error (with the exception text)."""
    if not item.applies(ctx.cfg):
        return CheckResult(check=item.id, stage=item.stage, status="n/a", detail="not applicable to this node")
    try:
        outcome = item.func(ctx)
    except Exception as exc:  # noqa: BLE001 - a broken check must not stop the others
        return CheckResult(
            check=item.id, stage=item.stage, status="error", detail=f"check raised {type(exc).__name__}: {exc}",
            hint="this is a ccfactory bug or an unexpected node state; the other checks still ran",
        )
    return CheckResult(
        check=item.id, stage=item.stage, status=outcome.status, detail=outcome.detail,
        hint=outcome.hint, simulated=outcome.simulated,
    )


def batched_reads(items: Iterable[Check], ctx: CheckContext) -> list[str]:
    """The commands the applicable ``items`` declare, in check order, without duplicates."""
    commands: list[str] = []
    for item in items:
        if item.reads is None or not item.applies(ctx.cfg):
            continue
        try:
            commands += item.reads(ctx)
        except Exception:  # noqa: BLE001, S112 - the check itself reports the problem when it runs
            continue
    return list(dict.fromkeys(commands))


def run_checks(ctx: CheckContext, stages: tuple[str, ...] | None = None) -> list[CheckResult]:
    """Run every check (of ``stages``) on one node: their declared reads first, as one remote
    command (``CheckContext.prefetch``), then each check in registry order; a ``background``
    check runs alongside the others (a greenlet: it waits on the node, they go on). Results
    come back in registry order whatever finished first."""
    selected = [c for c in REGISTRY.values() if stages is None or c.stage in stages]
    ctx.prefetch(batched_reads(selected, ctx))
    results: dict[str, CheckResult] = {}
    pending = []
    background = [c for c in selected if c.background and c.applies(ctx.cfg)]
    if background:
        import gevent

        pending = [(c, gevent.spawn(run_check, c, ctx)) for c in background]
    for item in selected:
        if item not in background:
            results[item.id] = run_check(item, ctx)
    for item, greenlet in pending:
        greenlet.join()
        results[item.id] = greenlet.value if greenlet.successful() else CheckResult(
            check=item.id, stage=item.stage, status="error", detail=f"check raised {type(greenlet.exception).__name__}: "
            f"{greenlet.exception}", hint="this is a ccfactory bug or an unexpected node state; the other checks still ran")  # fmt: skip
    return [results[c.id] for c in selected]
