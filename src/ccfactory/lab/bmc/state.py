"""Persistent BMC state (``<lab>/bmc/<node>/state.json``) and the lab's hardware truth.

``state.json`` keeps everything a real BMC keeps across its own reboots: the BIOS
attributes in effect since the last POST (``applied``), the values staged in the
settings object (``pending``), config jobs, power state and boot settings. The
emulator is the only writer while it runs; writes are atomic (temp file + rename)
and serialised by a lock file, so other processes (the node renderer) may read at
any time.

Format (``format`` = 1)::

    {
      "format": 1, "node": "node1", "vendor": "dell", "tee": "snp",
      "applied": {"Sme": "Disabled", "CpuMinSevAsid": 1, ...},   # every attribute, incl. hidden
      "pending": {"Sme": "Enabled"},                               # staged, applied at the next POST
      "pending_apply_time": "OnReset" | null,
      "settings_result": {"time": "2026-...Z" | null, "messages": [Message, ...]},
      "jobs": [{"id": "JID_...", "state": "Scheduled|Running|Completed|Failed", "created": epoch,
                "started": epoch|null, "ended": epoch|null, "attributes": {...}, "message": str}],
      "power": {"state": "On|Off", "since": epoch,
                "op": null | {"kind": "ForceRestart", "boot": true, "started": epoch,
                              "done_at": epoch|null, "done": false, "hang": "", "error": null}},
      "system": {"boot_device": "Hdd", "boot_mode": "UEFI", ...},
      "boots": 3,                                                  # POSTs since the state was created
      "events": [{"time": epoch, "kind": "one_shot|reverted|job_failed|...", ...}]   # last 50
    }

Example::

    >>> platform_features_for(Path("/var/lib/ccfactory-lab"), "node1").snp
    False
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ccfactory.lab.bmc.personality import load_personality
from ccfactory.lab.bmc.spec import BmcSpec, file_stamp, node_dir, read_spec, write_json_atomic
from ccfactory.lab.errors import LabError
from ccfactory.lab.platform import PlatformFeatures

STATE_FORMAT = 1
MAX_EVENTS = 50
Scalar = Union[bool, int, str]


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    state: Literal["Scheduled", "Running", "Completed", "Failed"] = "Scheduled"
    created: float
    started: float | None = None
    ended: float | None = None
    attributes: dict[str, Scalar] = Field(default_factory=dict)
    outcome: Literal["Completed", "Failed"] | None = None  # decided at POST, shown when the reset ends
    message: str = ""


class PowerOp(BaseModel):
    """A reset in progress: done when ``done`` (node mode) or when ``done_at`` has passed."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    boot: bool
    started: float
    done_at: float | None = None
    done: bool = False
    hang: Literal["", "off", "on"] = ""
    error: str | None = None


class Power(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["On", "Off"] = "On"
    since: float = Field(default_factory=time.time)
    op: PowerOp | None = None
    # POST already ran for the node's next boot (the BMC's own reset): the boot hook skips it
    # even when the reset's power action outlived its wait (a slow shutdown), so one reset is
    # one POST however long the node takes to go down
    posted_boot: bool = False


class SettingsResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)


class BmcState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = STATE_FORMAT
    node: str
    vendor: str
    tee: Literal["snp", "tdx", "none"]
    applied: dict[str, Scalar]
    pending: dict[str, Scalar] = Field(default_factory=dict)
    pending_apply_time: str | None = None
    settings_result: SettingsResult = Field(default_factory=SettingsResult)
    jobs: list[Job] = Field(default_factory=list)
    power: Power = Field(default_factory=Power)
    system: dict[str, Any] = Field(default_factory=dict)
    boots: int = 0
    events: list[dict[str, Any]] = Field(default_factory=list)

    def event(self, kind: str, **data: Any) -> None:
        """Record something worth debugging (never a secret); keeps the last 50."""
        self.events.append({"time": round(time.time(), 3), "kind": kind, **data})
        del self.events[:-MAX_EVENTS]


def initial_state(spec: BmcSpec) -> BmcState:
    """Factory state for a spec: every attribute at its default (TEE disabled), power on.

    Example: ``initial_state(spec).applied["Sme"]`` -> ``'Disabled'``
    """
    p = load_personality(spec.vendor)
    return BmcState(
        node=spec.node,
        vendor=spec.vendor,
        tee=spec.tee,
        applied=p.defaults(spec.tee),
        system={"boot_device": "Hdd", "boot_mode": "UEFI", "secure_boot": False},
    )


def state_path(lab_dir: Path, node: str) -> Path:
    return node_dir(lab_dir, node) / "state.json"


class StateStore:
    """Load/save one node's state with a thread lock and a lock file (cross-process).

    Example::

        store = StateStore(lab_dir, "node1")
        with store.transaction() as st:
            st.pending["Sme"] = "Enabled"
    """

    def __init__(self, lab_dir: Path, node: str) -> None:
        self.path = state_path(lab_dir, node)
        self._lockfile = self.path.with_name("state.lock")
        self._lock = threading.RLock()
        self._cache: BmcState | None = None
        self._stamp: tuple[int, int] | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> BmcState:
        """The current state (re-read only when the file changed on disk)."""
        with self._lock:
            stamp = file_stamp(self.path)
            if stamp is None:
                raise LabError(f"no BMC state at {self.path}: start the BMC first (ccfactory.lab.bmc.service.start)")
            if self._cache is None or stamp != self._stamp:
                self._cache = read_state(self.path)
                self._stamp = stamp
            return self._cache.model_copy(deep=True)

    def save(self, state: BmcState) -> None:
        with self._lock:
            write_json_atomic(self.path, state.model_dump(mode="json"))
            self._cache = state.model_copy(deep=True)
            self._stamp = file_stamp(self.path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[BmcState]:
        """Read-modify-write under both locks; saved only if the block does not raise."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = self.load()
                yield state
                self.save(state)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def read_state(path: Path) -> BmcState:
    try:
        state = BmcState.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no BMC state at {path}") from None
    except ValueError as exc:
        raise LabError(f"corrupt BMC state {path}: {exc.__class__.__name__}; delete it to reset the BMC") from None
    if state.format != STATE_FORMAT:
        raise LabError(f"BMC state {path} has format {state.format}, expected {STATE_FORMAT}")
    return state


def ensure_state(lab_dir: Path, spec: BmcSpec) -> BmcState:
    """Create ``state.json`` from factory defaults unless it exists for the same vendor/TEE.

    A state written for another vendor or TEE (the lab was rebuilt with a different
    profile) is replaced; any other existing state is kept, so restarts lose nothing.
    New attributes added to a personality since are filled with their defaults.
    """
    store = StateStore(lab_dir, spec.node)
    if store.exists():
        with store.transaction() as state:
            if state.vendor == spec.vendor and state.tee == spec.tee:
                defaults = load_personality(spec.vendor).defaults(spec.tee)
                for name, value in defaults.items():
                    state.applied.setdefault(name, value)
                return state
    fresh = initial_state(spec)
    store.save(fresh)
    return fresh


def platform_features_for(lab_dir: Path, node: str) -> PlatformFeatures:
    """The node's platform features, computed from the BIOS attributes APPLIED at its last POST.

    This is the lab's hardware truth the node renderer consumes: enabling SNP through
    Redfish changes nothing here until the reset that applies it. A node whose BMC
    has a spec but no state yet gets the factory defaults (TEE disabled).

    Example::

        >>> f = platform_features_for(Path("/var/lib/ccfactory-lab"), "node1")
        >>> (f.smee, f.snp, f.rmp_coverage, f.sev_es_asid_limit)
        (False, False, False, 1)
    """
    path = state_path(lab_dir, node)
    if path.is_file():
        state = read_state(path)
        return load_personality(state.vendor).platform_features(state.tee, state.applied)
    try:
        spec = read_spec(lab_dir, node)
    except FileNotFoundError:
        raise LabError(
            f"node {node!r} has no BMC in {node_dir(lab_dir, node)}: "
            "start it with ccfactory.lab.bmc.service.start(lab_dir, [BmcSpec...])"
        ) from None
    personality = load_personality(spec.vendor)
    return personality.platform_features(spec.tee, personality.defaults(spec.tee))


def apply_pending_on_boot(lab_dir: Path, node: str) -> bool:
    """POST for a boot the BMC did not order (the node rebooted itself); True if it ran.

    Called by the lab supervisor before every boot. Pending settings apply as on a real
    server, whatever caused the reboot (Dell: only with a scheduled config job). A boot
    caused by the BMC's own reset is skipped: that reset already ran POST.

    Example: ``apply_pending_on_boot(Path("/var/lib/ccfactory/lab"), "node1")``
    """
    from ccfactory.lab.bmc.faults import FaultSwitch
    from ccfactory.lab.bmc.post import run_post

    store = StateStore(lab_dir, node)
    if not store.exists():
        return False
    with store.transaction() as state:
        if state.power.op is not None or state.power.posted_boot:
            state.power.posted_boot = False  # this boot is the reset's: its POST has run
            return False
        run_post(state, load_personality(state.vendor), FaultSwitch(lab_dir, node))
        now = time.time()
        for job in state.jobs:
            if job.state == "Running":  # the boot is happening now: the job ends with it
                job.state, job.ended = job.outcome or "Completed", now
        state.power.state, state.power.since = "On", now
        state.event("post_on_node_boot")
    return True


def reset(lab_dir: Path, node: str) -> None:
    """Factory-reset a BMC: BIOS defaults (TEE disabled), no pending values, no jobs.

    Used by ``ccfactory lab reset``; a running emulator picks the new state up at once.

    Example: ``reset(Path("/var/lib/ccfactory/lab"), "node1")``
    """
    store = StateStore(lab_dir, node)
    try:
        spec = read_spec(lab_dir, node)
    except FileNotFoundError:
        if not store.exists():
            return  # nothing to reset
        old = store.load()
        spec = BmcSpec.model_construct(node=node, vendor=old.vendor, tee=old.tee)
    with store.transaction() if store.exists() else contextlib.nullcontext() as current:
        fresh = initial_state(spec)
        if current is None:
            store.save(fresh)
            return
        for field in ("applied", "pending", "pending_apply_time", "settings_result", "jobs", "system", "boots"):
            setattr(current, field, getattr(fresh, field))
        current.vendor, current.tee = fresh.vendor, fresh.tee
        current.event("factory_reset")
