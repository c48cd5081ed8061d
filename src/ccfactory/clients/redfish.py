"""Redfish client for the firmware stage, on top of OpenStack's sushy.

sushy does authentication (a Redfish session, else HTTP basic), system discovery,
the reset action and power state; this module adds what the firmware stage needs
around it:

* **transport**: TLS verification on by default (``verify`` = CA bundle path or
  ``True``), a timeout on every request, bounded retries with exponential backoff on
  5xx answers and connection errors, a count of every request sent (benchmarks);
* **errors**: 401/403, TLS, timeouts and 5xx become :class:`RedfishError` subclasses
  whose messages name the BMC and the operation and never carry the password or the
  session token;
* **BIOS**: applied attributes, the settings object's pending attributes, the
  attribute registry (Dell ``Bios/BiosRegistry``; generic ``AttributeRegistry`` ->
  ``/redfish/v1/Registries/<id>`` -> ``Location`` -> registry file; HPE's lower-case
  ``RegistryStore``), a PATCH of the settings object with ``If-Match`` and
  ``@Redfish.SettingsApplyTime``, and Dell's BIOS configuration jobs;
* **vendor quirks** in one table, :data:`QUIRKS`, keyed by vendor.

Example::

    client = RedfishClient.from_config(cfg.bmc, host=cfg.name)
    with client:
        bios = client.read_bios()
        result = client.apply_bios({"Sme": "Enabled"})      # Dell: result.job_id = "JID_..."
        client.reset()
        client.wait_for_job(result.job_id, timeout=1800)
    print(client.requests_made)
"""

from __future__ import annotations

import email.utils
import logging
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exc
from sushy.connector import Connector
from sushy.resources.constants import PowerState, ResetType

if TYPE_CHECKING:
    from ccfactory.model import BmcConfig

log = logging.getLogger("ccfactory.redfish")

ROOT = "/redfish/v1/"


# ---------------------------------------------------------------- vendor quirks (all of them)


@dataclass(frozen=True)
class VendorQuirks:
    """How one vendor's BMC departs from plain DMTF Redfish, as data."""

    # attribute registry paths relative to the Bios resource, tried before the generic route
    registry_paths: tuple[str, ...] = ()
    # settings object relative to the Bios resource when Bios does not advertise one
    # (``@Redfish.Settings.SettingsObject``), tried in order
    settings_fallbacks: tuple[str, ...] = ("Settings",)
    # no settings object at all: PATCH the Bios resource itself
    patch_bios_without_settings: bool = False
    # ApplyTime sent with the PATCH when the BMC lists it in SupportedApplyTimes
    apply_time: str = "OnReset"
    # BIOS configuration jobs: poll path and explicit creation (Dell only)
    job_path: str | None = None
    job_create_path: str | None = None
    job_done: frozenset[str] = frozenset({"Completed"})
    job_failed: frozenset[str] = frozenset({"Failed", "CompletedWithErrors", "Aborted", "Cancelled"})
    source: str = ""


QUIRKS: Mapping[str, VendorQuirks] = {
    "dell": VendorQuirks(
        registry_paths=("BiosRegistry",),
        settings_fallbacks=("Settings",),
        job_path="/redfish/v1/Managers/iDRAC.Embedded.1/Oem/Dell/Jobs/{job_id}",
        job_create_path="/redfish/v1/Managers/iDRAC.Embedded.1/Oem/Dell/Jobs",
        source="cc-stack §1.1/§1.2: Bios/BiosRegistry; PATCH + ApplyTime creates a config job (Location -> JID); "
        "explicit POST Jobs {TargetSettingsURI} otherwise; 412 on If-Match with action POSTs (never sent)",
    ),
    "hpe": VendorQuirks(
        settings_fallbacks=("settings",),
        source="cc-stack §1.3: lower-case /systems/1/bios, PATCH bios/settings (405 on /bios); "
        "registry Location under /redfish/v1/registrystore (fixture)",
    ),
    "lenovo": VendorQuirks(
        settings_fallbacks=("Pending",),
        source="cc-stack §1.4: PATCH Bios/Pending, not Bios; registry under /redfish/v1/schemas/registries (fixture)",
    ),
    "supermicro": VendorQuirks(
        settings_fallbacks=("SD",),
        patch_bios_without_settings=True,
        source="fixture: settings object Bios/SD, registry /registries/BiosAttributeRegistry.1.0.0.json; "
        "older BMCs take the PATCH on Bios itself (cc-stack §1.5, libredfish PR #9)",
    ),
    "generic": VendorQuirks(
        settings_fallbacks=("Settings", "SD"),
        source="DMTF: Bios/Settings, AttributeRegistry in /redfish/v1/Registries; AMI MegaRAC keeps pending values "
        "at Bios/SD (fixtures: Supermicro SYS-821GE and NVIDIA DGX H100 Bios/SD; the Gigabyte H262-Z63 AMI mockup, "
        "Cray-HPE/csm-redfish-interface-emulator@4cb7a59e9c81:mockups/Gigabyte/Systems/Self/Bios, advertises no "
        "settings object and has no Bios/Settings)",
    ),
}


def quirks_for(vendor: str) -> VendorQuirks:
    """The quirks of ``vendor``; an OEM vendor without an entry behaves as ``generic``."""
    return QUIRKS.get(vendor, QUIRKS["generic"])


# ---------------------------------------------------------------- errors


class RedfishError(Exception):
    """A Redfish operation failed; the message names the BMC and the operation."""


class RedfishAuthError(RedfishError):
    """The BMC refused the credentials (401) or the user's privileges (403)."""


class RedfishTLSError(RedfishError):
    """The BMC's TLS certificate could not be verified, or the handshake failed."""


class RedfishUnavailable(RedfishError):
    """The BMC did not answer, or answered 5xx, after every retry."""


class RedfishTimeout(RedfishUnavailable):
    """No answer within the timeout (one request, or a job that never finished)."""


class RedfishRequestError(RedfishError):
    """The BMC refused the request (4xx other than 401/403)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RedfishJobFailed(RedfishError):
    """A BIOS configuration job ended in a failed state."""


# ---------------------------------------------------------------- transport


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff: waits backoff, 2*backoff, 4*backoff ... capped.

    Example::

        >>> [RetryPolicy(attempts=4, backoff=1.0).delay(i) for i in range(3)]
        [1.0, 2.0, 4.0]
    """

    attempts: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def delay(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * (2**retry))


_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Not-idempotent POSTs (reset, job creation) are retried only when the BMC cannot have
# acted: 429/503 answers and connections that never opened.
_POST_RETRY_STATUS = frozenset({429, 503})


class _Transport(requests.Session):
    """The requests session under sushy: retries, backoff and a request counter.

    sushy's own retry loop is disabled (``server_side_retries=0``) and this class
    raises only :class:`RedfishError`s for transport failures, so there is one retry
    policy, not two stacked ones.
    """

    def __init__(self, policy: RetryPolicy, label: str, sleep: Callable[[float], None]):
        super().__init__()
        self.policy = policy
        self.label = label
        self.sleep = sleep
        self.count = 0
        self.last_attempts = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        path = _path_of(url)
        for attempt in range(1, self.policy.attempts + 1):
            self.count += 1
            self.last_attempts = attempt
            last = attempt == self.policy.attempts
            try:
                response = super().request(method, url, *args, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise RedfishTLSError(
                    f"{self.label}: TLS failure on {method} {path}: {_first_line(exc)}; "
                    "fix: give the BMC's CA in bmc_ca_bundle (TLS verification stays on)"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if last or not _retry_after_exception(method, exc):
                    raise _transport_error(self.label, method, path, exc, attempt, kwargs.get("timeout")) from None
                self._wait(attempt, None, method, path, _first_line(exc))
                continue
            if response.status_code in _retryable_status(method) and not last:
                self._wait(attempt, response.headers.get("Retry-After"), method, path, f"HTTP {response.status_code}")
                response.close()
                continue
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def _wait(self, attempt: int, retry_after: str | None, method: str, path: str, why: str) -> None:
        delay = _retry_after(retry_after, self.policy) or self.policy.delay(attempt - 1)
        log.warning(
            "%s: %s %s: %s; retry %d/%d in %.1fs",
            self.label,
            method,
            path,
            why,
            attempt,
            self.policy.attempts - 1,
            delay,
        )
        self.sleep(delay)


def _retryable_status(method: str) -> frozenset[int]:
    return _POST_RETRY_STATUS if method.upper() == "POST" else _RETRY_STATUS


def _retry_after_exception(method: str, exc: Exception) -> bool:
    if method.upper() != "POST":
        return True
    # a POST is retried only if the connection never opened (the BMC cannot have acted)
    return isinstance(exc, requests.exceptions.ConnectTimeout) or "NewConnectionError" in repr(exc)


def _retry_after(header: str | None, policy: RetryPolicy) -> float | None:
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:  # an HTTP date
            seconds = email.utils.parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(policy.max_backoff, seconds))  # never wait longer than the policy allows


def _transport_error(label: str, method: str, path: str, exc: Exception, attempts: int, timeout: Any) -> RedfishError:
    tries = f"after {attempts} attempt(s)"
    if isinstance(exc, requests.exceptions.Timeout):
        limit = timeout[-1] if isinstance(timeout, tuple) else timeout
        return RedfishTimeout(f"{label}: {method} {path}: no answer within {limit}s {tries}")
    return RedfishUnavailable(f"{label}: {method} {path}: cannot connect {tries}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def _path_of(url: str) -> str:
    parts = requests.utils.urlparse(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class _Redactor(logging.Filter):
    """Masks the password and session token of live clients in log records.

    sushy logs BMC error bodies verbatim (e.g. when it falls back to basic auth); a BMC
    that echoes the submitted credentials must not put them in our logs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clients: weakref.WeakSet[RedfishClient] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for client in list(self.clients) for s in client._secret_values() if s]
        if secrets:
            message = original = record.getMessage()
            for secret in secrets:
                message = message.replace(secret, "***")
            if message != original:
                record.msg, record.args = message, ()
        return True


_REDACTOR = _Redactor()


def _install_redactor() -> None:
    """Attach the redactor to our logger and every sushy logger (filters do not propagate)."""
    names = ["ccfactory.redfish", *(n for n in logging.root.manager.loggerDict if n.startswith("sushy"))]
    for name in names:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


class _Connector(Connector):
    """sushy's connector with our transport (sushy keeps auth, sessions and error types)."""

    def __init__(self, base_url: str, *, verify: bool | str, timeout: float, transport: _Transport,
                 keep_alive: bool = False):
        super().__init__(base_url, verify=verify, server_side_retries=0, default_request_timeout=timeout)
        original: requests.Session = self._session  # type: ignore[has-type]  # sushy is untyped
        transport.headers.update(original.headers)  # sushy asks for Connection: close
        if keep_alive:  # one TCP + TLS connection for every request of this client
            transport.headers.pop("Connection", None)
        original.close()
        self._session = transport


class _Auth(sushy_auth.SessionOrBasicAuth):
    """Session, else basic auth; closing never raises (sushy closes from ``__del__`` too)."""

    def close(self) -> None:
        try:
            super().close()
        except Exception as exc:  # noqa: BLE001 - best effort logout; the message names no secret
            log.warning("could not delete the Redfish session: %s", type(exc).__name__)
            self.reset_session_attrs()


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class BiosSnapshot:
    """What the BMC says about BIOS settings, read at one time."""

    attributes: Mapping[str, Any]  # applied (Bios.Attributes)
    pending: Mapping[str, Any]  # the settings object's Attributes (staged; full copy on HPE/Lenovo)
    registry: Mapping[str, Any] | None  # the attribute registry document, if the BMC has one
    bios_path: str
    settings_path: str | None
    etag: str | None
    apply_times: tuple[str, ...] = ()
    # @Redfish.Settings Messages/Time: the outcome of the last apply at a reset, where
    # the BMC reports it (HPE, AMI); empty on BMCs that do not (Dell)
    settings_messages: tuple[Mapping[str, Any], ...] = ()
    settings_time: str | None = None
    # ComputerSystem ProcessorSummary.Model (DMTF ComputerSystem): what the capability check reads
    processors: tuple[str, ...] = ()

    def failed_messages(self) -> tuple[str, ...]:
        """Texts of the settings messages that report an error (not ``Success``).

        Example::

            snap.failed_messages()   # ('SettingsFailed: ... Snp ...',) after an apply the BIOS refused
        """
        out = []
        for m in self.settings_messages:
            ident = str(m.get("MessageId", ""))
            severity = str(m.get("Severity") or m.get("MessageSeverity") or "")
            if ident.rsplit(".", 1)[-1] in ("Success", "SettingsUpdated") or severity.upper() == "OK":
                continue
            text = str(m.get("Message") or ident or "unknown message")
            related = ", ".join(str(r) for r in m.get("RelatedProperties") or ())
            out.append(f"{ident}: {text}" + (f" ({related})" if related else ""))
        return tuple(out)


@dataclass(frozen=True)
class ApplyResult:
    settings_path: str
    status: int
    job_id: str | None = None  # Dell BIOS configuration job


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    message: str = ""
    percent: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------- the client


class RedfishClient:
    """One BMC. Thread-compatible, not thread-safe: use one client per host.

    ``keep_alive``: keep one HTTPS connection open for every request of the client (one TLS
    handshake per BMC; ``firmware plan`` reads a fleet this way). Off by default, as in
    sushy, which asks BMCs to close each connection because some choke on long-lived ones;
    the firmware role holds its client across reboots of tens of minutes.

    Example (against a reachable BMC)::

        client = RedfishClient("https://10.0.0.5", "root", password, vendor="dell", verify="/etc/ccf/ca.pem")
        client.power_state()  # 'On'
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        vendor: str = "generic",
        verify: bool | str = True,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        system_id: str | None = None,
        name: str | None = None,
        auth: Literal["auto", "basic"] = "auto",
        secret_hint: str = "the configured password",
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        keep_alive: bool = False,
    ):
        self.base_url = base_url.rstrip("/")
        self.vendor = vendor
        self.quirks = quirks_for(vendor)
        self.label = f"{name} (BMC {self.base_url})" if name else f"BMC {self.base_url}"
        self._username = username
        self._secrets = tuple(s for s in (password,) if s)
        self._secret_hint = secret_hint
        self._system_id = system_id
        # looked up at construction, not import: under pyinfra, gevent patches time.sleep first
        sleep, clock = sleep or time.sleep, clock or time.monotonic
        self._sleep, self._clock = sleep, clock
        _REDACTOR.clients.add(self)
        _install_redactor()
        self._transport = _Transport(retry or RetryPolicy(), self.label, sleep)
        self._conn = _Connector(self.base_url, verify=verify, timeout=timeout, transport=self._transport,
                                keep_alive=keep_alive)
        # "auto": a Redfish session (token) when the BMC offers one, else HTTP basic
        auth_obj: sushy_auth.AuthBase = (_Auth if auth == "auto" else sushy_auth.BasicAuth)(
            username=username, password=password
        )
        self._auth = auth_obj
        try:
            with self._call("connecting and logging in"):
                self._root = sushy.Sushy(self.base_url, auth=auth_obj, connector=self._conn)
        except RedfishError as exc:
            exc.requests_made = self._transport.count  # type: ignore[attr-defined]  # no client to ask
            raise
        self._system_path: str | None = None
        self._registry_cache: dict[str, Mapping[str, Any] | None] = {}

    @classmethod
    def from_config(cls, bmc: BmcConfig, *, host: str, retry: RetryPolicy | None = None, **kw: Any) -> RedfishClient:
        """A client for a host's ``BmcConfig``; the password is revealed here, at use, and kept
        out of every message.

        Example::

            client = RedfishClient.from_config(node_config(host).bmc, host=host.name)
        """
        verify: bool | str = bmc.ca_bundle or bmc.verify_tls
        return cls(
            bmc.base_url,
            bmc.username,
            bmc.password.reveal(),
            vendor=bmc.vendor,
            verify=verify,
            timeout=bmc.timeout,
            retry=retry or RetryPolicy(attempts=bmc.retries, backoff=bmc.retry_backoff),
            system_id=bmc.system_id,
            name=host,
            secret_hint=bmc.password.describe(),
            **kw,
        )

    # -- lifecycle

    @property
    def requests_made(self) -> int:
        """Every HTTP request sent so far, retries included."""
        return self._transport.count

    def close(self) -> None:
        """Log out (delete the Redfish session) and close the connection."""
        try:
            self._auth.close()
        finally:
            self._conn.close()

    def __enter__(self) -> RedfishClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- errors

    def _secret_values(self) -> tuple[str, ...]:
        token = getattr(getattr(self, "_auth", None), "get_session_key", lambda: None)()
        return tuple(s for s in (*self._secrets, token) if s)

    def _redact(self, text: str) -> str:
        for secret in self._secret_values():
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Turn sushy/requests errors into RedfishErrors that name the BMC and the operation."""
        try:
            yield
        except RedfishError as exc:  # from the transport: add what we were doing, keep type and fields
            exc.args = (self._redact(f"{exc} (while {what})"),)
            raise exc from None
        except sushy_exc.AccessError as exc:
            verb = "refused the credentials of" if exc.status_code == 401 else "denied the privileges of"
            raise RedfishAuthError(
                f"{self.label}: {what}: the BMC {verb} user {self._username!r} (HTTP {exc.status_code}); "
                f"fix: check bmc_username and the password in {self._secret_hint}"
                + ("" if exc.status_code == 401 else ", and give the user BIOS and power privileges")
            ) from None
        except sushy_exc.ServerSideError as exc:
            raise RedfishUnavailable(
                self._redact(
                    f"{self.label}: {what}: HTTP {exc.status_code} after {self._transport.last_attempts} attempt(s): "
                    f"{exc.detail or exc.code}"
                )
            ) from None
        except sushy_exc.HTTPError as exc:
            raise RedfishRequestError(
                self._redact(f"{self.label}: {what}: HTTP {exc.status_code}: {exc.detail or exc.code}"), exc.status_code
            ) from None
        except sushy_exc.SushyError as exc:
            raise RedfishError(self._redact(f"{self.label}: {what}: {exc}")) from None

    def _get(self, path: str, what: str) -> requests.Response:
        with self._call(what):
            return self._conn.get(path)

    def _json(self, path: str, what: str) -> dict[str, Any]:
        response = self._get(path, what)
        try:
            body = response.json()
        except ValueError:
            raise RedfishError(f"{self.label}: {what}: {path} did not return JSON") from None
        if not isinstance(body, dict):
            raise RedfishError(f"{self.label}: {what}: {path} returned {type(body).__name__}, not an object")
        return body

    # -- system

    @property
    def system_path(self) -> str:
        """The ComputerSystem: the configured id, or the only one the BMC has."""
        if self._system_path is None:
            self._system_path = self._find_system()
        return self._system_path

    def _find_system(self) -> str:
        with self._call("listing systems"):
            members = [m.rstrip("/") for m in self._root.get_system_collection().members_identities]
        ids = [m.rsplit("/", 1)[-1] for m in members]
        if self._system_id:
            for member, ident in zip(members, ids, strict=True):
                if ident == self._system_id:
                    return member
            raise RedfishError(
                f"{self.label}: no system {self._system_id!r} (bmc_system_id); the BMC has {', '.join(ids) or 'none'}"
            )
        if len(members) == 1:
            return members[0]
        if not members:
            raise RedfishError(f"{self.label}: the BMC lists no ComputerSystem")
        raise RedfishError(
            f"{self.label}: the BMC manages {len(members)} systems ({', '.join(ids)}); "
            "fix: set bmc_system_id to one of them"
        )

    def _system(self) -> Any:
        with self._call("reading the system"):
            return self._root.get_system(self.system_path)

    def power_state(self) -> str:
        """``On``, ``Off``, ``PoweringOn`` ... as the BMC reports it.

        Example::

            client.power_state()   # 'On'
        """
        system = self._system()
        state = system.power_state
        return state.value if isinstance(state, PowerState) else str(state)

    def reset(self, *, force: bool = False) -> str:
        """Restart the system; returns the ResetType used.

        GracefulRestart when allowed, else ForceRestart (``force``: ForceRestart, else
        PowerCycle); ``On`` when the system is off (a restart does nothing there).
        No ``If-Match``: iDRAC answers 412 to it on actions.

        Example::

            client.reset()             # 'GracefulRestart'
            client.reset(force=True)   # 'ForceRestart': the OS ignored the graceful one
        """
        system = self._system()
        with self._call("reading the allowed reset types"):
            allowed = system.get_allowed_reset_system_values()
        off = system.power_state == PowerState.OFF
        if off:
            preference: tuple[ResetType, ...] = (ResetType.ON,)
        elif force:
            preference = (ResetType.FORCE_RESTART, ResetType.POWER_CYCLE)
        else:
            preference = (ResetType.GRACEFUL_RESTART, ResetType.FORCE_RESTART)
        for kind in preference:
            if kind in allowed:
                with self._call(f"resetting the system ({kind.value})"):
                    system.reset_system(kind)
                self._registry_cache.clear()  # registries carry live flags (GrayOut, CurrentValue)
                return kind.value
        names = ", ".join(sorted(v.value for v in allowed))
        raise RedfishError(
            f"{self.label}: none of {', '.join(k.value for k in preference)} is allowed (allowed: {names})"
        )

    # -- BIOS

    def _bios_path(self) -> str:
        system = self._json(self.system_path, "reading the system")
        model = (system.get("ProcessorSummary") or {}).get("Model")
        self._processors = (str(model).strip(),) if isinstance(model, str) and model.strip() else ()
        path = (system.get("Bios") or {}).get("@odata.id")
        if not path:
            raise RedfishError(
                f"{self.label}: system {self.system_path} has no Bios link: this BMC exposes no BIOS attributes "
                "over Redfish; the firmware stage cannot manage it"
            )
        return str(path)

    def read_bios(self, *, registry: bool = True) -> BiosSnapshot:
        """Applied and pending attributes, the registry (cached per client), the settings ETag.

        Example::

            snap = client.read_bios()
            snap.attributes["Sme"], snap.pending.get("Sme"), snap.etag
        """
        bios_path = self._bios_path()
        bios = self._json(bios_path, "reading BIOS attributes")
        settings = bios.get("@Redfish.Settings") or {}
        settings_path = self._settings_path(bios_path, settings)
        pending: Mapping[str, Any] = {}
        etag = None
        if settings_path and settings_path.rstrip("/") != bios_path.rstrip("/"):
            response = self._get(settings_path, "reading pending BIOS settings")
            body = response.json() if response.content else {}
            pending = body.get("Attributes") or {}
            etag = response.headers.get("ETag") or body.get("@odata.etag")
        elif settings_path:
            etag = bios.get("@odata.etag")
        return BiosSnapshot(
            attributes=bios.get("Attributes") or {},
            pending=pending,
            registry=self._registry(bios_path, bios) if registry else None,
            bios_path=bios_path,
            settings_path=settings_path,
            etag=etag,
            apply_times=tuple(settings.get("SupportedApplyTimes") or ()),
            settings_messages=tuple(m for m in settings.get("Messages") or () if isinstance(m, Mapping)),
            settings_time=settings.get("Time"),
            processors=getattr(self, "_processors", ()),
        )

    def bios_attributes(self) -> Mapping[str, Any]:
        """Applied BIOS attributes (``Bios.Attributes``)."""
        return self.read_bios(registry=False).attributes

    def pending_attributes(self) -> Mapping[str, Any]:
        """The settings object's attributes (applied at the next reset)."""
        return self.read_bios(registry=False).pending

    def attribute_registry(self) -> Mapping[str, Any] | None:
        """The BIOS attribute registry document, or ``None`` if the BMC offers none."""
        bios_path = self._bios_path()
        return self._registry(bios_path, self._json(bios_path, "reading BIOS attributes"))

    def _settings_path(self, bios_path: str, settings: Mapping[str, Any]) -> str | None:
        advertised = (settings.get("SettingsObject") or {}).get("@odata.id")
        if advertised:
            return str(advertised)
        for fallback in self.quirks.settings_fallbacks:
            candidate = _join(bios_path, fallback)
            with self._call("looking for the BIOS settings object"):
                try:
                    self._conn.get(candidate)
                    return candidate
                except sushy_exc.ResourceNotFoundError:
                    pass
        if self.quirks.patch_bios_without_settings:
            return bios_path
        return None

    def _registry(self, bios_path: str, bios: Mapping[str, Any]) -> Mapping[str, Any] | None:
        key = str(bios.get("AttributeRegistry") or bios_path)
        if key not in self._registry_cache:
            self._registry_cache[key] = self._find_registry(bios_path, bios.get("AttributeRegistry"))
        return self._registry_cache[key]

    def _find_registry(self, bios_path: str, registry_id: str | None) -> Mapping[str, Any] | None:
        for relative in self.quirks.registry_paths:
            doc = self._optional_json(_join(bios_path, relative), "reading the BIOS attribute registry")
            if doc and "RegistryEntries" in doc:
                return doc
        file_doc = self._registry_file(registry_id) if registry_id else None
        for location in _locations(file_doc):
            doc = self._optional_json(location, "reading the BIOS attribute registry file")
            if doc and "RegistryEntries" in doc:
                return doc
        log.warning("%s: no BIOS attribute registry found; names resolve against Bios.Attributes only", self.label)
        return None

    def _registry_file(self, registry_id: str) -> Mapping[str, Any] | None:
        """``/redfish/v1/Registries/<id>``, else the one Bios registry in the collection."""
        collection = _join(ROOT, "Registries")
        doc = self._optional_json(_join(collection, registry_id), "reading the registry index")
        if doc:
            return doc
        listing = self._optional_json(collection, "listing registries") or {}
        members = [str(m.get("@odata.id", "")) for m in listing.get("Members") or ()]
        # Supermicro: Bios says BiosAttributeRegistry.v1_0_0, the member is .../BiosAttributeRegistry
        base = registry_id.split(".")[0].casefold()
        matches = [m for m in members if m.rstrip("/").rsplit("/", 1)[-1].split(".")[0].casefold() == base]
        return self._optional_json(matches[0], "reading the registry index") if len(matches) == 1 else None

    def _optional_json(self, path: str, what: str) -> dict[str, Any] | None:
        with self._call(what):
            try:
                response = self._conn.get(path)
            except sushy_exc.ResourceNotFoundError:
                return None
        try:
            body = response.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def apply_bios(self, attributes: Mapping[str, Any], *, snapshot: BiosSnapshot | None = None) -> ApplyResult:
        """PATCH the settings object with ``If-Match`` (its ETag) and, where the BMC lists
        it, ``@Redfish.SettingsApplyTime``. On Dell, returns the config job's id (taken from
        the ``Location`` header, or created with a POST to the job collection).

        Example::

            result = client.apply_bios(plan.patch)   # then reset, then wait_for_job on Dell
        """
        if not attributes:
            raise ValueError("apply_bios needs at least one attribute")
        snap = snapshot or self.read_bios(registry=False)
        if not snap.settings_path:
            raise RedfishError(f"{self.label}: the BMC advertises no BIOS settings object to PATCH")
        body: dict[str, Any] = {"Attributes": dict(attributes)}
        if self.quirks.apply_time in snap.apply_times:
            body["@Redfish.SettingsApplyTime"] = {"ApplyTime": self.quirks.apply_time}
        headers = {"If-Match": snap.etag} if snap.etag else {}
        # If-Match goes in headers, not sushy's etag argument: on 412 sushy would retry
        # without it, and a 412 means someone changed the pending settings: re-plan.
        with self._call(f"patching BIOS settings ({', '.join(attributes)})"):
            response = self._conn.patch(snap.settings_path, data=body, headers=headers)
        job_id = _job_id(response.headers.get("Location"))
        if self.quirks.job_path and not job_id:
            job_id = self._create_job(snap.settings_path)
        log.info(
            "%s: patched %s (%d attribute(s))%s",
            self.label,
            snap.settings_path,
            len(attributes),
            f", job {job_id}" if job_id else "",
        )
        return ApplyResult(snap.settings_path, response.status_code, job_id)

    def create_bios_job(self, settings_path: str | None = None) -> str:
        """Schedule a BIOS configuration job for the staged values (Dell); returns its id.

        For a re-run that finds values pending but no job: without one, iDRAC never
        applies them. Example: ``client.create_bios_job()`` -> ``'JID_...'``
        """
        if not self.quirks.job_create_path:
            raise RedfishError(f"{self.label}: vendor {self.vendor!r} has no BIOS configuration jobs")
        path = settings_path or self.read_bios(registry=False).settings_path
        if not path:
            raise RedfishError(f"{self.label}: the BMC advertises no BIOS settings object")
        return self._create_job(path)

    def scheduled_bios_job(self, *, newest: int = 10) -> JobStatus | None:
        """The BIOS configuration job waiting for the next reset (Dell), or ``None``.

        Looks at the ``newest`` jobs of the job queue (JIDs grow with time), so a long
        queue costs a bounded number of requests. Example::

            job = client.scheduled_bios_job()   # JobStatus('JID_...', 'Scheduled') or None
        """
        if not self.quirks.job_create_path:
            return None
        listing = self._json(self.quirks.job_create_path, "listing BIOS configuration jobs")
        ids = [str(m.get("@odata.id", "")).rstrip("/").rsplit("/", 1)[-1] for m in listing.get("Members") or ()]
        for job_id in sorted((i for i in ids if i.startswith("JID_")), reverse=True)[:newest]:
            status = self.job(job_id)
            kind = str(status.raw.get("JobType", "BIOSConfiguration"))
            if kind == "BIOSConfiguration" and status.state in ("Scheduled", "Running", "New", "Starting"):
                return status
        return None

    def _create_job(self, settings_path: str) -> str:
        assert self.quirks.job_create_path
        with self._call("creating the BIOS configuration job"):
            response = self._conn.post(self.quirks.job_create_path, data={"TargetSettingsURI": settings_path})
        job_id = _job_id(response.headers.get("Location"))
        if not job_id:
            raise RedfishError(
                f"{self.label}: job creation answered HTTP {response.status_code} without a job Location"
            )
        return job_id

    # -- jobs (Dell)

    def job(self, job_id: str) -> JobStatus:
        """One read of a BIOS configuration job (Dell).

        Example::

            client.job("JID_102241909559").state   # 'Scheduled', 'Running', 'Completed' ...
        """
        if not self.quirks.job_path:
            raise RedfishError(f"{self.label}: vendor {self.vendor!r} has no BIOS configuration jobs")
        body = self._json(self.quirks.job_path.format(job_id=job_id), f"reading job {job_id}")
        return JobStatus(
            job_id=job_id,
            state=str(body.get("JobState", "Unknown")),
            message=str(body.get("Message", "")),
            percent=body.get("PercentComplete"),
            raw=body,
        )

    def wait_for_job(self, job_id: str, *, timeout: float = 1800.0, interval: float = 15.0) -> JobStatus:
        """Poll a job until it completes; :class:`RedfishJobFailed` if it fails,
        :class:`RedfishTimeout` if it is still running after ``timeout`` seconds.

        Example::

            client.reset()
            client.wait_for_job(result.job_id, timeout=cfg.reboot.timeout)
        """
        deadline = self._clock() + timeout
        while True:
            status = self.job(job_id)
            if status.state in self.quirks.job_done:
                return status
            if status.state in self.quirks.job_failed:
                raise RedfishJobFailed(
                    f"{self.label}: BIOS job {job_id} {status.state}: {status.message or 'no message'}"
                )
            if self._clock() >= deadline:
                raise RedfishTimeout(
                    f"{self.label}: BIOS job {job_id} still {status.state} after {timeout:.0f}s ({status.message})"
                )
            self._sleep(interval)


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative.lstrip("/")


def _job_id(location: str | None) -> str | None:
    """Dell puts the job in the Location header; its last segment is the JID."""
    if not location:
        return None
    last = location.rstrip("/").rsplit("/", 1)[-1]
    return last if last.startswith("JID_") else None


def _locations(file_doc: Mapping[str, Any] | None) -> list[str]:
    """Registry file URIs of a MessageRegistryFile, English first; never PublicationUri (internet)."""
    if not file_doc:
        return []
    entries = [e for e in file_doc.get("Location") or () if isinstance(e, Mapping) and e.get("Uri")]
    entries.sort(key=lambda e: 0 if str(e.get("Language", "en")).lower().startswith("en") else 1)
    return [str(e["Uri"]) for e in entries]
