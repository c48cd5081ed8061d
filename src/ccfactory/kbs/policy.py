"""KBS resource policies (Rego) that ccfactory renders, and a tiny evaluator for them.

Trustee v0.21.0's KBS evaluates the resource policy with OPA/regorus: query
``data.policy.allow``, ``input`` = the claims of the attestation token (an EAR: per-device
``submods`` such as ``cpu0``/``gpu0`` with ``ear.status`` and
``ear.veraison.annotated-evidence.<tee>``), ``data`` = ``{"plugin", "resource-path",
"query"}`` with ``resource-path`` like ``/repo/type/tag`` (``kbs/src/policy_engine/opa/
default_policy.rego``; see docs/trustee.md).

Shapes (``PolicySpec.kind``):

``strict`` (every site)
    a ``resource`` request is allowed only if the CPU submodule ``cpu0`` is
    ``affirming`` and carries evidence of one of ``cpu_tees`` (``snp``/``tdx``, never
    ``sample``), every submodule of the token is ``affirming``, and, for the resource
    paths that need a GPU (``gpu_paths``, or all of them), ``gpu0`` is ``affirming``.
``lab-permissive`` (lab only; ``kbs_lab_permissive``)
    any ``resource`` request with any attestation token, ``sample`` included.

The text carries a machine-readable first line (``# ccfactory-policy: {json}``) so the
lab's Trustee stand-in can recognise the shape: ``evaluate`` re-renders the policy from
that line and evaluates only if the text is exactly what ccfactory renders. **It is not
OPA**: any other Rego is refused (``UnsupportedPolicy``), except upstream's trivial
``allow_all``/``deny_all``. The real KBS evaluates the same text with regorus.

This module is standard library only: the lab stand-in ships a copy of it.

Example::

    >>> text = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",)))
    >>> claims = {"submods": {"cpu0": {"ear.status": "affirming",
    ...           "ear.veraison.annotated-evidence": {"snp": {"measurement": "..."}}}}}
    >>> evaluate(text, {"plugin": "resource", "resource-path": "/m/k/1", "query": {}}, claims)
    True
    >>> claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"] = {"sample": {"svn": "1"}}
    >>> evaluate(text, {"plugin": "resource", "resource-path": "/m/k/1", "query": {}}, claims)
    False
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

DESCRIPTOR_PREFIX = "# ccfactory-policy: "
SHAPE_VERSION = 1
CPU_TEES = ("snp", "tdx")
KINDS = ("strict", "lab-permissive")
_PATH = re.compile(r"^/[A-Za-z0-9_\-][A-Za-z0-9_\-.]*/[A-Za-z0-9_\-][A-Za-z0-9_\-.]*/[A-Za-z0-9_\-][A-Za-z0-9_\-.]*$")


class PolicyError(ValueError):
    """A policy spec or policy text is not acceptable."""


class UnsupportedPolicy(PolicyError):
    """The lab evaluator does not know this policy shape (it is not OPA)."""


@dataclass(frozen=True)
class PolicySpec:
    """What a rendered resource policy requires.

    ``gpu_paths``: resource paths (``/repo/type/tag``) that need an affirming GPU
    submodule, or ``("*",)`` for every resource; empty: no resource needs a GPU.
    """

    kind: str = "strict"
    cpu_tees: tuple[str, ...] = CPU_TEES
    gpu_paths: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PolicyError(f"unknown policy kind {self.kind!r} (known: {', '.join(KINDS)})")
        bad = [t for t in self.cpu_tees if t not in CPU_TEES]
        if bad or (self.kind == "strict" and not self.cpu_tees):
            raise PolicyError(f"cpu_tees must be a non-empty subset of {CPU_TEES}, got {list(self.cpu_tees)}")
        for path in self.gpu_paths:
            if path != "*" and not _PATH.match(path):
                raise PolicyError(f"gpu path {path!r} is not /<repo>/<type>/<tag>")
        if "*" in self.gpu_paths and len(self.gpu_paths) > 1:
            raise PolicyError("gpu_paths is either ('*',) or a list of paths")

    def descriptor(self) -> str:
        body = {"kind": self.kind, "version": SHAPE_VERSION}
        if self.kind == "strict":
            body["cpu_tees"] = sorted(set(self.cpu_tees))
            body["gpu_paths"] = sorted(set(self.gpu_paths))
        return DESCRIPTOR_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_descriptor(cls, line: str) -> PolicySpec:
        try:
            body = json.loads(line[len(DESCRIPTOR_PREFIX):])
        except ValueError as exc:
            raise UnsupportedPolicy(f"unreadable ccfactory-policy descriptor: {exc}") from None
        if not isinstance(body, dict) or body.get("version") != SHAPE_VERSION:
            raise UnsupportedPolicy("ccfactory-policy descriptor of an unknown version")
        return cls(
            kind=body.get("kind", ""),
            cpu_tees=tuple(body.get("cpu_tees", ())),
            gpu_paths=tuple(body.get("gpu_paths", ())),
        )


def _rego_set(items) -> str:
    return "{" + ", ".join(json.dumps(i) for i in sorted(set(items))) + "}"


def render_resource_policy(spec: PolicySpec, header: str = "") -> str:
    """The Rego text of ``spec``; ``header``: comment lines put after the descriptor."""
    out = [spec.descriptor()]
    out += [line if line.startswith("#") else f"# {line}" for line in header.splitlines() if line.strip()]
    out += ["package policy", "", "import rego.v1", "", "default allow = false", ""]
    if spec.kind == "lab-permissive":
        out += [
            "# LAB ONLY: releases every resource to any attested client, sample evidence included.",
            "allow if {",
            '\tdata.plugin == "resource"',
            "}",
        ]
        return "\n".join(out) + "\n"
    gpu_all = spec.gpu_paths == ("*",)
    out += [
        "# CPU TEEs whose evidence may unlock resources (sample evidence never does).",
        f"cpu_tees := {_rego_set(spec.cpu_tees)}",
        "",
    ]
    if not gpu_all:
        out += [
            "# Resources that also need an affirming GPU attestation (gpu0).",
            f"gpu_paths := {_rego_set(spec.gpu_paths)}" if spec.gpu_paths else "gpu_paths := set()",
            "",
        ]
    out += [
        "cpu_attested if {",
        "\tcpu := input.submods.cpu0",
        '\tcpu["ear.status"] == "affirming"',
        "\tsome tee in cpu_tees",
        '\tcpu["ear.veraison.annotated-evidence"][tee]',
        '\tnot cpu["ear.veraison.annotated-evidence"].sample',
        "}",
        "",
        "any_not_affirming if {",
        "\tsome _, submod in input.submods",
        '\tsubmod["ear.status"] != "affirming"',
        "}",
        "",
        "gpu_attested if {",
        '\tinput.submods.gpu0["ear.status"] == "affirming"',
        "}",
        "",
    ]
    if gpu_all:
        out += ["gpu_required := true", ""]
    else:
        out += ["gpu_required if {", '\tdata["resource-path"] in gpu_paths', "}", ""]
    out += [
        "allow if {",
        '\tdata.plugin == "resource"',
        "\tcpu_attested",
        "\tnot any_not_affirming",
        "\tnot gpu_required",
        "}",
        "",
        "allow if {",
        '\tdata.plugin == "resource"',
        "\tcpu_attested",
        "\tnot any_not_affirming",
        "\tgpu_required",
        "\tgpu_attested",
        "}",
    ]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ lab evaluator

_ALLOW_ALL = re.compile(r"^\s*package\s+policy\s+(import\s+rego\.v1\s+)?default\s+allow\s*:?=\s*true\s*$")
_DENY_ALL = re.compile(r"^\s*package\s+policy\s+(import\s+rego\.v1\s+)?default\s+allow\s*:?=\s*false\s*$")


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def spec_of(text: str) -> PolicySpec | None:
    """The spec of a ccfactory-rendered policy; None for upstream allow_all/deny_all.

    Raises ``UnsupportedPolicy`` for anything else (including an edited ccfactory policy).
    """
    first = text.split("\n", 1)[0]
    if first.startswith(DESCRIPTOR_PREFIX):
        spec = PolicySpec.from_descriptor(first)
        # the leading comments are free text; everything else must be exactly what we render
        if render_resource_policy(spec, header=_leading_comments(text)) != text:
            raise UnsupportedPolicy("the policy claims to be ccfactory's but differs from what ccfactory renders")
        return spec
    flat = " ".join(_strip_comments(text).split())
    if _ALLOW_ALL.match(flat) or _DENY_ALL.match(flat):
        return None
    raise UnsupportedPolicy(
        "the lab's Trustee stand-in evaluates only the policies ccfactory renders and upstream "
        "allow_all/deny_all; it is not OPA"
    )


def _leading_comments(text: str) -> str:
    lines = text.splitlines()[1:]
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line)
    return "\n".join(out)


def evaluate(text: str, data: dict, claims: dict) -> bool:
    """``data.policy.allow`` for a policy ``spec_of`` accepts (lab stand-in only)."""
    spec = spec_of(text)
    if spec is None:
        flat = " ".join(_strip_comments(text).split())
        return bool(_ALLOW_ALL.match(flat))
    if data.get("plugin") != "resource":
        return False
    if spec.kind == "lab-permissive":
        return True
    submods = claims.get("submods") if isinstance(claims, dict) else None
    if not isinstance(submods, dict):
        return False
    cpu = submods.get("cpu0")
    if not isinstance(cpu, dict) or cpu.get("ear.status") != "affirming":
        return False
    evidence = cpu.get("ear.veraison.annotated-evidence")
    if not isinstance(evidence, dict) or evidence.get("sample"):
        return False
    if not any(evidence.get(tee) for tee in spec.cpu_tees):
        return False
    if any(not isinstance(s, dict) or s.get("ear.status") != "affirming" for s in submods.values()):
        return False
    gpu_required = spec.gpu_paths == ("*",) or data.get("resource-path") in spec.gpu_paths
    if gpu_required:
        gpu = submods.get("gpu0")
        return isinstance(gpu, dict) and gpu.get("ear.status") == "affirming"
    return True
