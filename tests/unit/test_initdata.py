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


def test_settings_reach_the_guest_through_initdata_only():
    """No agent kernel parameters (SNP measures the command line): the only annotation workload
    owners get is cc_init_data, and the KBS is named in aa.toml/cdh.toml."""
    d = render_initdata(settings(), tee="tdx")
    assert set(d.summary()["annotations"]) == {ANNOTATION} and not hasattr(d, "kernel_params")
    assert "agent." not in d.document


def test_aa_toml_has_coco_as_only_for_a_separate_attestation_service():
    """guest-components@d4dce5ce: coco_as is optional (src/config/mod.rs:105-114) and points at an
    attestation service (config.example.toml:3-4), not at the KBS."""
    aa = tomllib.loads(parse_initdata(render_initdata(settings(), tee="snp").document)["data"]["aa.toml"])
    assert set(aa["token_configs"]) == {"kbs"}
    aa = tomllib.loads(parse_initdata(render_initdata(settings(coco_as_url="http://as.example:8000"), tee="snp").document)
                       ["data"]["aa.toml"])  # fmt: skip
    assert aa["token_configs"]["coco_as"] == {"url": "http://as.example:8000"}
    assert aa["token_configs"]["kbs"]["url"] == "https://kbs.example:8443"
    with pytest.raises(InitdataError, match="coco_as_url"):
        render_initdata(settings(coco_as_url="ftp://x"), tee="snp")


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
