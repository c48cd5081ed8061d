"""Fault-injection switches, one JSON file per BMC, settable at runtime from any process.

``<lab>/bmc/<node>/faults.json`` (all fields optional)::

    {
      "fail_next_requests": 3,        # the next 3 Redfish requests answer fail_status (then 0)
      "fail_status": 503,             # 500..599; 503 carries Retry-After
      "delay_seconds": 2.5,           # every response is delayed this long (slow BMC)
      "fail_next_job": true,          # the next BIOS apply fails (Dell: job ends Failed) (then false)
      "reset_hang": "off",            # "" | "off" | "on": resets never complete; node stays off,
                                      #   PowerState stuck at Off ("off") or On ("on": hung in POST)
      "revert_after_reset": ["Snp"],  # these attributes silently revert at every apply ("*" = all)
      "ignore_graceful": true         # the OS ignores ACPI: GracefulRestart/GracefulShutdown/
                                      #   PushPowerButton on a running system are accepted, do nothing
    }

The emulator re-reads the file when it changes and decrements the one-shot counters
itself, under the same lock file, so a test can flip switches while requests run.

Example::

    >>> set_faults(lab_dir, "node1", fail_next_requests=2, fail_status=500)
    Faults(fail_next_requests=2, fail_status=500, ...)
    >>> clear_faults(lab_dir, "node1")
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ccfactory.lab.bmc.spec import file_stamp, node_dir, write_json_atomic
from ccfactory.lab.errors import LabError


class Faults(BaseModel):
    """The switches of one BMC (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    fail_next_requests: int = Field(default=0, ge=0)
    fail_status: int = Field(default=503, ge=500, le=599)
    delay_seconds: float = Field(default=0.0, ge=0, le=600)
    fail_next_job: bool = False
    reset_hang: Literal["", "off", "on"] = ""
    revert_after_reset: list[str] = Field(default_factory=list)
    ignore_graceful: bool = False


def faults_path(lab_dir: Path, node: str) -> Path:
    return node_dir(lab_dir, node) / "faults.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name("faults.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read(path: Path) -> Faults:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Faults()
    try:
        return Faults.model_validate_json(text) if text.strip() else Faults()
    except ValidationError as exc:
        raise LabError(f"invalid fault switches in {path}: {exc.errors()[0]['msg']}") from None


def get_faults(lab_dir: Path, node: str) -> Faults:
    """Current switches of a BMC (all off if never set).

    Example: ``get_faults(lab_dir, "node1").reset_hang`` -> ``''``
    """
    return _read(faults_path(lab_dir, node))


def set_faults(lab_dir: Path, node: str, **switches: Any) -> Faults:
    """Change some switches, keep the others; takes effect on the next request.

    Example: ``set_faults(lab_dir, "node1", reset_hang="off", delay_seconds=1.0)``
    """
    path = faults_path(lab_dir, node)
    with _locked(path):
        current = _read(path).model_dump()
        unknown = set(switches) - set(current)
        if unknown:
            raise LabError(f"unknown fault switch(es) {sorted(unknown)}; known: {sorted(current)}")
        try:
            faults = Faults.model_validate({**current, **switches})
        except ValidationError as exc:
            raise LabError(f"invalid fault switch: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        write_json_atomic(path, faults.model_dump())
        return faults


def clear_faults(lab_dir: Path, node: str) -> None:
    """Turn every switch off.

    Example: ``clear_faults(lab_dir, "node1")``
    """
    path = faults_path(lab_dir, node)
    with _locked(path):
        write_json_atomic(path, Faults().model_dump())


class FaultSwitch:
    """The emulator's view of one BMC's faults.json: cached, re-read when it changes."""

    def __init__(self, lab_dir: Path, node: str) -> None:
        self.path = faults_path(lab_dir, node)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._faults = Faults()

    def current(self) -> Faults:
        """The switches now (cheap: one stat() per call)."""
        stamp = file_stamp(self.path)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._faults = _read(self.path)
                except LabError:
                    self._faults = Faults()  # a half-edited file must not take the BMC down
                self._stamp = stamp
            return self._faults

    def take(self, field: str) -> Any:
        """Consume a one-shot switch (``fail_next_requests`` or ``fail_next_job``): its value before.

        Example: ``if switch.take("fail_next_job"): ...``
        """
        if not getattr(self.current(), field):
            return getattr(self.current(), field)
        with _locked(self.path), self._lock:
            faults = _read(self.path)
            before = getattr(faults, field)
            if field == "fail_next_requests":
                faults.fail_next_requests = max(0, before - 1)
            else:
                setattr(faults, field, False)
            write_json_atomic(self.path, faults.model_dump())
            self._faults, self._stamp = faults, None  # force a re-stat next time
            return before
