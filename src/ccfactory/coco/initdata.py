"""Initdata for Kata confidential guests: the site's attestation-agent, confidential data hub
and agent-policy settings in one TOML document, its annotation form and its digest.

Format (confidential-containers/trustee ``kbs/docs/initdata.md``; Kata
``src/libs/kata-types/src/initdata.rs``; Kata CI ``confidential_common.sh``)::

    version = "0.1.0"
    algorithm = "sha256"            # sha256 | sha384 | sha512
    [data]
    "aa.toml" = '''...'''
    "cdh.toml" = '''...'''
    "policy.rego" = '''...'''

* annotation ``io.katacontainers.config.hypervisor.cc_init_data`` = base64(gzip(document))
* digest = ``algorithm``(document text), then fitted to the TEE's field: SNP ``HOST_DATA``
  32 bytes, TDX ``MRCONFIGID`` 48 bytes (truncated, or zero-padded), base64 (standard).
  ccfactory picks sha256 for SNP and sha384 for TDX so nothing is truncated or padded.

The gzip stream is written with mtime 0 and no file name, so the same settings always give
the same annotation (a re-run changes nothing).

Example::

    >>> d = render_initdata(CocoSettings(kbs_url="https://kbs.example:8080"), tee="snp")
    >>> d.algorithm, len(d.digest_hex), decode_annotation(d.annotation) == d.document
    ('sha256', 64, True)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field

import tomli_w

from ccfactory.validate import resource_uri_problem, url_problem
from ccfactory.templating import render

INITDATA_VERSION = "0.1.0"
ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
# Kata appends this annotation's value to the guest kernel command line, which SNP measures
# (kernel-hashes=on, kata-containers@4.1.0:src/runtime/pkg/govmm/qemu/qemu.go:443): ccfactory
# never sets it; guests get their settings from initdata only.
KERNEL_PARAMS_ANNOTATION = "io.katacontainers.config.hypervisor.kernel_params"
ALGORITHM_FOR_TEE = {"snp": "sha256", "tdx": "sha384"}
PLATFORM_DIGEST_BYTES = {"snp": 32, "tdx": 48}  # HOST_DATA, MRCONFIGID
CREDENTIALS_PREFIX = "/run/confidential-containers/cdh/kbs"  # cdh example.config.toml rule


class InitdataError(ValueError):
    """Settings that cannot make valid initdata; says which and why."""


@dataclass(frozen=True)
class Credential:
    """A KBS resource the CDH fetches into the guest at start (``[[credentials]]``)."""

    path: str
    resource_uri: str


@dataclass(frozen=True)
class CocoSettings:
    """Guest-component settings for one site.

    ``kbs_url``: the KBS the guests attest to; ``kbs_cert``: PEM of the CA that signed the
    KBS's TLS certificate (empty: system CAs); ``credentials``: resources fetched at start;
    ``image_security_policy_uri``: ``kbs:///...`` of the image signature policy, if any;
    ``policy``: agent policy (Rego) text; empty for ccfactory's default;
    ``coco_as_url``: a separate attestation service for ``coco_as`` tokens (empty: none, the
    KBS runs Trustee's built-in AS; aa.toml then has no ``[token_configs.coco_as]``).
    """

    kbs_url: str
    kbs_cert: str = ""
    credentials: tuple[Credential, ...] = ()
    image_security_policy_uri: str = ""
    policy: str = ""
    coco_as_url: str = ""
    overlays: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Initdata:
    document: str  # the TOML text; the digest is over exactly these bytes
    algorithm: str
    annotation: str  # base64(gzip(document))
    digest_hex: str  # algorithm(document), full length
    platform_digest: str  # base64 of the digest fitted to the TEE's field
    tee: str

    def summary(self) -> dict:
        """What workload owners need (written to the node and the run report)."""
        return {
            "version": INITDATA_VERSION,
            "algorithm": self.algorithm,
            "digest": self.digest_hex,
            "platform_digest_base64": self.platform_digest,
            "platform_field": {"snp": "HOST_DATA", "tdx": "MRCONFIGID"}.get(self.tee, ""),
            "annotations": {ANNOTATION: self.annotation},
        }

    def summary_json(self) -> str:
        return json.dumps(self.summary(), indent=2, sort_keys=True) + "\n"


def _check_uri(uri: str, what: str) -> None:
    """``kbs:///<repository>/<type>/<tag>`` with each segment under the KBS path rule
    (``ccfactory.config.RESOURCE_URI_RE``): no ``..``, no fourth or missing segment."""
    if not isinstance(uri, str) or not uri.startswith("kbs:///"):
        raise InitdataError(f"{what} {uri!r} must be a kbs:///<repository>/<type>/<tag> URI")
    if resource_uri_problem(uri):
        raise InitdataError(f"{what} {uri!r} must have exactly <repository>/<type>/<tag> (letters, digits, '_', '-', '.')")


def _validate(settings: CocoSettings) -> None:
    if not settings.kbs_url.startswith(("https://", "http://")):
        raise InitdataError(f"kbs_url {settings.kbs_url!r} is not an http(s) URL")
    if bad := url_problem(settings.kbs_url, https_only=False, path=False):
        raise InitdataError(f"kbs_url: {bad[0]}")
    if settings.kbs_cert and "-----BEGIN CERTIFICATE-----" not in settings.kbs_cert:
        raise InitdataError("the KBS CA certificate is not PEM (no BEGIN CERTIFICATE line)")
    for c in settings.credentials:
        if not c.path.startswith(CREDENTIALS_PREFIX + "/"):
            raise InitdataError(f"credential path {c.path!r} must be under {CREDENTIALS_PREFIX}/ (CDH rule)")
        _check_uri(c.resource_uri, "credential resource_uri")
    if settings.coco_as_url and (bad := url_problem(settings.coco_as_url, https_only=False, path=False)):
        raise InitdataError(f"coco_as_url: {bad[0]}")
    if settings.image_security_policy_uri:
        _check_uri(settings.image_security_policy_uri, "image_security_policy_uri")


def render_parts(settings: CocoSettings) -> dict[str, str]:
    """``aa.toml``, ``cdh.toml`` and ``policy.rego`` (templates ``runtime/*.j2``)."""
    _validate(settings)
    cert = settings.kbs_cert.strip() + "\n" if settings.kbs_cert.strip() else ""
    ctx = {
        "kbs_url": settings.kbs_url.rstrip("/"),
        "kbs_cert": cert,
        "credentials": list(settings.credentials),
        "image_security_policy_uri": settings.image_security_policy_uri,
        "coco_as_url": settings.coco_as_url.rstrip("/"),
    }
    parts = {
        "aa.toml": render("runtime/aa.toml.j2", settings.overlays, **ctx),
        "cdh.toml": render("runtime/cdh.toml.j2", settings.overlays, **ctx),
        "policy.rego": settings.policy or render("runtime/policy.rego.j2", settings.overlays),
    }
    for name in ("aa.toml", "cdh.toml"):
        try:
            tomllib.loads(parts[name])
        except tomllib.TOMLDecodeError as exc:
            raise InitdataError(f"rendered {name} is not valid TOML: {exc}") from None
    return parts


def gzip_base64(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()


def decode_annotation(value: str) -> str:
    return gzip.decompress(base64.b64decode(value)).decode()


def platform_digest(digest: bytes, tee: str) -> bytes:
    size = PLATFORM_DIGEST_BYTES.get(tee, len(digest))
    return digest[:size].ljust(size, b"\0")


def render_initdata(settings: CocoSettings, tee: str, algorithm: str | None = None) -> Initdata:
    """The initdata document for ``settings``, with its annotation and digests (pure)."""
    algorithm = algorithm or ALGORITHM_FOR_TEE.get(tee, "sha256")
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise InitdataError(f"initdata algorithm {algorithm!r} is not one of sha256, sha384, sha512")
    parts = render_parts(settings)
    document = tomli_w.dumps(
        {"version": INITDATA_VERSION, "algorithm": algorithm, "data": parts}, multiline_strings=True
    )
    digest = hashlib.new(algorithm, document.encode()).digest()
    return Initdata(
        document=document,
        algorithm=algorithm,
        annotation=gzip_base64(document),
        digest_hex=digest.hex(),
        platform_digest=base64.b64encode(platform_digest(digest, tee)).decode(),
        tee=tee,
    )


def parse_initdata(document: str) -> dict:
    """Parse and check an initdata document (what the guest does first)."""
    doc = tomllib.loads(document)
    if doc.get("version") != INITDATA_VERSION:
        raise InitdataError(f"initdata version {doc.get('version')!r} is not {INITDATA_VERSION}")
    if doc.get("algorithm") not in ("sha256", "sha384", "sha512"):
        raise InitdataError(f"initdata algorithm {doc.get('algorithm')!r} is not supported")
    if not isinstance(doc.get("data"), dict):
        raise InitdataError("initdata has no [data] table")
    return doc


def credentials_from(uris: Sequence[str]) -> tuple[Credential, ...]:
    """``kbs:///repo/type/tag`` URIs as credentials under the CDH's path rule."""
    out = []
    for uri in uris:
        _check_uri(uri, "resource URI")
        repo, kind, tag = uri.removeprefix("kbs:///").split("/")
        out.append(Credential(f"{CREDENTIALS_PREFIX}/{repo}/{kind}/{tag}", uri))
    return tuple(out)
