"""One lab BMC at run time: BIOS staging and apply-on-reset, config jobs, power, sessions.

``BmcRuntime`` holds no Flask code: the emulator (``emulator.py``) hands it a
method, a path, headers and a body, and turns the ``Reply`` back into HTTP. Vendor
differences come from the personality; this file only implements the semantics:

* PATCH stages values in ``pending`` (validated against the registry and the
  dependencies on APPLIED values, ``If-Match`` checked against the resource ETag);
* a reset that boots the host runs "POST": pending values are applied (Dell: only
  through a scheduled config job), one-shot attributes fire, fault switches apply;
  then the node really power-cycles (``ccfactory.lab.power``) or, in BMC-only mode,
  comes back after ``reset_seconds``;
* PowerState is read from the node when no reset is in flight.

Example::

    rt = BmcRuntime(lab_dir, spec)
    rt.handle("PATCH", "/redfish/v1/Systems/System.Embedded.1/Bios/Settings",
              {}, b'{"Attributes": {"Sme": "Enabled"}, "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"}}')
    rt.reset("ForceRestart")
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccfactory.lab.bmc import resources as res
from ccfactory.lab.bmc.credentials import htpasswd_path
from ccfactory.lab.bmc.faults import FaultSwitch
from ccfactory.lab.bmc.messages import RedfishError, message
from ccfactory.lab.bmc.personality import Personality, load_personality, path_regex
from ccfactory.lab.bmc.sessions import SessionStore
from ccfactory.lab.bmc.spec import BmcSpec
from ccfactory.lab.bmc.post import run_post
from ccfactory.lab.bmc.state import BmcState, Job, PowerOp, StateStore, ensure_state

log = logging.getLogger("ccfactory.lab.bmc")

# Stable UUIDs per node (uuid5), so a re-created lab keeps its system identities.
UUID_NAMESPACE = uuidlib.UUID("6f1d3a52-2a43-4c1e-9d7e-6b1f1a0c0c00")

PowerFn = Callable[[Path, str, str], Any]

# ResetType -> (what happens when the host is on, when it is off).
# Each action is (ccfactory.lab.power action, does the host POST afterwards?); None = no-op.
RESET_PLANS: dict[str, tuple[tuple[str, bool] | None, tuple[str, bool] | None]] = {
    "On": (None, ("on", True)),
    "ForceOn": (None, ("on", True)),
    "ForceOff": (("force-off", False), None),
    "GracefulShutdown": (("off", False), None),
    "GracefulRestart": (("restart", True), ("on", True)),
    "ForceRestart": (("force-restart", True), ("on", True)),
    "PowerCycle": (("force-restart", True), ("on", True)),
    "PushPowerButton": (("off", False), ("on", True)),
    "Nmi": (None, None),
}
# Resets a running system only performs if its OS acts on the ACPI event
ACPI_RESETS = frozenset({"GracefulRestart", "GracefulShutdown", "PushPowerButton"})
STATUS_CACHE_SECONDS = 1.0
ON_WORDS = {"on", "running", "up", "started", "true", "1", "poweredon"}


@dataclass
class Reply:
    """What a handler answers; ``body`` None means no content."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    name: str
    regex: re.Pattern[str]
    methods: frozenset[str]


POWER_ACTION_TIMEOUT = 600.0


def _default_power_fn(lab_dir: Path, node: str, action: str) -> Any:
    # Imported lazily: ccfactory.lab.power is the lab core's (and needs root/nspawn).
    module = importlib.import_module("ccfactory.lab.power")
    # a BMC waits for the OS to go down as long as it takes: a GracefulRestart is not a failure
    # after a minute (systemd may spend its stop timeouts on a unit under a loaded controller)
    return module.power(lab_dir, node, action, timeout=POWER_ACTION_TIMEOUT)


class BmcRuntime:
    """The live BMC of one node (thread-safe; one instance per node per emulator process)."""

    def __init__(self, lab_dir: Path, spec: BmcSpec, *, power_fn: PowerFn | None = None) -> None:
        self.lab_dir = Path(lab_dir)
        self.spec = spec
        self.node = spec.node
        self.tee = spec.tee
        self.personality: Personality = load_personality(spec.vendor)
        self.store = StateStore(self.lab_dir, spec.node)
        ensure_state(self.lab_dir, spec)
        self.faults = FaultSwitch(self.lab_dir, spec.node)
        self.sessions = SessionStore()
        self.auth_file = htpasswd_path(self.lab_dir, spec.node)
        self.uuid = str(uuidlib.uuid5(UUID_NAMESPACE, spec.node))
        self.manager_uuid = str(uuidlib.uuid5(UUID_NAMESPACE, f"{spec.node}-bmc"))
        self._power_fn: PowerFn = power_fn or _default_power_fn
        self._status_cache: tuple[float, str] | None = None
        self._power_warned = False
        self.routes = self._build_routes()
        self._recover_interrupted_reset()

    # ------------------------------------------------------------------ routing
    def _build_routes(self) -> list[Route]:
        p, tee = self.personality, self.tee
        table: list[tuple[str | None, str, set[str]]] = [
            (p.paths.get("bios", tee), "bios", {"GET", "PATCH"}),
            (p.paths.get("settings", tee), "settings", {"GET", "PATCH"}),
            (p.paths.get("registry", tee), "registry", {"GET"}),
            (p.paths.get("registry_file", tee), "registry_file", {"GET"}),
            (res.REGISTRIES_PATH, "registries", {"GET"}),
            (p.paths.get("reset_bios", tee), "reset_bios", {"POST"}),
            (p.paths.get("clear_pending", tee), "clear_pending", {"POST"}),
            (p.paths.get("jobs", tee), "jobs", {"GET", "POST"}),
            *((j, "job", {"GET"}) for j in p.paths.job),
            *((j, "task_job", {"GET"}) for j in p.paths.task_job),
            (res.SESSION_SERVICE_PATH, "session_service", {"GET"}),
            (res.SESSIONS_PATH, "sessions", {"GET", "POST"}),
            (res.SESSIONS_PATH + "/{session_id}", "session", {"GET", "DELETE"}),
        ]
        return [Route(name, path_regex(path), frozenset(methods)) for path, name, methods in table if path]

    def handle(self, method: str, path: str, headers: dict[str, str], raw_body: bytes) -> Reply:
        """Serve one request for a path this runtime owns (404 if none matches)."""
        clean = path.rstrip("/") or "/"
        for route in self.routes:
            match = route.regex.match(clean)
            if not match:
                continue
            if method not in route.methods:
                allow = ", ".join(sorted(route.methods))
                raise RedfishError(405, [message("OperationNotAllowed")], headers={"Allow": allow})
            body = _parse_json(raw_body) if method in ("PATCH", "POST") else None
            handler = getattr(self, f"_h_{route.name}")
            return handler(method, path, headers, body, **match.groupdict())
        raise RedfishError(404, [message("ResourceNotFound", "Resource", path)])

    # ------------------------------------------------------------------ state
    def snapshot(self) -> BmcState:
        """The state with finished resets settled (writes only when something changed)."""
        state = self.store.load()
        if self._needs_settle(state):
            with self.store.transaction() as state:
                self._settle(state)
        return state

    def _needs_settle(self, state: BmcState) -> bool:
        op = state.power.op
        return bool(op and not op.hang and (op.done or (op.done_at is not None and time.time() >= op.done_at)))

    def _settle(self, state: BmcState) -> None:
        """Finish a reset that is over: power state, and Running jobs end."""
        if not self._needs_settle(state):
            return
        op = state.power.op
        assert op is not None
        now = time.time()
        if op.error:
            state.power.state = self._node_status(force=True) or state.power.state
            state.event("reset_failed", kind_=op.kind, error=op.error)
        else:
            state.power.state = "On" if op.boot else "Off"
        state.power.since = now
        state.power.op = None
        for job in state.jobs:
            if job.state == "Running":
                job.state = "Failed" if op.error else (job.outcome or "Completed")
                job.ended = now
                job.message = op.error or job.message

    def _recover_interrupted_reset(self) -> None:
        # A node-mode reset whose emulator died mid-way has no worker left to finish it.
        state = self.store.load()
        op = state.power.op
        if op and not op.hang and not op.done and op.done_at is None:
            with self.store.transaction() as state:
                if state.power.op is not None:
                    state.power.op.done = True

    # ------------------------------------------------------------------ power
    def _node_status(self, force: bool = False) -> str | None:
        """The node's real power state ("On"/"Off"), cached briefly; None if unknown."""
        if self.spec.power != "node":
            return None
        now = time.monotonic()
        if not force and self._status_cache and now - self._status_cache[0] < STATUS_CACHE_SECONDS:
            return self._status_cache[1]
        try:
            result = self._power_fn(self.lab_dir, self.node, "status")
        except Exception as exc:  # noqa: BLE001 - the lab core may not be there (unit tests, BMC-only use)
            if not self._power_warned:
                log.warning("%s: cannot read node power state (%s); reporting the BMC's own view",
                            self.node, exc.__class__.__name__)
                self._power_warned = True
            return None
        value = _power_word(result)
        self._status_cache = (now, value)
        return value

    def power_state(self) -> str:
        """Redfish PowerState: a hung reset's stuck value, Off during a reset, else the node's."""
        state = self.snapshot()
        op = state.power.op
        if op is not None:
            if op.hang:
                return "Off" if op.hang == "off" else "On"
            return "Off"
        return self._node_status() or state.power.state

    def reset(self, reset_type: str | None) -> None:
        """ComputerSystem.Reset: apply pending BIOS at POST, then power the node.

        Example: ``rt.reset("ForceRestart")``
        """
        p = self.personality
        if not reset_type:
            raise RedfishError(400, [message("ActionParameterMissing", "ComputerSystem.Reset", "ResetType")])
        if reset_type not in p.identity.reset_types or reset_type not in RESET_PLANS:
            raise RedfishError(
                400,
                [message("ActionParameterValueNotInList", reset_type, "ResetType", "ComputerSystem.Reset",
                         prop="#/ResetType")],
            )
        faults = self.faults.current()
        with self.store.transaction() as state:
            self._settle(state)
            op = state.power.op
            if op is not None and not op.hang:
                raise RedfishError(409, [message("ResourceInUse")])
            is_on = self.power_state_from(state) == "On"
            plan = RESET_PLANS[reset_type][0 if is_on else 1]
            if plan is None:
                return  # e.g. On while on, Nmi: accepted, nothing to do
            if is_on and faults.ignore_graceful and reset_type in ACPI_RESETS:
                state.event("graceful_ignored", reset=reset_type)  # accepted; the OS never acts on it
                log.info("%s: %s accepted, ignored by the OS (fault ignore_graceful)", self.node, reset_type)
                return
            action, boots = plan
            now = time.time()
            hang = faults.reset_hang if boots else ""
            if boots and not hang:
                run_post(state, p, self.faults)  # POST: staged BIOS settings apply now
                state.power.posted_boot = self.spec.power == "node" and bool(action)
            elif hang:
                for job in state.jobs:
                    if job.state == "Scheduled":
                        job.state, job.started = "Running", now
                state.event("reset_hang", mode=hang)
                action = "force-off" if is_on else ""
            done_at = None
            if self.spec.power == "simulated" and not hang:
                done_at = now + (self.spec.reset_seconds if boots else 0.0)
            state.power.op = PowerOp(kind=reset_type, boot=boots, started=now, done_at=done_at, hang=hang)
            started = now
        log.info("%s: %s (%s)%s", self.node, reset_type, action or "no node action",
                 f", hangs ({hang})" if hang else "")
        if self.spec.power == "node" and action:
            threading.Thread(target=self._power_worker, args=(started, action, bool(hang)),
                             name=f"reset-{self.node}", daemon=True).start()

    def power_state_from(self, state: BmcState) -> str:
        op = state.power.op
        if op is not None and op.hang:
            return "Off"
        return self._node_status() or state.power.state

    def _power_worker(self, started: float, action: str, hung: bool) -> None:
        error = None
        try:
            self._power_fn(self.lab_dir, self.node, action)
        except Exception as exc:  # noqa: BLE001 - report, never crash the emulator
            error = f"node power action {action!r} failed: {exc.__class__.__name__}: {exc}"
            log.error("%s: %s", self.node, error)
        self._status_cache = None
        if hung:
            return  # a hung reset never completes
        with self.store.transaction() as state:
            op = state.power.op
            if op is not None and op.started == started:
                op.done, op.error = True, error

    # ------------------------------------------------------------------ BIOS
    def _h_bios(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if method == "PATCH":
            return self._stage("bios", headers, body)
        state = self.snapshot()
        data = res.render_bios(self.personality, self.tee, state)
        return Reply(200, data, {"ETag": data["@odata.etag"]})

    def _h_settings(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if method == "PATCH":
            return self._stage("settings", headers, body)
        state = self.snapshot()
        data = res.render_settings(self.personality, self.tee, state)
        return Reply(200, data, {"ETag": data["@odata.etag"]})

    def _stage(self, target: str, headers: dict[str, str], body: Any) -> Reply:
        p = self.personality
        if target not in p.bios.patch_targets:
            allow = "GET"
            raise RedfishError(405, [message("OperationNotAllowed")], headers={"Allow": allow})
        attrs, apply_time = self._parse_settings_body(body)
        with self.store.transaction() as state:
            self._settle(state)
            current = res.bios_etag(p, state) if target == "bios" else res.settings_etag(p, state)
            if not _etag_matches(headers.get("If-Match"), current):
                raise RedfishError(412, [message("PreconditionFailed")])
            scheduled = [j for j in state.jobs if j.state == "Scheduled"]
            if scheduled and p.bios.reject_patch_while_job_scheduled:
                raise RedfishError(400, [self._vendor_message("patch_refused_job_scheduled")])
            errors = p.validate_write(self.tee, state.applied, attrs)
            if errors:
                raise RedfishError(400, errors)
            state.pending.update(attrs)
            if apply_time:
                state.pending_apply_time = apply_time
            job = self._new_job(state) if (apply_time and p.paths.jobs) else None
            etag = res.bios_etag(p, state) if target == "bios" else res.settings_etag(p, state)
        log.info("%s: staged %s%s", self.node, ", ".join(sorted(attrs)), f" (job {job.id})" if job else "")
        reply_headers = {"ETag": etag}
        if job is not None:
            reply_headers["Location"] = str(p.paths.job_location).format(job_id=job.id)
            return Reply(p.bios.patch_with_job_status, None, reply_headers)
        ok = p.resources.get("patch_ok")
        if ok and p.bios.patch_status == 200:
            body_out = RedfishError(200, [message("Success", **_msg_overrides(ok))]).body()
            return Reply(200, body_out, reply_headers)
        return Reply(p.bios.patch_status, None, reply_headers)

    def _parse_settings_body(self, body: Any) -> tuple[dict[str, Any], str | None]:
        p = self.personality
        if not isinstance(body, dict):
            raise RedfishError(400, [message("MalformedJSON")])
        extra = sorted(set(body) - {"Attributes", "@Redfish.SettingsApplyTime", "@odata.type"})
        if extra:
            raise RedfishError(400, [message("PropertyUnknown", k, prop=f"#/{k}") for k in extra])
        attrs = body.get("Attributes")
        if not isinstance(attrs, dict) or not attrs:
            raise RedfishError(400, [message("PropertyMissing", "Attributes", prop="#/Attributes")])
        apply_time = None
        if "@Redfish.SettingsApplyTime" in body:
            at = body["@Redfish.SettingsApplyTime"]
            apply_time = at.get("ApplyTime") if isinstance(at, dict) else None
            if apply_time not in p.bios.apply_times:
                raise RedfishError(
                    400,
                    [message("PropertyValueNotInList", apply_time, "ApplyTime",
                             prop="#/@Redfish.SettingsApplyTime/ApplyTime")],
                )
        return attrs, apply_time

    def _vendor_message(self, key: str) -> dict[str, Any]:
        data = self.personality.resources.get(key, {})
        return message("GeneralError", **_msg_overrides(data))

    def _h_registry(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        return Reply(200, res.render_registry(self.personality, self.tee, self.snapshot()))

    def _h_registry_file(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        return Reply(200, res.render_registry_file(self.personality, self.tee))

    def _h_registries(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        return Reply(200, res.render_registries(self.personality, self.tee))

    def _h_reset_bios(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        """Bios.ResetBios: stage the factory defaults; they apply at the next POST."""
        defaults = self.personality.defaults(self.tee)
        with self.store.transaction() as state:
            state.pending = {k: v for k, v in defaults.items() if state.applied.get(k) != v}
            state.event("reset_bios", attributes=sorted(state.pending))
        return Reply(204)

    def _h_clear_pending(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        """Dell ClearPending: drop staged values and cancel a scheduled BIOS job."""
        now = time.time()
        with self.store.transaction() as state:
            state.pending, state.pending_apply_time = {}, None
            for job in state.jobs:
                if job.state == "Scheduled":
                    job.state, job.ended, job.message = "Failed", now, "Cancelled by ClearPending"
        return Reply(200, RedfishError(200, [message("Success")]).body())

    # ------------------------------------------------------------------ jobs
    def _new_job(self, state: BmcState) -> Job:
        now = time.time()
        taken = {j.id for j in state.jobs}
        number = int(now * 1000) % 10**12
        while f"JID_{number:012d}" in taken:
            number += 1
        job = Job(id=f"JID_{number:012d}", created=now, attributes=dict(state.pending))
        state.jobs.append(job)
        del state.jobs[:-50]
        state.event("job_created", job=job.id)
        return job

    def _find_job(self, job_id: str) -> Job:
        for job in self.snapshot().jobs:
            if job.id == job_id:
                return job
        raise RedfishError(404, [message("ResourceNotFound", "Job", job_id)])

    def _h_jobs(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        p = self.personality
        if method == "GET":
            return Reply(200, res.render_jobs(p, self.snapshot(), path.rstrip("/")))
        target = body.get("TargetSettingsURI") if isinstance(body, dict) else None
        settings = p.paths.get("settings", self.tee)
        if not target:
            raise RedfishError(400, [message("PropertyMissing", "TargetSettingsURI", prop="#/TargetSettingsURI")])
        if str(target).rstrip("/") != settings.rstrip("/"):
            raise RedfishError(
                400, [message("PropertyValueNotInList", target, "TargetSettingsURI", prop="#/TargetSettingsURI")]
            )
        with self.store.transaction() as state:
            self._settle(state)
            if any(j.state == "Scheduled" for j in state.jobs):
                raise RedfishError(400, [self._vendor_message("patch_refused_job_scheduled")])
            if not state.pending:
                raise RedfishError(
                    400,
                    [message("GeneralError", text="No pending BIOS attribute changes to create a configuration "
                             "job for.", resolution="PATCH the settings object first.")],
                )
            job = self._new_job(state)
        log.info("%s: config job %s created", self.node, job.id)
        location = str(p.paths.job_location).format(job_id=job.id)
        return Reply(p.bios.job_create_status, None, {"Location": location})

    def _h_job(self, method: str, path: str, headers: dict[str, str], body: Any, job_id: str) -> Reply:
        return Reply(200, res.render_job_oem(self.personality, self._find_job(job_id), path.rstrip("/")))

    def _h_task_job(self, method: str, path: str, headers: dict[str, str], body: Any, job_id: str) -> Reply:
        return Reply(200, res.render_job_task(self.personality, self._find_job(job_id), path.rstrip("/")))

    # ------------------------------------------------------------------ sessions
    def _h_session_service(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        return Reply(200, res.render_session_service(int(self.sessions.timeout)))

    def _h_sessions(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if method == "GET":
            return Reply(200, res.render_sessions(self.sessions.ids()))
        from sushy_tools import error as sushy_error
        from sushy_tools.emulator import auth_basic

        if not isinstance(body, dict) or not isinstance(body.get("UserName"), str) \
                or not isinstance(body.get("Password"), str):
            raise RedfishError(400, [message("PropertyMissing", "UserName/Password", prop="#/UserName")])
        try:
            auth_basic.authenticate(str(self.auth_file), body["UserName"], body["Password"].encode())
        except sushy_error.FishyError:
            raise RedfishError(401, [message("NoValidSession")]) from None
        sid, token = self.sessions.create(body["UserName"])
        location = f"{res.SESSIONS_PATH}/{sid}"
        return Reply(201, res.render_session(sid, body["UserName"]), {"X-Auth-Token": token, "Location": location})

    def _h_session(self, method: str, path: str, headers: dict[str, str], body: Any, session_id: str) -> Reply:
        session = self.sessions.get(session_id)
        if session is None:
            raise RedfishError(404, [message("ResourceNotFound", "Session", session_id)])
        if method == "DELETE":
            self.sessions.delete(session_id)
            return Reply(204)
        return Reply(200, res.render_session(session.id, session.username))

    # ------------------------------------------------------------------ system (sushy-tools driver)
    def visible_bios(self) -> dict[str, Any]:
        return res.visible_applied(self.personality, self.snapshot())

    def system_record(self) -> dict[str, Any]:
        """The dict sushy-tools' FakeDriver methods read (boot device, mode, NICs, ...)."""
        state = self.snapshot()
        mac = "52:54:00:" + ":".join(self.uuid.replace("-", "")[i:i + 2] for i in (0, 2, 4))
        return {"uuid": self.uuid, "name": self.personality.identity.system_name,
                "nics": [{"mac": mac}], **state.system}

    def update_system(self, changes: dict[str, Any]) -> None:
        keep = {k: v for k, v in changes.items() if k not in ("uuid", "name", "nics")}
        with self.store.transaction() as state:
            state.system.update(keep)


def _parse_json(raw: bytes) -> Any:
    if not raw or not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise RedfishError(400, [message("MalformedJSON")]) from None


def _etag_matches(if_match: str | None, current: str) -> bool:
    """If-Match: absent or ``*`` matches; weak and strong forms of one tag are equal here."""
    if if_match is None or if_match.strip() == "*":
        return True

    def norm(tag: str) -> str:
        tag = tag.strip()
        return tag[2:] if tag.startswith("W/") else tag

    return any(norm(t) == norm(current) for t in if_match.split(","))


def _power_word(result: Any) -> str:
    """Normalise what ``ccfactory.lab.power.power(..., "status")`` returns to On/Off."""
    if isinstance(result, bool):
        return "On" if result else "Off"
    text = getattr(result, "stdout", result)
    word = str(text).strip().lower().replace(" ", "").replace("-", "")
    return "On" if word in ON_WORDS else "Off"


def _msg_overrides(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "Message" in data:
        out["text"] = data["Message"]
    if "Resolution" in data:
        out["resolution"] = data["Resolution"]
    if "MessageId" in data:
        out["message_id"] = data["MessageId"]
    return out
