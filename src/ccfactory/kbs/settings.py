"""The KBS stage's settings for one KBS host: inventory keys, checked on the controller.

Reads the KBS host's validated ``NodeConfig`` (``kbs_url``, ``kbs_ca_cert``, ``lab``) and
its flat host-data keys of this stage (see ``KEYS``; the lead registers them in
``ccfactory.config.HostData``). Every problem is collected and raised at once as a
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

from ccfactory.kbs.errors import KbsSettingsError
from ccfactory.kbs.pki import PkiSources

# KBS resource path rule: kbs/src/plugins/implementations/resource/backend.rs (ResourceDesc)
_SEGMENT = r"[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*"
RESOURCE_PATH = re.compile(rf"^(?P<repo>{_SEGMENT})/(?P<type>{_SEGMENT})/(?P<tag>{_SEGMENT})$")
REFERENCE_VALUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
DEFAULT_PKI_ROOT = "~/.ccfactory/sites"  # $CCFACTORY_HOME/sites when that is set

# Host-data keys of this stage (name -> (type, default, meaning)); for the lead's HostData.
KEYS: dict[str, tuple[str, Any, str]] = {
    "kbs_resources": ("dict[str, str]", {}, "Resources to upload: KBS path `<repo>/<type>/<tag>` -> controller-side file."),
    "kbs_gpu_resources": ("list[str] | None", None, "Resource paths that also need an affirming GPU attestation; unset: all, when the inventory has GPU workers."),
    "kbs_policy_file": ("str | None", None, "Controller-side Rego file replacing ccfactory's strict resource policy (the every-run sample-denial check still applies)."),
    "kbs_attestation_policy_file": ("str | None", None, "Controller-side Rego file replacing Trustee's default attestation policy (id `default`)."),
    "kbs_reference_values": ("dict[str, list]", {}, "Reference values for RVPS by name, e.g. `{\"snp_launch_measurement\": [\"...\"]}`."),
    "kbs_reference_values_file": ("str | None", None, "Controller-side TOML/JSON file of reference values (name = [values]); the inventory key wins per name."),
    "kbs_lab_permissive": ("bool", False, "LAB ONLY: release resources to any attested client, sample evidence included. Refused outside the lab."),
    "kbs_pki_dir": ("str | None", None, "Controller-side directory of the KBS keys and certificates (default `~/.ccfactory/sites/<kbs host>/pki`, `$CCFACTORY_HOME/sites/...` if set)."),
    "kbs_ca_key_file": ("str | None", None, "Private key of `kbs_ca_cert`, to issue the KBS HTTPS certificate with the operator's CA."),
    "kbs_tls_cert_file": ("str | None", None, "Operator-provided KBS HTTPS certificate (issued by `kbs_ca_cert`, covering kbs_url)."),
    "kbs_tls_key_file": ("str | None", None, "Its private key (mode 0600)."),
    "kbs_admin_key_file": ("str | None", None, "Operator-provided Ed25519 admin private key (PKCS#8 PEM, 0600); never leaves the controller."),
    "kbs_nvidia_verifier": ("`Remote` | `Local`", "Remote", "NVIDIA GPU verifier of the attestation service: `Remote` (NRAS) or `Local`."),
}  # fmt: skip


def check_resource_path(path: str) -> str:
    """The path if it follows ``<repo>/<type>/<tag>`` (the KBS's own rule), else ``ResourcePathError``."""
    from ccfactory.kbs.errors import ResourcePathError

    if not isinstance(path, str) or not RESOURCE_PATH.match(path):
        raise ResourcePathError(
            f"resource path {path!r} breaks the KBS rule <repo>/<type>/<tag> (three segments of letters, digits, "
            "'_', '-', '.', not starting with '.'); fix: e.g. models/llama-3/key"
        )
    return path


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
    reference_values: dict[str, list] = field(default_factory=dict)
    lab_permissive: bool = False
    nvidia_verifier: str = "Remote"

    @property
    def insecure_http(self) -> bool:
        return self.scheme == "http"

    @property
    def socket(self) -> str:
        return f"0.0.0.0:{self.port}"


def _readable_file(value: Any, key: str, host: str, problems: list[str]) -> Path | None:
    if value in (None, ""):
        return None
    try:
        path = Path(str(value)).expanduser()
    except RuntimeError:  # ~user that does not exist here
        problems.append(f"{host}: {key}: {value}: '~' names no user on the controller; fix the path")
        return None
    if not path.is_file():
        problems.append(f"{host}: {key}: file {path} does not exist on the controller; fix the path")
        return None
    if not os.access(path, os.R_OK):
        problems.append(f"{host}: {key}: file {path} is not readable; fix its permissions")
        return None
    return path


def load_reference_values_file(path: Path) -> dict[str, list]:
    """``name = [values]`` from a TOML or JSON file (a scalar becomes a one-item list)."""
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
    return {str(k): (v if isinstance(v, list) else [v]) for k, v in data.items()}


def kbs_settings(cfg, data: Mapping[str, Any], *, fleet_urls: tuple[str, ...] = ()) -> KbsSettings:
    """Settings of KBS host ``cfg`` (a ``NodeConfig``) from its host data ``data``."""
    host = cfg.name
    problems: list[str] = []
    get = data.get
    url = cfg.kbs.url or ""
    parts = urlsplit(url) if url else None
    if not url:
        problems.append(f"{host}: kbs_url: the KBS host needs its own kbs_url (the URL it serves); fix: set it, e.g. https://{host}:8443")
    elif parts.scheme != "https" and not cfg.lab:
        problems.append(f"{host}: kbs_url: {url} is not https; plain HTTP is only for the lab; fix: use https://")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{host}: kbs_url: {url} is not an http(s) URL with a host")
    if parts is not None and parts.path not in ("", "/"):
        problems.append(f"{host}: kbs_url: {url} has a path; the KBS serves /kbs/v0 at the root; fix: drop the path")
    scheme = parts.scheme if parts else "https"
    port = (parts.port if parts and parts.port else (443 if scheme == "https" else 80)) if parts else 443

    permissive = bool(get("kbs_lab_permissive", False))
    if permissive and not cfg.lab:
        problems.append(
            f"{host}: kbs_lab_permissive: a permissive resource policy releases keys without TEE attestation and is "
            "refused outside the lab; fix: remove kbs_lab_permissive"
        )

    resources: dict[str, Path] = {}
    raw_resources = get("kbs_resources") or {}
    if not isinstance(raw_resources, Mapping):
        problems.append(f"{host}: kbs_resources: must map <repo>/<type>/<tag> to a controller-side file")
        raw_resources = {}
    for path, file in raw_resources.items():
        if not isinstance(path, str) or not RESOURCE_PATH.match(path):
            problems.append(
                f"{host}: kbs_resources: {path!r} breaks the KBS path rule <repo>/<type>/<tag>; fix: e.g. models/llama-3/key"
            )
            continue
        resolved = _readable_file(file, f"kbs_resources[{path}]", host, problems)
        if resolved is not None:
            resources[path] = resolved

    gpu_resources = get("kbs_gpu_resources")
    if gpu_resources is not None:
        bad = [p for p in gpu_resources if not isinstance(p, str) or not RESOURCE_PATH.match(p)]
        if bad:
            problems.append(f"{host}: kbs_gpu_resources: {bad} break the KBS path rule <repo>/<type>/<tag>")
        gpu_resources = tuple(p for p in gpu_resources if p not in bad)

    reference_values: dict[str, list] = {}
    rv_file = _readable_file(get("kbs_reference_values_file"), "kbs_reference_values_file", host, problems)
    if rv_file is not None:
        try:
            reference_values.update(load_reference_values_file(rv_file))
        except KbsSettingsError as exc:
            problems.append(f"{host}: kbs_reference_values_file: {exc}")
    for name, values in (get("kbs_reference_values") or {}).items():
        reference_values[str(name)] = values if isinstance(values, list) else [values]
    for name, values in reference_values.items():
        if not REFERENCE_VALUE_NAME.match(name):
            problems.append(f"{host}: kbs_reference_values: {name!r} is not a reference value name")
        elif not values or not all(isinstance(v, (str, int, bool)) for v in values):
            problems.append(f"{host}: kbs_reference_values: {name}: give a non-empty list of strings, integers or booleans")

    verifier = get("kbs_nvidia_verifier", "Remote") or "Remote"
    if verifier not in ("Remote", "Local"):
        problems.append(f"{host}: kbs_nvidia_verifier: {verifier!r}; fix: Remote (NRAS) or Local")

    sources = PkiSources(
        ca_cert=cfg.kbs.ca_cert,
        ca_key=get("kbs_ca_key_file"),
        server_cert=get("kbs_tls_cert_file"),
        server_key=get("kbs_tls_key_file"),
        admin_key=get("kbs_admin_key_file"),
    )
    for key in ("kbs_ca_key_file", "kbs_tls_cert_file", "kbs_tls_key_file", "kbs_admin_key_file"):
        _readable_file(get(key), key, host, problems)
    if sources.ca_key and not sources.ca_cert:
        problems.append(f"{host}: kbs_ca_key_file: set without kbs_ca_cert; fix: set kbs_ca_cert to its certificate")

    policy_file = _readable_file(get("kbs_policy_file"), "kbs_policy_file", host, problems)
    if policy_file is not None and permissive:
        problems.append(f"{host}: kbs_policy_file: set together with kbs_lab_permissive; fix: keep one")
    attestation_policy = _readable_file(get("kbs_attestation_policy_file"), "kbs_attestation_policy_file", host, problems)

    for other in fleet_urls:
        if other and urlsplit(other).scheme != "https" and not cfg.lab:
            problems.append(f"{host}: kbs_url: a worker uses {other}; plain HTTP is only for the lab")

    if problems:
        raise KbsSettingsError("KBS settings are not usable, nothing was touched:\n  - " + "\n  - ".join(problems))
    root = f"{os.environ['CCFACTORY_HOME']}/sites" if os.environ.get("CCFACTORY_HOME") else DEFAULT_PKI_ROOT
    pki_dir = Path(get("kbs_pki_dir") or f"{root}/{_site_name(host)}/pki").expanduser()
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
        lab_permissive=permissive,
        nvidia_verifier=verifier,
    )


def _site_name(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", host)


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
