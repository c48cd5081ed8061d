"""Trustee v0.21.0's KBS config file, read the way serde reads it (TOML only).

Upstream (trustee@v0.21.0): ``kbs/src/config.rs:109-179`` (``KbsConfig``: ``http_server`` and
``admin`` are required tables, everything else has defaults), ``kbs/src/attestation/config.rs``,
``kbs/src/attestation/coco/builtin.rs:20-39``, ``attestation-service/src/ear_token/mod.rs:23-91``,
``kbs/src/token/mod.rs:22-63``, ``deps/key-value-storage/src/lib.rs:64-176``,
``kbs/src/plugins/plugin_manager.rs:64-84``.

Unknown keys: serde ignores them everywhere except in the ``[admin]`` tree, whose types all
carry ``#[serde(deny_unknown_fields)]`` (``kbs/src/admin/mod.rs:53``,
``admin/authentication/mod.rs:29``, ``admin/authentication/bearer_jwt.rs:18,32``,
``admin/authorization/mod.rs:26``, ``admin/authorization/regex_acl.rs:13,24``). That is the
only place where the stand-in refuses unknown keys.

What the stand-in cannot simulate (another attestation service, other storage or plugin
backends, remote key URIs) is refused at start with a message saying so.
"""

from __future__ import annotations

import re
import tomllib

DEFAULT_SOCKET = "127.0.0.1:8080"  # config.rs:19
DEFAULT_LOCAL_FS_DIR = "/opt/confidential-containers/storage/local_fs"  # key-value-storage local_fs/mod.rs:21
EAR_DEFAULTS = {  # attestation-service/src/ear_token/mod.rs:11-21,79-91
    "duration_min": 5,
    "issuer_name": "CoCo-Attestation-Service",
    "developer_name": "https://confidentialcontainers.org",
    "build_name": "attestation-service 0.1.0",  # CARGO_PKG_NAME CARGO_PKG_VERSION of attestation-service
    "profile_name": "tag:github.com,2024:confidential-containers/Trustee",
    "signer": None,
    "verbose_token": True,
}


class ConfigError(Exception):
    """The KBS refuses to start (message as printed after ``Error:``)."""


class StandinLimit(ConfigError):
    """Valid for Trustee, but the stand-in cannot simulate it."""


def _table(parent: dict, key: str, where: str, *, required: bool = False) -> dict:
    if key not in parent:
        if required:
            raise ConfigError(f"missing field `{key}`" + (f" in `{where}`" if where else ""))
        return {}
    value = parent[key]
    if not isinstance(value, dict):
        raise ConfigError(f"invalid type for `{(where + '.') if where else ''}{key}`: expected a table")
    return value


def _deny_unknown(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(f"`{a}`" for a in allowed) or "nothing"
            raise ConfigError(f"unknown field `{key}`, expected one of {expected} for key `{where}`")


def _typed(table: dict, key: str, kind, default, where: str):
    if key not in table:
        return default
    value = table[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"invalid type for `{where}.{key}`")
    return value


def rust_regex(pattern: str) -> str:
    """Rust ``regex`` named groups ``(?<n>..)`` in Python ``re`` form (Rust has no look-behind)."""
    return re.sub(r"\(\?<(?![=!])", "(?P<", pattern)


def _admin(config: dict) -> dict:
    admin = _table(config, "admin", "", required=True)
    mode = admin.get("authorization_mode")
    if mode is None:
        raise ConfigError("missing field `authorization_mode` for key `admin`")
    if mode in ("InsecureAllowAll", "DenyAll"):
        _deny_unknown(admin, ("authorization_mode",), "admin")
        return {"mode": mode}
    if mode != "AuthenticatedAuthorization":
        raise ConfigError(f"unknown variant `{mode}`, expected one of `InsecureAllowAll`, `DenyAll`, "
                          "`AuthenticatedAuthorization` for key `admin`")  # fmt: skip
    _deny_unknown(admin, ("authorization_mode", "authentication", "authorization"), "admin")
    authentication = _table(admin, "authentication", "admin", required=True)
    _deny_unknown(authentication, ("bearer_jwt",), "admin.authentication")
    if "bearer_jwt" not in authentication:
        raise ConfigError("unknown variant, expected `bearer_jwt` for key `admin.authentication`")
    bearer = _table(authentication, "bearer_jwt", "admin.authentication")
    _deny_unknown(bearer, ("identity_providers",), "admin.authentication.bearer_jwt")
    idps = []
    for index, idp in enumerate(bearer.get("identity_providers", [])):
        if not isinstance(idp, dict):
            raise ConfigError("invalid type for `admin.authentication.bearer_jwt.identity_providers`")
        _deny_unknown(idp, ("issuer", "audience", "public_key_uri", "jwk_set_uri"),
                      f"admin.authentication.bearer_jwt.identity_providers[{index}]")  # fmt: skip
        idps.append({k: idp.get(k) for k in ("issuer", "audience", "public_key_uri", "jwk_set_uri")})
    authorization = _table(admin, "authorization", "admin", required=True)
    _deny_unknown(authorization, ("regex_acl",), "admin.authorization")
    if "regex_acl" not in authorization:
        raise ConfigError("unknown variant, expected `regex_acl` for key `admin.authorization`")
    regex_acl = _table(authorization, "regex_acl", "admin.authorization")
    _deny_unknown(regex_acl, ("acls",), "admin.authorization.regex_acl")
    acls = []
    for index, rule in enumerate(regex_acl.get("acls", [])):
        if not isinstance(rule, dict):
            raise ConfigError("invalid type for `admin.authorization.regex_acl.acls`")
        _deny_unknown(rule, ("role", "allowed_endpoints"), f"admin.authorization.regex_acl.acls[{index}]")
        if "role" not in rule:
            raise ConfigError(f"missing field `role` for key `admin.authorization.regex_acl.acls[{index}]`")
        acls.append({"role": rule["role"], "allowed_endpoints": rule.get("allowed_endpoints", "")})
    # kbs/src/admin/mod.rs:69-97 (AdminConfig::validate), then regex_acl.rs:40-57
    if not idps:
        raise ConfigError("failed to initialize [admin] configuration: admin configuration error: "
                          "AuthenticatedAuthorization requires at least one `identity_providers` entry in "
                          "[admin.authentication.bearer_jwt] (see kbs/docs/admin.md and "
                          "kbs/docs/config.md#admin-api-configuration)")  # fmt: skip
    for index, idp in enumerate(idps):
        if not idp["public_key_uri"] and not idp["jwk_set_uri"]:
            raise ConfigError(f"failed to initialize [admin] configuration: admin configuration error: "
                              f"identity_providers[{index}] must set `public_key_uri` and/or `jwk_set_uri` "
                              "(see kbs/docs/admin.md and kbs/docs/config.md#admin-api-configuration)")  # fmt: skip
    for rule in acls:
        pattern = rule["allowed_endpoints"]
        if not pattern.startswith("^/kbs") or not pattern.endswith("$"):
            raise ConfigError("failed to initialize [admin] configuration: Admin Role regex must be anchored.")
        try:
            rule["regex"] = re.compile(rust_regex(pattern))
        except re.error as exc:
            raise ConfigError(f"failed to initialize [admin] configuration: Failed to parse regex: {exc}") from None
    return {"mode": mode, "identity_providers": idps, "acls": acls}


def _storage(config: dict) -> dict:
    storage = _table(config, "storage_backend", "")
    kind = storage.get("storage_type", "Memory")
    aliases = {"memory": "Memory", "local_fs": "LocalFs", "local_json": "LocalJson", "postgres": "Postgres", "redis": "Redis"}
    kind = aliases.get(kind, kind)
    if kind not in ("Memory", "LocalFs", "LocalJson", "Postgres", "Redis"):
        raise ConfigError(f"unknown variant `{kind}` for key `storage_backend.storage_type`")
    if kind not in ("Memory", "LocalFs"):
        raise StandinLimit(f"storage_backend.storage_type {kind!r} (the stand-in has Memory and LocalFs)")
    backends = _table(storage, "backends", "storage_backend")
    dir_path = None
    if kind == "LocalFs":
        if "local_fs" not in backends:  # key-value-storage lib.rs:137-145
            raise ConfigError("Storage backend initialization failed: invalid configuration: "
                              "Local FS configuration is required")  # fmt: skip
        dir_path = _typed(_table(backends, "local_fs", "storage_backend.backends"), "dir_path", str,
                          DEFAULT_LOCAL_FS_DIR, "storage_backend.backends.local_fs")  # fmt: skip
    return {"type": kind, "dir_path": dir_path}


def _attestation_service(config: dict) -> dict:
    service = _table(config, "attestation_service", "")
    kind = service.get("type", "coco_as_builtin")
    if kind not in ("coco_as_builtin", "CoCoASBuiltIn"):
        raise StandinLimit(f"attestation_service.type {kind!r} (the stand-in has the built-in AS only)")
    rvps = _table(service, "rvps_config", "attestation_service")
    if rvps.get("type", "BuiltIn") != "BuiltIn":
        raise StandinLimit("attestation_service.rvps_config.type other than BuiltIn")
    broker_cfg = _table(service, "attestation_token_broker", "attestation_service")
    broker = dict(EAR_DEFAULTS)
    for key in ("issuer_name", "developer_name", "build_name", "profile_name"):
        broker[key] = _typed(broker_cfg, key, str, broker[key], "attestation_service.attestation_token_broker")
    broker["duration_min"] = _typed(broker_cfg, "duration_min", int, 5, "attestation_service.attestation_token_broker")
    broker["verbose_token"] = _typed(broker_cfg, "verbose_token", bool, True, "attestation_service.attestation_token_broker")
    if "signer" in broker_cfg:
        signer = _table(broker_cfg, "signer", "attestation_service.attestation_token_broker")
        if "key_path" not in signer:
            raise ConfigError("missing field `key_path` for key `attestation_service.attestation_token_broker.signer`")
        broker["signer"] = {"key_path": signer["key_path"], "cert_path": signer.get("cert_path"),
                            "cert_url": signer.get("cert_url")}  # fmt: skip
    return {"timeout": _typed(service, "timeout", int, 5, "attestation_service"), "broker": broker}


def _attestation_token(config: dict) -> dict:
    token = _table(config, "attestation_token", "")
    where = "attestation_token"
    return {
        "extra_teekey_paths": list(_typed(token, "extra_teekey_paths", list, [], where)),
        "trusted_certs_paths": list(_typed(token, "trusted_certs_paths", list, [], where)),
        "trusted_jwk_sets": list(_typed(token, "trusted_jwk_sets", list, [], where)),
        "insecure_header_jwk": _typed(token, "insecure_header_jwk", bool, False, where),
    }


def _http_server(config: dict) -> dict:
    http = _table(config, "http_server", "", required=True)
    where = "http_server"
    sockets = _typed(http, "sockets", list, [DEFAULT_SOCKET], where)
    parsed = []
    for text in sockets:
        host, sep, port = str(text).rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"invalid socket address syntax for key `http_server.sockets`: {text}")
        parsed.append((host.strip("[]"), int(port)))
    profile = _typed(http, "tls_profile", str, "intermediate", where)
    if profile not in ("old", "intermediate", "modern", "custom"):
        raise ConfigError(f"unknown variant `{profile}` for key `http_server.tls_profile`")
    versions = {}
    for key in ("tls_min_version", "tls_max_version"):
        value = _typed(http, key, str, None, where)
        if value is not None and value not in ("1.2", "1.3"):
            raise ConfigError(f"unknown variant `{value}`, expected `1.2` or `1.3` for key `http_server.{key}`")
        versions[key] = value
    if versions["tls_min_version"] == "1.3" and versions["tls_max_version"] == "1.2":  # config.rs:91-103
        raise ConfigError("TLS configuration error: tls_min_version (1.3) cannot be greater than tls_max_version (1.2)")
    return {
        "sockets": parsed,
        "socket_text": [str(s) for s in sockets],
        "insecure_http": _typed(http, "insecure_http", bool, False, where),
        "payload_request_size": _typed(http, "payload_request_size", int, 2, where),
        "private_key": _typed(http, "private_key", str, None, where),
        "certificate": _typed(http, "certificate", str, None, where),
        "tls_profile": profile,
        **versions,
    }


def _plugins(config: dict) -> dict:
    plugins = {}
    for entry in _typed(config, "plugins", list, [], ""):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError("missing field `name` for key `plugins`")
        name = entry["name"]
        if name in ("resource", "ResourceStorage"):
            backend = entry.get("storage_backend_type", "kvstorage")
            if backend not in ("kvstorage", "KvStorage"):
                raise StandinLimit(f"resource plugin storage_backend_type {backend!r} (only kvstorage)")
            plugins["resource"] = {}
        else:
            raise StandinLimit(f"plugin {name!r} (the stand-in has the resource plugin only)")
    return plugins


def parse(config: dict) -> dict:
    out = {
        "http_server": _http_server(config),
        "admin": _admin(config),
        "attestation_token": _attestation_token(config),
        "attestation_service": _attestation_service(config),
        "storage_backend": _storage(config),
        "plugins": _plugins(config),
    }
    session = config.get("session_storage_type")
    if session is not None and session not in ("Memory", "memory", "LocalFs", "local_fs"):
        raise StandinLimit(f"session_storage_type {session!r}")
    out["session_storage_type"] = {"memory": "Memory", "local_fs": "LocalFs"}.get(session, session)
    return out


def load(path: str) -> dict:
    """``KbsConfig::try_from`` (config.rs:226-254): file errors are prefixed as upstream does."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"failed to load configuration file {path}: configuration file \"{path}\" not found "
                          f"({exc.strerror})") from None  # fmt: skip
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"failed to load configuration file {path}: {exc}") from None
    try:
        return parse(raw)
    except StandinLimit as exc:
        raise StandinLimit(f"the lab Trustee stand-in does not simulate: {exc}") from None
    except ConfigError as exc:
        text = str(exc)
        if text.startswith(("failed to initialize [admin]", "Storage backend", "TLS configuration")):
            raise
        raise ConfigError(f"failed to load configuration file {path}: {text}") from None
