"""KBS resource policies (Rego) that ccfactory renders.

Trustee v0.21.0's KBS evaluates the resource policy with regorus: rule
``data.policy.allow``, ``input`` = the claims of the attestation token (an EAR: per-device
``submods`` such as ``cpu0``/``gpu0`` with ``ear.status`` and
``ear.veraison.annotated-evidence.<tee>``), ``data`` = ``{"plugin", "resource-path",
"query"}`` where ``resource-path`` is the **array** of path segments
(``trustee@v0.21.0:kbs/src/api_server.rs:222-248``; ``kbs/sample_policies/default.rego``
documents ``["myrepo", "License", "key"]``). ``ccfactory.kbs.rego`` evaluates these policies
with a real Rego engine (tests, and the check before every upload).

Shapes (``PolicySpec.kind``):

``strict`` (every site)
    a ``resource`` request is allowed only if the CPU submodule ``cpu0`` is
    ``affirming`` and carries evidence of one of ``cpu_tees`` (``snp``/``tdx``, never
    ``sample``), every submodule of the token is ``affirming``, and, for the resource
    paths that need a GPU (``gpu_paths``, or all of them), ``gpu0`` is ``affirming``.
``lab-permissive`` (lab only; ``kbs_lab_permissive``)
    any ``resource`` request with any attestation token, sample evidence included. The
    upload gate (``rego.refuse_unsafe_policy``) refuses it outside the lab.

Example::

    >>> from ccfactory.kbs.rego import allows, ear_claims, request_data
    >>> text = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",), gpu_paths=("m/k/gpu",)))
    >>> allows(text, ear_claims({"cpu0": ("affirming", "snp")}), request_data("resource/m/k/1"))
    True
    >>> allows(text, ear_claims({"cpu0": ("affirming", "snp")}), request_data("resource/m/k/gpu"))
    False
    >>> allows(text, ear_claims({"cpu0": ("affirming", "sample")}), request_data("resource/m/k/1"))
    False
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

SHAPE_VERSION = 2  # 2: resource paths compared as segment arrays (Trustee's data shape)
CPU_TEES = ("snp", "tdx")
KINDS = ("strict", "lab-permissive")
# one segment of a KBS resource path (trustee@v0.21.0:kbs/src/plugins/implementations/resource/backend.rs)
_SEGMENT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_\-.]*")


class PolicyError(ValueError):
    """A policy spec is not acceptable."""


def path_segments(path: str) -> tuple[str, str, str]:
    """``repo/type/tag`` (a leading ``/`` tolerated) as the segment tuple Trustee's data holds."""
    parts = tuple(path.removeprefix("/").split("/"))
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise PolicyError(f"resource path {path!r} is not <repo>/<type>/<tag>")
    return parts  # type: ignore[return-value]


@dataclass(frozen=True)
class PolicySpec:
    """What a rendered resource policy requires.

    ``gpu_paths``: resource paths (``repo/type/tag``) that need an affirming GPU
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
        if "*" in self.gpu_paths and len(self.gpu_paths) > 1:
            raise PolicyError("gpu_paths is either ('*',) or a list of paths")
        for path in self.gpu_paths:
            if path != "*":
                path_segments(path)

    def describe(self) -> str:
        """One comment line saying what the policy requires (for people reading the KBS)."""
        if self.kind == "lab-permissive":
            return "# ccfactory policy: lab-permissive"
        gpu = "all" if self.gpu_paths == ("*",) else ", ".join(sorted(set(self.gpu_paths))) or "none"
        return f"# ccfactory policy v{SHAPE_VERSION}: strict; cpu_tees={','.join(sorted(set(self.cpu_tees)))}; gpu resources: {gpu}"


def _rego_set(items) -> str:
    return "{" + ", ".join(json.dumps(i) for i in sorted(set(items))) + "}"


SMOKE_REPO = "ccfactory-verify"  # the attestation check's per-run resources (ccfactory.verify.attestation)


def smoke_type(tee: str, gpu: bool) -> str:
    """Resource type of the attestation check's per-run resource for a ``tee`` (GPU) node."""
    return f"attestation-smoke-{tee}" + ("-gpu" if gpu else "")


def smoke_binding_rules(cpu_tees) -> list[str]:
    """``smoke_bound``: a resource under ``ccfactory-verify/attestation-smoke-<tee>[-gpu]/`` is
    released only to a token whose ``cpu0`` evidence is of that TEE and, with ``-gpu``, whose
    ``gpu0`` is affirming; every other resource is unaffected."""
    types = {smoke_type(t, g): [t, g] for t in sorted(set(cpu_tees)) for g in (False, True)}
    return [
        "# the attestation check's per-run resources: bound to one TEE (and an affirming GPU for -gpu)",
        f"smoke_types := {json.dumps(types, sort_keys=True)}",
        "",
        "smoke_bound if {",
        f'\tdata["resource-path"][0] != {json.dumps(SMOKE_REPO)}',
        "}",
        "",
        "smoke_bound if {",
        f'\tdata["resource-path"][0] == {json.dumps(SMOKE_REPO)}',
        '\twant := smoke_types[data["resource-path"][1]]',
        '\tinput.submods.cpu0["ear.veraison.annotated-evidence"][want[0]]',
        "\tsmoke_gpu_ok(want[1])",
        "}",
        "",
        "smoke_gpu_ok(need) if not need",
        "",
        "smoke_gpu_ok(need) if {",
        "\tneed",
        "\tgpu_attested",
        "}",
        "",
    ]


def render_resource_policy(spec: PolicySpec, header: str = "") -> str:
    """The Rego text of ``spec``; ``header``: comment lines put after the description."""
    out = [spec.describe()]
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
            "# data[\"resource-path\"] is the array of the path's segments (Trustee api_server.rs:236-248).",
            f"gpu_paths := {_rego_set(path_segments(p) for p in spec.gpu_paths)}" if spec.gpu_paths else "gpu_paths := set()",
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
        "# an affirming appraisal of NVIDIA evidence, not of the sampledevice test verifier",
        "gpu_attested if {",
        '\tinput.submods.gpu0["ear.status"] == "affirming"',
        '\tinput.submods.gpu0["ear.veraison.annotated-evidence"].nvidia',
        "}",
        "",
    ]
    if gpu_all:
        out += ["gpu_required := true", ""]
    else:
        out += ["gpu_required if {", '\tdata["resource-path"] in gpu_paths', "}", ""]
    out += smoke_binding_rules(spec.cpu_tees)
    out += [
        "allow if {",
        '\tdata.plugin == "resource"',
        "\tcpu_attested",
        "\tnot any_not_affirming",
        "\tnot gpu_required",
        "\tsmoke_bound",
        "}",
        "",
        "allow if {",
        '\tdata.plugin == "resource"',
        "\tcpu_attested",
        "\tnot any_not_affirming",
        "\tgpu_required",
        "\tgpu_attested",
        "\tsmoke_bound",
        "}",
    ]
    return "\n".join(out) + "\n"
