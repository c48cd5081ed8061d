"""The KBS stage's settings for one KBS host: inventory keys, checked on the controller.

Reads the KBS host's validated ``NodeConfig`` (``kbs_url``, ``kbs_ca_cert``, ``lab``) and
its host-data keys of this stage (declared, with their meanings, in ``roles/kbs/options.py``). Every problem is collected and raised at once as a
``KbsSettingsError`` (``host: key: problem; fix: ...``) before anything is touched.

Example::

    settings = kbs_settings(cfg, host.data.dict())
    settings.resources        # {"models/llama/key": Path(...)}
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ccfactory.kbs.errors import KbsSettingsError, SettingProblem
from ccfactory.kbs.pki import PkiSources
from ccfactory.validate import (
    RESOURCE_PATH_RE,
    regular_file_problem,
    safe_path_component,
    secret_file_problem,
    url_problem,
)

# KBS resource path rule: kbs/src/plugins/implementations/resource/backend.rs (ResourceDesc).
# Always matched with fullmatch: '$' would let a trailing newline through.
RESOURCE_PATH = RESOURCE_PATH_RE
REFERENCE_VALUE_NAME = re.compile(r"\A[A-Za-z0-9_.\-]+\Z")
DEFAULT_PKI_ROOT = "~/.ccfactory/sites"  # $CCFACTORY_HOME/sites when that is set



def check_resource_path(path: str) -> str:
    """The path if it follows ``<repo>/<type>/<tag>`` (the KBS's own rule), else ``ResourcePathError``."""
    from ccfactory.kbs.errors import ResourcePathError

    if not isinstance(path, str) or not RESOURCE_PATH.fullmatch(path):
        raise ResourcePathError(
            f"resource path {path!r} breaks the KBS rule <repo>/<type>/<tag> (three segments of letters, digits, "
            "'_', '-', '.', not starting with '.'); fix: e.g. models/llama-3/key"
        )
    return path


class _Problems:
    """The problems found for one host, each as (key, message, fix): config reports them as
    its own ``Problem`` rows, and ``KbsSettingsError`` prints them, without parsing text."""

    def __init__(self, host: str) -> None:
        self.host, self.found = host, []

    def add(self, key: str, message: str, fix: str = "") -> None:
        self.found.append(SettingProblem(self.host, key, message, fix))


@dataclass(frozen=True)
class KbsSettings:
    host: str
    url: str
    scheme: str  # https (http only in the lab)
    port: int
    lab: bool
    pki_dir: Path
    sources: PkiSources
    resources: dict[str, Path] = field(default_factory=dict)
    gpu_resources: tuple[str, ...] | None = None
    policy_file: Path | None = None
    attestation_policy_file: Path | None = None
    reference_values: dict[str, Any] = field(default_factory=dict)
    tdx_first_use: dict[str, str] = field(default_factory=dict)  # worker -> approved EAR token file
    lab_permissive: bool = False
    nvidia_verifier: str = "Remote"

    @property
    def insecure_http(self) -> bool:
        return self.scheme == "http"

    @property
    def socket(self) -> str:
        return f"0.0.0.0:{self.port}"


def _readable_file(value: Any, key: str, host: str, problems: _Problems, *, secret: bool = False) -> Path | None:
    """The path of an ordinary readable file (``regular_file_problem``: no directory, device,
    FIFO or /proc file); with ``secret``, a private one (``secret_file_problem``: regular, no
    symlink, owned by the controller user, 0600 or stricter)."""
    if value in (None, ""):
        return None
    try:
        path = Path(str(value)).expanduser()
    except RuntimeError:  # ~user that does not exist here
        problems.add(key, f"{value}: '~' names no user on the controller", "fix the path")
        return None
    if not os.path.lexists(path):
        problems.add(key, f"file {path} does not exist on the controller", "fix the path")
        return None
    bad = secret_file_problem(path) if secret else regular_file_problem(path)
    if bad:
        fix = "a regular file owned by you, chmod 600, not a symlink" if secret else "name an ordinary file"
        problems.add(key, f"{bad}", f"{fix}")
        return None
    return path


def load_reference_values_file(path: Path) -> dict[str, Any]:
    """``name = value or [values]`` from a TOML or JSON file, as given (shaped later, per the
    attestation policy: ``ccfactory.kbs.refvalues.shaped``)."""
    import json

    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise KbsSettingsError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # bad JSON or TOML, or not UTF-8 text
        raise KbsSettingsError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise KbsSettingsError(f"{path}: must be a {kind} table of name = [values], not a {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def kbs_settings(cfg, data: Mapping[str, Any], *, fleet_urls: tuple[str, ...] = ()) -> KbsSettings:
    """Settings of KBS host ``cfg`` (a ``NodeConfig``) from its host data ``data``."""
    host = cfg.name
    problems = _Problems(host)
    get = data.get
    url = cfg.kbs.url or ""
    bad_url = url_problem(url, https_only=not cfg.lab, path=False) if url else None
    if not url:
        problems.add("kbs_url", "the KBS host needs its own kbs_url (the URL it serves)", f"set it, e.g. https://{host}:8443")
    elif bad_url is not None:
        message, secret = bad_url
        shown = "it" if secret else url  # a URL with user information is never printed
        if message == "must use https":
            problems.add("kbs_url", f"{url} is not https; plain HTTP is only for the lab", "use https://")
        else:
            problems.add("kbs_url", f"{shown} {message}", "use https://host[:port]")
    parts = urlsplit(url) if url and bad_url is None else None
    scheme = parts.scheme if parts else "https"
    port = (parts.port or (443 if scheme == "https" else 80)) if parts else 443

    permissive = bool(get("kbs_lab_permissive", False))
    if permissive and not cfg.lab:
        problems.add("kbs_lab_permissive", "a permissive resource policy releases keys without TEE attestation and is refused outside the lab", "remove kbs_lab_permissive")

    resources: dict[str, Path] = {}
    raw_resources = get("kbs_resources") or {}
    if not isinstance(raw_resources, Mapping):
        problems.add("kbs_resources", "must map <repo>/<type>/<tag> to a controller-side file")
        raw_resources = {}
    for path, file in raw_resources.items():
        if not isinstance(path, str) or not RESOURCE_PATH.fullmatch(path):
            problems.add("kbs_resources", f"{path!r} breaks the KBS path rule <repo>/<type>/<tag>", "e.g. models/llama-3/key")
            continue
        resolved = _readable_file(file, f"kbs_resources[{path}]", host, problems)  # no /proc, devices, FIFOs
        if resolved is not None:
            resources[path] = resolved

    gpu_resources = get("kbs_gpu_resources")
    if gpu_resources is not None:
        bad = [p for p in gpu_resources if not isinstance(p, str) or not RESOURCE_PATH.fullmatch(p)]
        if bad:
            problems.add("kbs_gpu_resources", f"{bad} break the KBS path rule <repo>/<type>/<tag>", "e.g. models/llama-3/key")
        gpu_resources = tuple(p for p in gpu_resources if p not in bad)

    given: dict[str, Any] = {}
    rv_file = _readable_file(get("kbs_reference_values_file"), "kbs_reference_values_file", host, problems)
    if rv_file is not None:
        try:
            given.update(load_reference_values_file(rv_file))
        except KbsSettingsError as exc:
            problems.add("kbs_reference_values_file", f"{exc}")
    given.update({str(k): v for k, v in (get("kbs_reference_values") or {}).items()})

    verifier = get("kbs_nvidia_verifier", "Remote") or "Remote"
    if verifier not in ("Remote", "Local"):
        problems.add("kbs_nvidia_verifier", f"{verifier!r}", "Remote (NRAS) or Local")

    sources = PkiSources(
        ca_cert=cfg.kbs.ca_cert,
        ca_key=get("kbs_ca_key_file"),
        server_cert=get("kbs_tls_cert_file"),
        server_key=get("kbs_tls_key_file"),
        admin_key=get("kbs_admin_key_file"),
    )
    for key in ("kbs_ca_key_file", "kbs_tls_key_file", "kbs_admin_key_file"):  # private keys
        _readable_file(get(key), key, host, problems, secret=True)
    _readable_file(get("kbs_tls_cert_file"), "kbs_tls_cert_file", host, problems)
    if sources.ca_key and not sources.ca_cert:
        problems.add("kbs_ca_key_file", "set without kbs_ca_cert", "set kbs_ca_cert to its certificate")

    policy_file = _readable_file(get("kbs_policy_file"), "kbs_policy_file", host, problems)
    if policy_file is not None and permissive:
        problems.add("kbs_policy_file", "set together with kbs_lab_permissive", "keep one")
    attestation_policy = _readable_file(get("kbs_attestation_policy_file"), "kbs_attestation_policy_file", host, problems)
    reference_values = _shaped_reference_values(given, attestation_policy, host, problems)
    tdx_first_use = {}
    for worker, path in (get("kbs_tdx_first_use") or {}).items():
        if _readable_file(path, f"kbs_tdx_first_use[{worker}]", host, problems) is not None:
            tdx_first_use[str(worker)] = str(path)

    for other in fleet_urls:
        if other and urlsplit(other).scheme != "https" and not cfg.lab:
            problems.add("kbs_url", f"a worker uses {other}; plain HTTP is only for the lab")

    root = f"{os.environ['CCFACTORY_HOME']}/sites" if os.environ.get("CCFACTORY_HOME") else DEFAULT_PKI_ROOT
    pki_dir = None
    try:
        pki_dir = Path(get("kbs_pki_dir") or f"{root}/{_site_name(host)}/pki").expanduser()
    except RuntimeError:  # ~user that does not exist here
        key = "kbs_pki_dir" if get("kbs_pki_dir") else "CCFACTORY_HOME"
        problems.add(key, "'~' names no user on the controller", "fix the path")
    if problems.found:
        raise KbsSettingsError(problems.found)
    return KbsSettings(
        host=host,
        url=url.rstrip("/"),
        scheme=scheme,
        port=port,
        lab=cfg.lab,
        pki_dir=pki_dir,
        sources=sources,
        resources=resources,
        gpu_resources=gpu_resources,
        policy_file=policy_file,
        attestation_policy_file=attestation_policy,
        reference_values=reference_values,
        tdx_first_use=tdx_first_use,
        lab_permissive=permissive,
        nvidia_verifier=verifier,
    )


def _shaped_reference_values(given: Mapping[str, Any], policy_file: Path | None, host: str, problems: _Problems) -> dict[str, Any]:
    """The operator's values in the shape the attestation policy compares them with: a list for
    names tested with ``in``, one value for names tested with ``==`` (``ccfactory.kbs.refvalues``;
    wrapping every scalar in a list would disable the default policy's strict checks)."""
    from ccfactory.kbs import refvalues

    shapes = {**refvalues.DEFAULT_CPU_SHAPES, **refvalues.DEFAULT_GPU_SHAPES}
    if policy_file is not None:
        try:
            shapes = {**refvalues.DEFAULT_GPU_SHAPES, **refvalues.reference_value_shapes(policy_file.read_text())}
        except (OSError, UnicodeDecodeError, refvalues.ReferenceValueError) as exc:
            problems.add("kbs_attestation_policy_file", f"{exc}", "compare each reference value one way")
    out: dict[str, Any] = {}
    for name, value in given.items():
        items = value if isinstance(value, list) else [value]
        if not REFERENCE_VALUE_NAME.fullmatch(name):
            problems.add("kbs_reference_values", f"{name!r} is not a reference value name")
        elif not items or not all(isinstance(v, (str, int, bool)) for v in items):
            problems.add("kbs_reference_values", f"{name}: give a string, integer or boolean, or a non-empty list of them")
        else:
            try:
                out[name] = refvalues.shaped(name, value, shapes)
            except refvalues.ReferenceValueError as exc:
                problems.add("kbs_reference_values", f"{exc}")
    return out


def _site_name(host: str) -> str:
    """The host name as one path component under sites/ (never '.', '..' or with a '/')."""
    return safe_path_component(host)


def server_names(host: str, data: Mapping[str, Any]) -> list[str]:
    """Names the KBS HTTPS certificate carries for the host itself (name, ssh_hostname)."""
    names = [host.split("/")[-1].lstrip("@")]
    if data.get("ssh_hostname"):
        names.append(str(data["ssh_hostname"]))
    out = []
    for name in names:
        try:
            out.append(str(ipaddress.ip_address(name)))
        except ValueError:
            out.append(name)
    return list(dict.fromkeys(out))
