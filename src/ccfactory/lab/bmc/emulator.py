"""The lab BMC on top of OpenStack's sushy-tools 2.2.0 emulator (its Flask app, pinned).

sushy-tools already serves the service root, Systems, the ComputerSystem.Reset
action, Managers, Chassis, EthernetInterfaces, error bodies and Basic auth. The lab
reuses all of that and adds what its fake driver lacks:

* ``LabSystemsDriver`` replaces ``fakedriver.FakeDriver`` (the recipe's approach): one
  system per BMC, power and BIOS backed by ``BmcRuntime`` and ``state.json``;
* ``LabManagersDriver`` replaces the managers driver: vendor manager ids;
* one catch-all route dispatches the vendor paths of the personality (Bios,
  settings object, registries, Dell jobs, sessions) to ``BmcRuntime.handle``; the
  sushy-tools views for ``/BIOS`` and ``/Registries`` are pointed at it too;
* ``after_request`` personalises root/system/manager JSON (manufacturer, Bios link,
  SessionService, reset types);
* a WSGI middleware per request: fault switches, then per-BMC Basic or session auth
  (sushy-tools' ``RedfishAuthMiddleware`` + X-Auth-Token), then the app.

One Flask app serves every BMC of a process; each listener tags its requests with
its ``BmcRuntime`` (``environ["ccfactory.bmc"]``), so one process can serve many
management addresses.

Example (tests, no network)::

    app = install()
    client = test_client(runtime)        # Flask test client bound to one BMC
    client.get("/redfish/v1/Systems/System.Embedded.1/Bios", auth=("root", pw))
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ccfactory.lab.bmc import resources as res
from ccfactory.lab.bmc.messages import RedfishError, message
from ccfactory.lab.bmc.runtime import BmcRuntime
from ccfactory.lab.errors import LabError

log = logging.getLogger("ccfactory.lab.bmc")

SUSHY_TOOLS_VERSION = "2.2.0"
ENV_KEY = "ccfactory.bmc"
CONNECTION_KEY = "ccfactory.connection"  # set by the server: which TCP connection carried the request
# sushy-tools views whose URL rules would shadow vendor paths: they dispatch like ours.
OVERRIDDEN_VIEWS = (
    "bios",
    "bios_settings",
    "system_reset_bios",
    "registry_file_collection",
    "bios_attribute_registry_file",
    "bios_registry",
)
# Unauthenticated, as on real BMCs (DSP0266): service root and OData documents.
PUBLIC_PATHS = frozenset({"", "redfish", "redfish/v1", "redfish/v1/odata", "redfish/v1/$metadata"})

_state: dict[str, Any] = {}


def _check_version() -> None:
    from importlib import metadata

    try:
        version = metadata.version("sushy-tools")
    except metadata.PackageNotFoundError:
        raise LabError("the lab BMC needs sushy-tools==2.2.0: pip install 'ccfactory[lab]'") from None
    if version != SUSHY_TOOLS_VERSION:
        # The lab patches sushy-tools internals (driver classes, view names): pinned on purpose.
        raise LabError(f"the lab BMC needs sushy-tools=={SUSHY_TOOLS_VERSION}, found {version}")


def current() -> BmcRuntime:
    """The BmcRuntime of the request being served."""
    import flask

    rt = flask.request.environ.get(ENV_KEY)
    if rt is None:
        raise RedfishError(500, [message("InternalError")])
    return rt


def install() -> Any:
    """Patch sushy-tools' app once per process and return it (idempotent).

    Example: ``app = install(); app.test_client()``
    """
    if "app" in _state:
        return _state["app"]
    _check_version()
    import flask
    from sushy_tools import error as sushy_error
    from sushy_tools.emulator import main as sushy_main
    from sushy_tools.emulator.resources import managers as mgrdriver
    from sushy_tools.emulator.resources.systems import fakedriver

    app = sushy_main.app
    app.config.update(SUSHY_EMULATOR_FAKE_DRIVER=True, SUSHY_EMULATOR_FEATURE_SET="full")

    class LabSystemsDriver(fakedriver.FakeDriver):
        """sushy-tools fake driver backed by the current BMC's state (one system per BMC)."""

        @classmethod
        def initialize(cls, config, logger):  # type: ignore[no-untyped-def]
            cls._config, cls._logger = config, logger
            return cls

        def __init__(self) -> None:  # no sqlite store: state.json is the store
            pass

        @property
        def driver(self) -> str:
            return "<ccfactory-lab>"

        @property
        def systems(self) -> list[str]:
            return [current().personality.identity.system_id]

        def _check(self, identity: str) -> BmcRuntime:
            rt = current()
            if identity not in (rt.personality.identity.system_id, rt.uuid):
                raise sushy_error.NotFound(f"System {identity} was not found")
            return rt

        def _get(self, identity):  # type: ignore[no-untyped-def]
            return self._check(identity).system_record()

        def _update(self, system, **changes):  # type: ignore[no-untyped-def]
            current().update_system(changes)

        def uuid(self, identity: str) -> str:
            return self._check(identity).uuid

        def name(self, identity: str) -> str:
            return self._check(identity).personality.identity.system_name

        def get_power_state(self, identity: str) -> str:
            return self._check(identity).power_state()

        def set_power_state(self, identity: str, state: str) -> None:
            self._check(identity).reset(state)

        def get_bios(self, identity: str) -> dict[str, Any]:
            return self._check(identity).visible_bios()

        def get_versions(self, identity: str) -> dict[str, Any]:
            rt = self._check(identity)
            return {"BiosVersion": rt.personality.model_for(rt.tee).get("bios_version", "")}

    class LabManagersDriver(mgrdriver.FakeDriver):
        """Managers named like the vendor's (iDRAC.Embedded.1, 1, BMC)."""

        def get_manager(self, identity: str) -> dict[str, Any]:
            rt = current()
            ident = rt.personality.identity
            if identity not in (ident.manager_id, rt.manager_uuid):
                raise sushy_error.NotFound(f"Manager {identity} was not found")
            return {"Id": ident.manager_id, "UUID": rt.manager_uuid, "Name": ident.manager_name}

        @property
        def managers(self) -> list[str]:
            return [current().personality.identity.manager_id]

        def get_managed_systems(self, manager: dict[str, Any]) -> list[str]:
            return [current().personality.identity.system_id]

        def get_managers_for_system(self, ident: str) -> list[str]:
            return [current().personality.identity.manager_id]

    # The recipe's technique: swap the driver classes sushy-tools instantiates.
    fakedriver.FakeDriver = LabSystemsDriver
    mgrdriver.FakeDriver = LabManagersDriver

    def dispatch(**_kwargs: Any) -> Any:
        request = flask.request
        reply = current().handle(request.method, request.path, dict(request.headers), request.get_data())
        return _to_response(reply.status, reply.body, reply.headers)

    for endpoint in OVERRIDDEN_VIEWS:
        app.view_functions[endpoint] = dispatch
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    app.add_url_rule("/redfish/v1/<path:rest>", "ccfactory_dispatch", dispatch, methods=methods)
    app.add_url_rule("/<path:rest>", "ccfactory_dispatch_other", dispatch, methods=methods)

    @app.errorhandler(RedfishError)
    def _redfish_error(exc: RedfishError) -> Any:
        return _to_response(exc.status, exc.body(), exc.headers)

    @app.before_request
    def _before() -> Any:
        rt = current()
        request = flask.request
        # Dell answers 412 when If-Match is sent on an action POST (cc-stack §1.1).
        if (rt.personality.actions.reject_if_match and request.method == "POST"
                and "/Actions/" in request.path and "If-Match" in request.headers):
            raise RedfishError(412, [message("PreconditionFailed")])
        return None

    postprocessors = {
        "root_resource": lambda rt, body: res.personalize_root(rt.personality, rt.tee, body, rt.uuid),
        "system_resource": lambda rt, body: res.personalize_system(rt.personality, rt.tee, body, rt.node),
        "manager_resource": lambda rt, body: res.personalize_manager(rt.personality, body, rt.manager_uuid),
    }

    @app.after_request
    def _personalize(response: Any) -> Any:
        fn = postprocessors.get(flask.request.endpoint or "")
        if fn is None or flask.request.method != "GET" or response.status_code != 200:
            return response
        body = json.loads(response.get_data())
        fn(current(), body)
        response.set_data(json.dumps(body, indent=2))
        return response

    app.wsgi_app = LabMiddleware(app.wsgi_app)
    _state["app"] = app
    return app


def _to_response(status: int, body: Any, headers: dict[str, str]) -> Any:
    import flask

    if body is None:
        response = flask.Response(status=status, headers=headers)
        response.headers.pop("Content-Type", None)  # no body, no media type
        return response
    return flask.Response(json.dumps(body, indent=2), status=status, headers=headers,
                          content_type="application/json")


def _wsgi_json(start_response: Any, status: int, body: dict[str, Any], headers: list[tuple[str, str]]) -> list[bytes]:
    from werkzeug.http import HTTP_STATUS_CODES

    data = json.dumps(body).encode()
    start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


class LabMiddleware:
    """Per request: log line, fault switches, then this BMC's authentication."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def _authenticator(self, rt: BmcRuntime) -> Any:
        auth = getattr(rt, "_lab_auth", None)  # one per BMC, created on its first request
        if auth is None:
            auth = LabAuth(self.app, rt)
            rt._lab_auth = auth  # type: ignore[attr-defined]
        return auth

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        rt: BmcRuntime | None = environ.get(ENV_KEY)
        if rt is None:
            return _wsgi_json(start_response, 500, RedfishError(500, [message("InternalError")]).body(), [])
        started = time.monotonic()
        seen: dict[str, str] = {}

        def logged_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen["status"] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        try:
            faults = rt.faults.current()
            if faults.delay_seconds:
                time.sleep(faults.delay_seconds)  # a slow BMC
            if faults.fail_next_requests and rt.faults.take("fail_next_requests"):
                status = faults.fail_status
                key = "ServiceTemporarilyUnavailable" if status == 503 else "InternalError"
                extra = [("Retry-After", "1")] if status == 503 else []
                body = RedfishError(status, [message(key, 1) if status == 503 else message(key)]).body()
                return _wsgi_json(logged_start_response, status, body, extra)
            return self._authenticator(rt)(environ, logged_start_response)
        finally:
            # Path and status only: never headers, bodies or credentials.
            conn = environ.get(CONNECTION_KEY)
            log.info("%s %s %s -> %s (%.0f ms%s)", rt.node, environ.get("REQUEST_METHOD"),
                     environ.get("PATH_INFO"), seen.get("status", "?"), (time.monotonic() - started) * 1000,
                     f", connection {conn}" if conn is not None else "")


class LabAuth:
    """Basic auth (sushy-tools' htpasswd middleware) or an X-Auth-Token session, per BMC."""

    def __init__(self, app: Any, rt: BmcRuntime) -> None:
        from sushy_tools.emulator.main import RedfishAuthMiddleware

        self.app = app
        self.rt = rt
        outer = self

        class _Basic(RedfishAuthMiddleware):  # type: ignore[misc, valid-type]
            _EXCLUDE_PATHS = PUBLIC_PATHS

            def format_exception(self, e: Any) -> Any:
                return outer._error_response(e)

        self._basic = _Basic(app, str(rt.auth_file))

    def _error_response(self, e: Any) -> Any:
        import webob

        status = getattr(e, "code", 401)
        key = "NoValidSession" if status == 401 else "GeneralError"
        body = RedfishError(status, [message(key)] if key != "GeneralError" else [message(key, text=str(e))]).body()
        headers = [(k, v) for k, v in getattr(e, "headers", {}).items()]
        return webob.Response(status=status, json_body=body, headerlist=[("Content-Type", "application/json"),
                                                                          *headers])

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path.strip("/") in PUBLIC_PATHS:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST" and path == res.SESSIONS_PATH:
            return self.app(environ, start_response)  # login: the handler checks the password
        token = environ.get("HTTP_X_AUTH_TOKEN")
        if token is not None:
            session = self.rt.sessions.validate(token)
            if session is None:
                body = RedfishError(401, [message("NoValidSession")]).body()
                return _wsgi_json(start_response, 401, body, [])
            environ.pop("HTTP_AUTHORIZATION", None)
            environ["HTTP_X_USER"] = session.username
            return self.app(environ, start_response)
        return self._basic(environ, start_response)


def wsgi_for(rt: BmcRuntime) -> Any:
    """The WSGI callable one listener serves: tags each request with its BMC.

    Example: ``werkzeug.serving.make_server(addr, port, wsgi_for(rt), ssl_context=ctx)``
    """
    app = install()

    def bmc_app(environ: dict[str, Any], start_response: Any) -> Any:
        environ[ENV_KEY] = rt
        return app(environ, start_response)

    return bmc_app


def test_client(rt: BmcRuntime) -> Any:
    """A Flask test client bound to one BMC (no network); full stack incl. auth and faults.

    Example: ``test_client(rt).get("/redfish/v1/Systems", auth=("root", password))``
    """
    app = install()
    client = app.test_client()
    client.environ_base[ENV_KEY] = rt
    return client
