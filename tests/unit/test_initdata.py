"""Initdata rendering: valid TOML all the way down, deterministic annotation, digests like Kata's."""

from __future__ import annotations

import base64
import gzip
import hashlib
import tomllib

import pytest

from ccfactory.coco.initdata import (
    ANNOTATION,
    CocoSettings,
    Credential,
    InitdataError,
    credentials_from,
    decode_annotation,
    parse_initdata,
    platform_digest,
    render_initdata,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIBATAKBggqhkjOPQQDAjAfMR0wGwYDVQQDDBRjY2ZhY3Rvcnkg\n-----END CERTIFICATE-----\n"


def settings(**kw):
    return CocoSettings(kbs_url="https://kbs.example:8443", kbs_cert=PEM, **kw)


@pytest.mark.parametrize("tee,algorithm,size", [("snp", "sha256", 32), ("tdx", "sha384", 48)])
def test_document_parts_and_digest(tee, algorithm, size):
    d = render_initdata(settings(credentials=credentials_from(["kbs:///default/aa/key"])), tee=tee)
    doc = parse_initdata(d.document)
    assert doc["version"] == "0.1.0" and doc["algorithm"] == algorithm
    assert set(doc["data"]) == {"aa.toml", "cdh.toml", "policy.rego"}
    aa = tomllib.loads(doc["data"]["aa.toml"])
    cdh = tomllib.loads(doc["data"]["cdh.toml"])
    assert aa["token_configs"]["kbs"]["url"] == "https://kbs.example:8443"
    assert aa["token_configs"]["kbs"]["cert"].strip() == PEM.strip()
    assert cdh["kbc"] == {"name": "cc_kbc", "url": "https://kbs.example:8443", "kbs_cert": PEM}
    assert cdh["credentials"] == [{"path": "/run/confidential-containers/cdh/kbs/default/aa/key", "resource_uri": "kbs:///default/aa/key"}]
    assert "package agent_policy" in doc["data"]["policy.rego"] and "default ExecProcessRequest := false" in doc["data"]["policy.rego"]
    digest = hashlib.new(algorithm, d.document.encode()).digest()
    assert d.digest_hex == digest.hex()
    assert base64.b64decode(d.platform_digest) == digest[:size]


def test_annotation_is_gzip_base64_and_deterministic():
    a = render_initdata(settings(), tee="snp")
    b = render_initdata(settings(), tee="snp")
    assert a.annotation == b.annotation
    assert decode_annotation(a.annotation) == a.document
    raw = base64.b64decode(a.annotation)
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw).decode() == a.document
    assert a.summary()["annotations"][ANNOTATION] == a.annotation


def test_kernel_params_name_the_kbs():
    d = render_initdata(settings(), tee="tdx")
    assert d.kernel_params.split() == ["agent.aa_kbc_params=cc_kbc::https://kbs.example:8443", "agent.guest_components_rest_api=resource"]


def test_platform_digest_pads_and_truncates():
    assert platform_digest(b"\x01" * 32, "tdx") == b"\x01" * 32 + b"\0" * 16
    assert platform_digest(b"\x02" * 48, "snp") == b"\x02" * 32


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"kbs_cert": "not a pem"}, "not PEM"),
        ({"credentials": (Credential("/tmp/key", "kbs:///a/b/c"),)}, "must be under /run/confidential-containers/cdh/kbs/"),
        ({"credentials": (Credential("/run/confidential-containers/cdh/kbs/x", "kbs:///a/b"),)}, "exactly <repository>/<type>/<tag>"),
        ({"image_security_policy_uri": "https://x"}, "kbs:///"),
    ],
)
def test_bad_settings_are_refused(kw, message):
    base = {"kbs_url": "https://kbs.example", **kw}
    with pytest.raises(InitdataError, match=message):
        render_initdata(CocoSettings(**base), tee="snp")


def test_site_overlay_shadows_a_template(tmp_path):
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "policy.rego.j2").write_text("package agent_policy\ndefault AllowRequestsFailingPolicy := true\n")
    d = render_initdata(settings(overlays=(str(tmp_path),)), tee="snp")
    assert "AllowRequestsFailingPolicy" in tomllib.loads(d.document)["data"]["policy.rego"]
