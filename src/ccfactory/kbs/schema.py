"""The schema of Trustee v0.21.0's ``kbs-config.toml``, as far as ccfactory confirmed it.

Trustee deserialises its config with serde. At v0.21.0 only the ``[admin]`` tree is
``#[serde(deny_unknown_fields)]`` (``trustee@v0.21.0:kbs/src/admin/mod.rs:53`` and the
admin authentication/authorization modules); a misspelt key anywhere else is silently
ignored by the KBS. ``validate_kbs_config`` is therefore *stricter than the KBS*: it
refuses every key outside the release's schema, so a typo in ccfactory's templates is
caught by the unit tests instead of being ignored on a real KBS. Where each key was
read: docs/trustee.md.

Example::

    >>> validate_kbs_config({"http_server": {"sockets": ["0.0.0.0:8080"], "insecure_http": True},
    ...                      "admin": {"authorization_mode": "DenyAll"}})
    >>> try:
    ...     validate_kbs_config({"http_server": {"socket": []}, "admin": {"authorization_mode": "DenyAll"}})
    ... except ConfigError as exc:
    ...     print(exc)
    invalid config: http_server: unknown field `socket`, expected one of `certificate`, `insecure_http`, `payload_request_size`, `private_key`, `sockets`, `tls_ciphers`, `tls_groups`, `tls_max_version`, `tls_min_version`, `tls_profile`, `worker_count`
"""

from __future__ import annotations

import re

TRUSTEE_RELEASE = "v0.21.0"


class ConfigError(ValueError):
    """The config would not load in the KBS (message names the key)."""


# Field kinds: a type name, a tuple of allowed string values, a nested dict schema,
# ("list", kind) or ("tagged", tag_key, {tag value: schema}).
STR, BOOL, INT = "str", "bool", "int"
LIST_STR = ("list", STR)

HTTP_SERVER = {
    "sockets": LIST_STR,
    "private_key": STR,
    "certificate": STR,
    "insecure_http": BOOL,
    "payload_request_size": INT,
    "worker_count": INT,
    # the TLS profile keys are in kbs/docs/config.md of the v0.21 era; UNCONFIRMED at the tag
    "tls_profile": ("old", "intermediate", "modern", "custom"),
    "tls_min_version": ("1.2", "1.3"),
    "tls_max_version": ("1.2", "1.3"),
    "tls_ciphers": STR,
    "tls_groups": STR,
}

ATTESTATION_TOKEN = {
    "trusted_jwk_sets": LIST_STR,
    "trusted_certs_paths": LIST_STR,
    "extra_teekey_paths": LIST_STR,
    "insecure_header_jwk": BOOL,
}

TOKEN_SIGNER = {"key_path": STR, "cert_url": STR, "cert_path": STR}
TOKEN_BROKER = {
    "duration_min": INT,
    "issuer_name": STR,
    "developer_name": STR,
    "build_name": STR,
    "profile_name": STR,
    "signer": TOKEN_SIGNER,
}
RVPS_CONFIG = (
    "tagged",
    "type",
    {
        "BuiltIn": {"extractors": "any", "storage_type": ("Memory", "LocalJson", "LocalFs", "Postgres")},
        "GrpcRemote": {"address": STR},
    },
)
VERIFIER_CONFIG = {"nvidia_verifier": {"type": ("Remote", "Local")}, "snp_verifier": "any", "tpm_verifier": "any"}
ATTESTATION_SERVICE = (
    "tagged",
    "type",
    {
        "coco_as_builtin": {
            "timeout": INT,
            "rvps_config": RVPS_CONFIG,
            "attestation_token_broker": TOKEN_BROKER,
            "verifier_config": VERIFIER_CONFIG,
            "storage_type": ("Memory", "LocalJson", "LocalFs", "Postgres"),
        },
        "coco_as_grpc": {"timeout": INT, "as_addr": STR, "pool_size": INT},
        "intel_ta": {
            "timeout": INT,
            "base_url": STR,
            "api_key": STR,
            "certs_file": STR,
            "policy_ids": LIST_STR,
            "allow_unmatched_policy": BOOL,
        },
    },
)

IDENTITY_PROVIDER = {"issuer": STR, "audience": STR, "public_key_uri": STR, "jwk_set_uri": STR}
BEARER_JWT = {
    "identity_providers": ("list", IDENTITY_PROVIDER),
    "insecure_public_key_from_uri": BOOL,
    "insecure_header_jwk": BOOL,
}
ACL_RULE = {"role": STR, "allowed_endpoints": STR}
ADMIN = (
    "tagged",
    "authorization_mode",
    {
        "InsecureAllowAll": {},
        "DenyAll": {},
        "AuthenticatedAuthorization": {
            "authentication": {"bearer_jwt": BEARER_JWT},
            "authorization": {"regex_acl": {"acls": ("list", ACL_RULE)}},
        },
    },
)

STORAGE_BACKEND = {
    "storage_type": ("Memory", "LocalJson", "LocalFs", "Postgres"),
    "backends": {
        "local_fs": {"dir_path": STR},
        "local_json": {"file_dir_path": STR},
        "postgres": "any",
    },
}

PLUGIN = (
    "tagged",
    "name",
    {
        "resource": {"storage_backend_type": STR, "__extra__": "any"},
        "sample": {"item": STR},
        "nebula_ca": "any",
        "pkcs11": "any",
    },
)

KBS_CONFIG = {
    "attestation_token": ATTESTATION_TOKEN,
    "attestation_service": ATTESTATION_SERVICE,
    "http_server": HTTP_SERVER,
    "admin": ADMIN,
    "storage_backend": STORAGE_BACKEND,
    "plugins": ("list", PLUGIN),
}
REQUIRED_TOP = ("http_server", "admin")  # KbsConfig fields without #[serde(default)]

# Admin ACL regexes must be anchored (kbs/src/admin/authorization/regex_acl.rs).
_ACL_ANCHOR = re.compile(r"^\^/kbs.*\$$")


def _type_ok(kind: str, value) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return True


def _check(value, kind, where: str, problems: list[str]) -> None:
    if kind == "any":
        return
    if isinstance(kind, str):
        if not _type_ok(kind, value):
            problems.append(f"{where}: invalid type, expected {kind}")
        return
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: invalid type, expected a table")
            return
        extra_ok = kind.get("__extra__") == "any"
        known = sorted(k for k in kind if k != "__extra__")
        for key, item in value.items():
            if key not in kind:
                if not extra_ok:
                    expected = ", ".join(f"`{k}`" for k in known) or "no fields"
                    problems.append(f"{where}: unknown field `{key}`, expected one of {expected}")
                continue
            _check(item, kind[key], f"{where}.{key}" if where else key, problems)
        return
    if kind[0] == "list":
        if not isinstance(value, list):
            problems.append(f"{where}: invalid type, expected an array")
            return
        for index, item in enumerate(value):
            _check(item, kind[1], f"{where}[{index}]", problems)
        return
    if kind[0] == "tagged":
        _, tag, variants = kind
        if not isinstance(value, dict):
            problems.append(f"{where}: invalid type, expected a table")
            return
        variant = value.get(tag)
        if variant not in variants:
            expected = ", ".join(f"`{v}`" for v in variants)
            problems.append(f"{where}.{tag}: unknown variant `{variant}`, expected one of {expected}")
            return
        _check({k: v for k, v in value.items() if k != tag}, variants[variant], where, problems)
        return
    # a tuple of allowed string values
    if value not in kind:
        expected = ", ".join(f"`{v}`" for v in kind)
        problems.append(f"{where}: unknown variant `{value}`, expected one of {expected}")


def validate_kbs_config(config: dict) -> None:
    """Raise ``ConfigError`` (every problem, one per line) if the KBS would refuse ``config``."""
    problems: list[str] = []
    for key in REQUIRED_TOP:
        if key not in config:
            problems.append(f"missing field `{key}`")
    _check(config, KBS_CONFIG, "", problems)
    admin = config.get("admin") if isinstance(config.get("admin"), dict) else {}
    if admin.get("authorization_mode") == "AuthenticatedAuthorization":
        acls = (((admin.get("authorization") or {}).get("regex_acl") or {}).get("acls")) or []
        for index, rule in enumerate(acls):
            pattern = rule.get("allowed_endpoints", "") if isinstance(rule, dict) else ""
            if not _ACL_ANCHOR.match(pattern):
                problems.append(
                    f"admin.authorization.regex_acl.acls[{index}].allowed_endpoints: must start with `^/kbs` and end with `$`"
                )
        providers = (((admin.get("authentication") or {}).get("bearer_jwt") or {}).get("identity_providers")) or []
        for index, idp in enumerate(providers):
            if isinstance(idp, dict) and not (idp.get("public_key_uri") or idp.get("jwk_set_uri")):
                problems.append(
                    f"admin.authentication.bearer_jwt.identity_providers[{index}]: needs public_key_uri or jwk_set_uri"
                )
    if problems:
        raise ConfigError("invalid config: " + "\ninvalid config: ".join(problems))


def known_keys(schema=KBS_CONFIG, prefix: str = "") -> set[str]:
    """Dotted names of every key the schema knows (tagged variants merged)."""
    out: set[str] = set()
    if isinstance(schema, dict):
        for key, kind in schema.items():
            if key == "__extra__":
                continue
            name = f"{prefix}.{key}" if prefix else key
            out.add(name)
            out |= known_keys(kind, name)
    elif isinstance(schema, tuple) and schema and schema[0] == "list":
        out |= known_keys(schema[1], prefix)
    elif isinstance(schema, tuple) and schema and schema[0] == "tagged":
        out.add(f"{prefix}.{schema[1]}")
        for variant in schema[2].values():
            out |= known_keys(variant, prefix)
    return out
