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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ccfactory.config import NodeConfig
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


@dataclass
class CheckContext:
    """What a check may use: the node's config and read-only commands on the node.

    ``fleet`` (optional) maps every host name of the inventory to its ``FleetHost``, for
    checks that need another host's settings (the attestation check needs the KBS host's
    controller-side keys). ``None`` when the caller did not provide it; such checks then
    fail with a hint instead of guessing.
    """

    cfg: NodeConfig
    run: Runner
    data: dict = field(default_factory=dict)  # the host's raw inventory data (stage-specific keys)
    cache: dict = field(default_factory=dict)
    fleet: Mapping[str, FleetHost] | None = None

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
            command = fact.command() if callable(fact.command) else fact.command
            out = self.run(command)
            if out.rc != 0:
                raise RuntimeError(f"{fact_cls.__name__} command failed ({out.rc}): {out.stderr.strip()[:200]}")
            lines = out.stdout.splitlines()
            return fact.process(lines) if lines else fact_cls.default()

        return self.once(f"fact:{fact_cls.__module__}.{fact_cls.__name__}", compute)


def fleet_of(hosts: Iterable) -> dict[str, FleetHost]:
    """``FleetHost`` of every pyinfra ``Host`` (e.g. ``state.inventory`` or ``host.inventory``).

    Hosts whose data does not validate are left out (the inventory was validated before
    any check runs; this only keeps one odd host from hiding the others). The result is
    kept on a pyinfra ``Inventory`` object, so calling this once per host stays cheap.
    """
    from ccfactory.config import InventoryError, node_config

    cached = getattr(hosts, "_ccfactory_fleet", None)
    if cached is not None:
        return cached
    fleet: dict[str, FleetHost] = {}
    for host in hosts:
        try:
            fleet[host.name] = FleetHost(cfg=node_config(host), data=host.data.dict())
        except InventoryError:
            continue
    try:
        hosts._ccfactory_fleet = fleet  # type: ignore[attr-defined]
    except AttributeError:  # a list or other plain iterable: no cache
        pass
    return fleet


@dataclass(frozen=True)
class Outcome:
    status: str
    detail: str
    hint: str = ""
    simulated: str = ""


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


REGISTRY: dict[str, Check] = {}


def check(check_id: str, *, stage: str, applies: Callable[[NodeConfig], bool] = lambda cfg: True):
    """Register a check under a stable id (``<stage>.<name>``)."""

    def register(func: Callable[[CheckContext], Outcome]) -> Callable[[CheckContext], Outcome]:
        if check_id in REGISTRY:
            raise ValueError(f"check {check_id} registered twice")
        REGISTRY[check_id] = Check(check_id, stage, func, applies, (func.__doc__ or "").strip().split("\n")[0])
        return func

    return register


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


def run_checks(ctx: CheckContext, stages: tuple[str, ...] | None = None) -> list[CheckResult]:
    return [run_check(c, ctx) for c in REGISTRY.values() if stages is None or c.stage in stages]
