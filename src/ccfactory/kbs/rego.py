"""KBS policies evaluated as Trustee v0.21.0 evaluates them, with a real Rego engine.

Trustee's KBS evaluates its resource policy with regorus (Cargo pin 0.10.1,
``trustee@v0.21.0:Cargo.toml``): one fresh ``regorus::Engine`` per request, the policy
added under path ``""``, ``data`` = the request's plugin data, ``input`` = the attestation
token's claims, rule ``data.policy.allow``; an undefined rule or a non-boolean result is
``false`` (``trustee@v0.21.0:deps/policy-engine/src/policy/rego.rs:48-116``,
``kbs/src/api_server.rs:411-446``). This module does the same with the ``regorus`` Python
module of the PyPI package ``celine-regorus`` (a wheel built from microsoft/regorus
releases; see ``docs/trustee.md`` for why this build).

``data`` is what ``kbs/src/api_server.rs:222-248`` builds from the URL after ``/kbs/v0/``::

    {"plugin": "resource", "resource-path": ["repo", "type", "tag"], "query": {}}

``resource-path`` is an **array of segments**, never a ``/``-joined string.

The EAR claims the built-in attestation service puts in its token
(``attestation-service/src/ear_token/broker.rs:149-320``): one ``submods.<class><n>``
appraisal per device (``cpu0``, ``gpu0``, ...), each with ``ear.status`` (from the trust
vector) and ``ear.veraison.annotated-evidence`` = ``{<tee>: <claims>, "report_data",
"runtime_data_claims", ...}`` where ``<tee>`` is the TEE's name (``snp``, ``tdx``,
``az-snp-vtpm``, ``sample``, ...; ``transform_claims``, broker.rs:462-515).

``refuse_unsafe_policy`` is the gate before any upload: a policy that does not compile, or
that releases anything to ``sample`` evidence, is refused and nothing is uploaded.

Example::

    >>> text = 'package policy\\ndefault allow := false\\nallow if data["resource-path"] == ["a", "b", "c"]\\n'
    >>> allows(text, ear_claims({"cpu0": ("affirming", "snp")}), request_data("resource/a/b/c"))
    True
    >>> allows(text, ear_claims({"cpu0": ("affirming", "snp")}), request_data("resource/a/b/d"))
    False
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import product

ALLOW_RULE = "data.policy.allow"  # trustee@v0.21.0:kbs/src/api_server.rs:39
ENGINE_PACKAGE = "celine-regorus"
EAR_STATUSES = ("affirming", "warning", "contraindicated", "none")
EVIDENCE_KEY = "ear.veraison.annotated-evidence"


class RegoError(ValueError):
    """The policy does not compile, or evaluating it failed."""


class UnsafePolicy(RegoError):
    """The policy would release a resource to non-TEE (``sample``) evidence."""


def _native(function, *args):
    """Run ``function`` on a native thread when gevent has patched this process (pyinfra does):
    regorus' parser crashed (SIGSEGV) inside a pyinfra operation's greenlet, never on a thread."""
    try:
        from gevent import get_hub
        from gevent.monkey import is_module_patched
    except ImportError:
        return function(*args)
    if not is_module_patched("threading"):
        return function(*args)
    return get_hub().threadpool.apply(function, args)


def _engine():
    try:
        import regorus
    except ImportError as exc:  # pragma: no cover - a broken install
        raise RegoError(
            f"the Rego engine is not installed ({exc}); reinstall ccfactory (it depends on {ENGINE_PACKAGE})"
        ) from None
    return regorus.Engine()


def _first_line(exc: Exception) -> str:
    """regorus errors carry a Rust backtrace: keep the message (and the source excerpt)."""
    text = str(exc)
    return text.split("\n\nStack backtrace:", 1)[0].strip()


def compile_policy(text: str) -> None:
    """Raise ``RegoError`` if regorus cannot parse ``text`` (Rego v1, as regorus 0.10 by default)."""
    problem = _native(_compile, text)
    if problem:
        raise RegoError(f"the policy does not compile: {problem}")


def evaluate_rule(text: str, rule: str, input_value: dict, data: dict | None = None):
    """The value of ``rule`` (None when undefined), as ``Regorus::evaluate`` does."""
    outcome, value = _native(_evaluate, text, rule, input_value, data)
    if outcome == "compile":
        raise RegoError(f"the policy does not compile: {value}")
    if outcome == "eval":
        raise RegoError(f"evaluating {rule} failed: {value}")
    return value


# The two below run on the engine's own thread and never raise: a regorus Engine may only be
# dropped on the thread that made it, so neither it nor a traceback holding it may leave.


def _compile(text: str) -> str:
    engine = _engine()
    try:
        engine.add_policy("", text)
        return ""
    except Exception as exc:  # noqa: BLE001 - regorus raises plain RuntimeError/ValueError
        return _first_line(exc)
    finally:
        del engine


def _evaluate(text: str, rule: str, input_value: dict, data: dict | None) -> tuple[str, object]:
    engine = _engine()
    try:
        try:
            engine.add_policy("", text)
        except Exception as exc:  # noqa: BLE001 - regorus: any compile error is the policy's
            return "compile", _first_line(exc)
        if data is not None:
            engine.add_data_json(json.dumps(data))  # add_data() turns Python booleans into numbers
        engine.set_input_json(json.dumps(input_value))
        try:
            return "value", engine.eval_rule(rule)
        except Exception as exc:  # noqa: BLE001 - regorus raises plain exceptions, told apart by text
            if "not a valid rule path" in str(exc):  # rego.rs:95: an absent rule is "no value"
                return "value", None
            return "eval", _first_line(exc)
    finally:
        del engine


def allows(text: str, claims: dict, data: dict) -> bool:
    """``data.policy.allow`` of a KBS resource policy: only a boolean ``true`` allows.

    trustee@v0.21.0:kbs/src/api_server.rs:428-446 (undefined or non-boolean: false).
    """
    return evaluate_rule(text, ALLOW_RULE, claims, data) is True


def request_data(kbs_path: str, query: dict | None = None) -> dict:
    """The policy ``data`` Trustee builds for ``/kbs/v0/<kbs_path>``.

    trustee@v0.21.0:kbs/src/api_server.rs:222-248: split on ``/``; segment 0 is the plugin,
    the rest (possibly empty) the resource path.
    """
    parts = kbs_path.split("/")
    return {"plugin": parts[0], "resource-path": parts[1:], "query": dict(query or {})}


# What the sample verifier reports (trustee@v0.21.0:deps/verifier/src/sample/mod.rs:69-96)
SAMPLE_CLAIMS = {"svn": "1", "report_data": "", "init_data": "", "launch_digest": "abcde",
                 "platform_version": {"major": 1, "minor": 4}, "debug": False}  # fmt: skip
# An AR4SI trust vector (attestation-service/src/ear_token/broker.rs:256-275), per tier
TRUST_VECTORS = {
    "affirming": dict.fromkeys(("instance-identity", "configuration", "executables", "file-system", "hardware",
                                "runtime-opaque", "storage-opaque", "sourced-data"), 2),
    "warning": {"executables": 33, "hardware": 2, "configuration": 2},
    "contraindicated": {"executables": 33, "hardware": 97, "configuration": 36},
    "none": {},
}  # fmt: skip


def _runtime_data_claims() -> dict:
    """What the KBS binds into every token (kbs/src/attestation/backend.rs:355-359)."""
    return {"tee-pubkey": {"kty": "RSA", "alg": "RSA-OAEP-256", "n": "sample-probe", "e": "AQAB"},
            "nonce": "c2FtcGxlLXByb2Jl", "additional-evidence": ""}  # fmt: skip


def ear_claims(submods: dict[str, tuple[str, str] | tuple[str, str, dict]]) -> dict:
    """Token claims shaped as the built-in AS's EAR: ``{"cpu0": (status, tee[, evidence])}``.

    broker.rs:303-319 (``annotated_evidence`` = ``transform_claims`` output keyed by the
    TEE name, ``submods.<class><index>``); the AR4SI status is one of ``EAR_STATUSES``.
    """
    out = {}
    for name, spec in submods.items():
        status, tee, *rest = spec
        evidence = rest[0] if rest else {"measurement": "00" * 48}
        out[name] = {
            "ear.status": status,
            "ear.trustworthiness-vector": dict(TRUST_VECTORS.get(status, {})),
            "ear.appraisal-policy-id": "default",
            EVIDENCE_KEY: {tee: evidence, "report_data": "00" * 64, "runtime_data_claims": _runtime_data_claims()},
        }
    return {
        "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
        "iss": "CoCo-Attestation-Service",
        "ear.verifier-id": {"developer": "https://confidentialcontainers.org", "build": "attestation-service"},
        "submods": out,
    }


@dataclass(frozen=True)
class Probe:
    """One request the safety check puts to a candidate policy."""

    claims: dict
    path: str  # after /kbs/v0/
    query: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        parts = []
        for name, sub in self.claims["submods"].items():
            tees = [k for k in sub[EVIDENCE_KEY] if k not in ("report_data", "runtime_data_claims")]
            parts.append(f"{name}={'/'.join(tees)}:{sub['ear.status']}")
        query = "?" + "&".join(f"{k}={v}" for k, v in self.query) if self.query else ""
        return f"GET /kbs/v0/{self.path}{query} with {' '.join(parts)}"


# Non-TEE evidence of the sample verifiers (deps/verifier/src/lib.rs:121-122)
NON_TEE = ("sample",)
GENERIC_PATHS = ("resource/ccfactory/health/probe", "resource/default/key/1", "resource/public/x/y")
QUERIES = ((), (("version", "1.0.0"),))  # default.rego's own example query


def sample_probes(paths: list[str] | tuple[str, ...]) -> list[Probe]:
    """Sample evidence (the claims the sample verifier really reports) in every EAR status:
    alone, with an affirming NVIDIA ``gpu0``, with a ``sampledevice`` ``gpu0``, and beside snp
    evidence in the same submodule; for each path, without and with a query string. What no
    resource policy may allow. It is a gate, not a proof: a policy that singles out a path or
    query value never probed can still pass it."""
    probes = []
    for path, status, tee, query in product(paths, EAR_STATUSES, NON_TEE, QUERIES):
        alone = ear_claims({"cpu0": (status, tee, dict(SAMPLE_CLAIMS))})
        with_gpu = ear_claims({"cpu0": (status, tee, dict(SAMPLE_CLAIMS)), "gpu0": ("affirming", "nvidia")})
        with_sample_gpu = ear_claims({"cpu0": (status, tee, dict(SAMPLE_CLAIMS)),
                                      "gpu0": ("affirming", "sampledevice", {"svn": "1"})})  # fmt: skip
        beside_snp = ear_claims({"cpu0": (status, "snp")})
        beside_snp["submods"]["cpu0"][EVIDENCE_KEY][tee] = dict(SAMPLE_CLAIMS)
        probes += [Probe(c, path, query) for c in (alone, with_gpu, with_sample_gpu, beside_snp)]
    return probes


def refuse_unsafe_policy(text: str, resource_paths: list[str] | tuple[str, ...]) -> int:
    """Refuse (raise) a resource policy that does not compile or releases to sample evidence.

    ``resource_paths``: ``repo/type/tag`` paths the site uploads; a probe path is always
    added. Returns the number of probes evaluated (every one denied).
    """
    compile_policy(text)
    paths = [f"resource/{p}" for p in sorted(set(resource_paths))] + list(GENERIC_PATHS)
    probes = sample_probes(paths)
    for probe in probes:
        if allows(text, probe.claims, request_data(probe.path, dict(probe.query))):
            raise UnsafePolicy(
                f"the policy releases resources to non-TEE evidence: it allows {probe.describe()}; "
                "a KBS resource policy must require TEE (snp/tdx) evidence and deny sample evidence"
            )
    return len(probes)
