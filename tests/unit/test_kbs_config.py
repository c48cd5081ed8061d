"""The KBS config files the role renders, parsed and checked against Trustee v0.21.0's keys."""

from __future__ import annotations

import configparser
import shlex
import tomllib

import pytest

from ccfactory.roles.kbs.render import CONFIG_FILE, KEYS_DIR, STORAGE_DIR, render_kbs_config, render_unit
from ccfactory.kbs.schema import ConfigError, known_keys, validate_kbs_config


def flatten(table: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        out.add(name)
        if isinstance(value, dict):
            out |= flatten(value, name)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out |= flatten(item, name)
    return out


@pytest.fixture
def config() -> tuple[str, dict]:
    text = render_kbs_config(socket="0.0.0.0:8443", insecure_http=False, nvidia_verifier="Remote")
    return text, tomllib.loads(text)


def test_rendered_config_has_only_release_keys(config):
    text, parsed = config
    validate_kbs_config(parsed)
    assert flatten(parsed) <= known_keys()
    assert text.startswith("# Managed by ccfactory (kbs stage).")


def test_rendered_config_is_https_and_authenticated(config):
    _, c = config
    assert c["http_server"] == {
        "sockets": ["0.0.0.0:8443"],
        "insecure_http": False,
        "private_key": f"{KEYS_DIR}/https.key",
        "certificate": f"{KEYS_DIR}/https.crt",
        "payload_request_size": 2,
    }
    assert c["attestation_token"] == {"trusted_certs_paths": [f"{KEYS_DIR}/token-ca.crt"], "insecure_header_jwk": False}
    assert c["attestation_service"]["type"] == "coco_as_builtin"
    assert c["attestation_service"]["attestation_token_broker"]["signer"] == {
        "key_path": f"{KEYS_DIR}/token.key",
        "cert_path": f"{KEYS_DIR}/token-chain.pem",
    }
    assert c["attestation_service"]["rvps_config"] == {"type": "BuiltIn"}
    assert c["attestation_service"]["verifier_config"] == {"nvidia_verifier": {"type": "Remote"}}
    admin = c["admin"]
    assert admin["authorization_mode"] == "AuthenticatedAuthorization"
    (idp,) = admin["authentication"]["bearer_jwt"]["identity_providers"]
    assert idp == {"issuer": "ccfactory", "public_key_uri": f"{KEYS_DIR}/admin.pub"}
    (acl,) = admin["authorization"]["regex_acl"]["acls"]
    assert acl["role"] == "ccfactory-admin"
    assert acl["allowed_endpoints"].startswith("^/kbs/v0/") and acl["allowed_endpoints"].endswith("$")
    assert c["storage_backend"] == {"storage_type": "LocalFs", "backends": {"local_fs": {"dir_path": STORAGE_DIR}}}
    assert c["plugins"] == [{"name": "resource", "storage_backend_type": "kvstorage"}]


def test_acl_allows_exactly_the_admin_endpoints_ccfactory_uses(config):
    import re

    pattern = re.compile(config[1]["admin"]["authorization"]["regex_acl"]["acls"][0]["allowed_endpoints"])
    for ok in ("/kbs/v0/resource/models/llama/key", "/kbs/v0/resource-policy", "/kbs/v0/attestation-policy",
               "/kbs/v0/reference-value", "/kbs/v0/reference-value/svn"):  # fmt: skip
        assert pattern.search(ok), ok
    for no in ("/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/resource", "/kbs/v0/resource-policy?x=1", "/metrics"):
        assert not pattern.search(no), no


def test_lab_http_and_no_gpus():
    c = tomllib.loads(render_kbs_config(socket="0.0.0.0:8080", insecure_http=True, nvidia_verifier=None))
    validate_kbs_config(c)
    assert c["http_server"] == {"sockets": ["0.0.0.0:8080"], "insecure_http": True, "payload_request_size": 2}
    assert "verifier_config" not in c["attestation_service"]
    with pytest.raises(ValueError, match="nvidia_verifier"):
        render_kbs_config(socket="0.0.0.0:1", insecure_http=False, nvidia_verifier="Cloud")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"admin": {"type": "Simple"}}, "admin.authorization_mode: unknown variant `None`"),  # the v0.16-v0.20 schema
        ({"attestation_token": {"insecure_key": True}}, "attestation_token: unknown field `insecure_key`"),  # <= v0.20
        ({"policy_engine": {"policy_path": "/p"}}, ": unknown field `policy_engine`"),  # removed before v0.21
        ({"http_server": {"sockets": ["0.0.0.0:1"], "insecure_http": "no"}}, "http_server.insecure_http: invalid type"),
        ({"plugins": [{"name": "resource", "type": "LocalFs", "dir_path": "/x"}]}, None),  # resource extras pass
        ({"admin": {"authorization_mode": "AuthenticatedAuthorization",
                    "authorization": {"regex_acl": {"acls": [{"role": "a", "allowed_endpoints": ".*"}]}}}},
         "must start with `^/kbs` and end with `$`"),  # fmt: skip
        ({"admin": {"authorization_mode": "AuthenticatedAuthorization",
                    "authentication": {"bearer_jwt": {"identity_providers": [{"issuer": "x"}]}}}},
         "needs public_key_uri or jwk_set_uri"),  # fmt: skip
    ],
)
def test_schema_refuses_what_the_release_refuses(config, patch, message):
    c = {**config[1], **patch}
    if message is None:
        validate_kbs_config(c)
        return
    with pytest.raises(ConfigError) as err:
        validate_kbs_config(c)
    assert message in str(err.value)


def test_required_sections():
    with pytest.raises(ConfigError, match="missing field `http_server`"):
        validate_kbs_config({"admin": {"authorization_mode": "DenyAll"}})


IMAGE = "ghcr.io/confidential-containers/key-broker-service@sha256:" + "ab" * 32


def _unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string(text)
    return unit


def test_unit_runs_the_image_by_digest_without_capabilities():
    """podman 4.3.1's own `generate systemd --new` layout; upstream's binary path in the image
    (trustee@v0.21.0:kbs/docker/Dockerfile:79). The lab checks the unit with systemd-analyze on a node."""
    text = render_unit(port=8443, flavour="trustee v0.21.0", image=IMAGE)
    assert text.startswith("# Managed by ccfactory")
    unit = _unit(text)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert argv[:2] == ["/usr/bin/podman", "run"]
    assert argv[-3:] == ["/usr/local/bin/kbs", "--config-file", CONFIG_FILE] and argv[-4] == IMAGE
    for flag in ("--read-only", "--rm", "--replace"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "all" and "--cap-add" not in argv
    assert argv[argv.index("--pull") + 1] == "never"  # the role pulled it by digest
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert volumes == ["/etc/trustee:/etc/trustee:ro", "/var/lib/trustee:/var/lib/trustee:rw"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    low = shlex.split(_unit(render_unit(port=443, flavour="x", image=IMAGE))["Service"]["ExecStart"].replace("\\\n", " "))
    assert low[low.index("--cap-add") + 1] == "NET_BIND_SERVICE"


@pytest.mark.parametrize(
    "image",
    ["ghcr.io/confidential-containers/key-broker-service:built-in-as-v0.21.0",
     "ghcr.io/org/kbs@sha256:abc", "ghcr.io/org/kbs@sha256:" + "ab" * 32 + " --privileged", "kbs@sha256:" + "ab" * 32],
)  # fmt: skip
def test_unit_refuses_anything_but_an_image_by_digest(image):
    with pytest.raises(ValueError, match="a tag is never run"):
        render_unit(port=8443, flavour="x", image=image)


def test_kbs_config_values_are_serialised_not_pasted():
    """Every value of kbs-config.toml goes through tomli_w: hostile values parse back unchanged."""
    from ccfactory.kbs.client import ADMIN_ENDPOINTS

    hostile = 'x"]\n[admin]\nauthorization_mode = "InsecureAllowAll"\n#'
    c = tomllib.loads(render_kbs_config(socket=hostile, insecure_http=False, nvidia_verifier=None, keys_dir=hostile,
                                        storage_dir=hostile))  # fmt: skip
    assert c["http_server"]["sockets"] == [hostile] and c["http_server"]["private_key"] == f"{hostile}/https.key"
    assert c["admin"]["authorization_mode"] == "AuthenticatedAuthorization"  # nothing injected
    assert c["storage_backend"]["backends"]["local_fs"]["dir_path"] == hostile
    assert c["admin"]["authorization"]["regex_acl"]["acls"][0]["allowed_endpoints"] == ADMIN_ENDPOINTS
