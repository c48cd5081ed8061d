"""Reference values for Trustee's RVPS, shaped as the attestation policy reads them.

Trustee v0.21.0's built-in AS appraises each device's claims with the policy
``default_cpu`` (``trustee@v0.21.0:attestation-service/src/ear_token/broker.rs:54-63,166-168``);
the policy reads reference values through the regorus extension ``query_reference_value(id)``,
which returns the RVPS value stored under ``id`` as it was registered, or ``null``
(``broker.rs:170-236``; ``rvps/src/lib.rs:113-122``; ``rvps/src/extractors/sample/mod.rs:28-48``:
a ``sample`` message stores each value as given, scalar or list).

**The shape matters.** The default CPU policy tests some values with ``in`` (a list of allowed
values) and others with ``==`` (one value): ``input.snp.measurement in
query_reference_value("snp_launch_measurement")`` but ``input.snp.platform_smt_enabled ==
query_reference_value("snp_smt_enabled")`` (``attestation-service/src/ear_token/
ear_default_policy_cpu.rego:106-133``). A scalar wrapped in a list never equals a scalar, so
the configuration claim could never reach 2. :data:`DEFAULT_CPU_SHAPES` is the table of
each name's shape; :func:`reference_value_shapes` reads it from any policy text (a unit test
checks the table against the policy copied from upstream).

The EAR status is the worst tier of the trust vector (``broker.rs:305``,
``rust-ear@975ba6f:src/appraisal.rs:74-81``; tiers ``src/trust/claim.rs:445-456``: -1..1 none,
2..31 affirming, 32..95 warning, else contraindicated). :func:`appraise` evaluates a policy on
claims shaped as ``transform_claims`` builds them (``broker.rs:462-515``) with regorus, the
engine Trustee uses, so a site can check its reference set against its own policy text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ccfactory.kbs.rego import evaluate_rule

SET = "set"  # checked with `in`: registered as a list of allowed values
SCALAR = "scalar"  # checked with `==` (or `>=`): registered as one value

# Every name ear_default_policy_cpu.rego (trustee@v0.21.0) queries, with its shape and line.
DEFAULT_CPU_SHAPES: dict[str, str] = {
    "launch_digest": SET, "svn": SET,  # sample: lines 73, 83
    "major_version": SCALAR, "minimum_minor_version": SCALAR,  # 84-85
    "snp_launch_measurement": SET,  # 106
    "snp_bootloader": SET, "snp_microcode": SET, "snp_snp_svn": SET, "snp_tee_svn": SET,  # 113-116
    "snp_smt_enabled": SCALAR, "snp_tsme_enabled": SCALAR,  # 128-129
    "snp_guest_abi_major": SCALAR, "snp_guest_abi_minor": SCALAR,  # 130-131
    "snp_single_socket": SCALAR, "snp_smt_allowed": SCALAR,  # 132-133
    "rtmr_1": SET, "rtmr_2": SET,  # 155-156, 166-167
    "mr_td": SET, "xfam": SET,  # 181, 220
    "tdvfkernel": SCALAR, "tdvfkernelparams": SCALAR,  # 229, 238
    "measurement": SET, "snp_pcr11": SET,  # az-snp-vtpm: 245-246
    "tcb_bootloader": SET, "tcb_microcode": SET, "tcb_snp": SET, "tcb_tee": SET,  # 253-256
    "smt_enabled": SET, "tsme_enabled": SET, "abi_major": SET, "abi_minor": SET,  # 266-269
    "single_socket": SET, "smt_allowed": SET,  # 270-271
    "tdx_pcr11": SET,  # az-tdx-vtpm: 278 (mr_td 292, xfam 303 as above)
    "tpm_pcr11": SET, "trusted_aks": SET,  # 314, 316
}  # fmt: skip
# ear_default_policy_gpu.rego (trustee@v0.21.0) lines 53-54
DEFAULT_GPU_SHAPES: dict[str, str] = {"allowed_vbios_versions": SET, "allowed_driver_versions": SET}

_QUERY = re.compile(r"""^(?!\s*#).*?(?P<op>\bin\b|==|>=|<=|!=|>|<)\s*query_reference_value\(\s*"(?P<name>[^"]+)"\s*\)""", re.M)


class ReferenceValueError(ValueError):
    """Reference values that cannot be registered as they are (message names the value and the fix)."""


def reference_value_shapes(policy_text: str) -> dict[str, str]:
    """``{name: "set" | "scalar"}`` for every ``query_reference_value("name")`` the policy
    compares (commented-out lines skipped). A name used both ways is refused."""
    shapes: dict[str, str] = {}
    for match in _QUERY.finditer(policy_text):
        shape = SET if match["op"] == "in" else SCALAR
        name = match["name"]
        if shapes.get(name, shape) != shape:
            raise ReferenceValueError(f"the policy compares {name!r} both with `in` and with `{match['op']}`")
        shapes[name] = shape
    return shapes


def shaped(name: str, value, shapes: Mapping[str, str]):
    """``value`` in the shape the policy needs for ``name``.

    A set name: a list (a single value becomes a one-item list, as ``kbs-client
    set-sample-reference-value`` does by default, ``tools/kbs-client/src/main.rs:406-409``).
    A scalar name: one value; a one-item list is unwrapped, a longer list is refused (``==``
    can match only one). A name the policy does not query is kept as given.
    """
    shape = shapes.get(name)
    if shape == SET:
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if shape == SCALAR:
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ReferenceValueError(
                    f"{name}: the attestation policy compares it with `==`, so it takes one value, not "
                    f"{len(value)}; fix: give a single value (sites whose nodes differ here cannot share one policy)"
                )
            return value[0]
        return value
    return value


# ------------------------------------------------------------------ evaluating an AS policy

# The AS registers query_reference_value as a regorus extension (broker.rs:170-236); the Python
# module cannot, so the same function is defined in Rego over a private data document.
RV_DOCUMENT = "ccfactory_rvps"
_QUERY_FUNCTION = f"\n\nquery_reference_value(id) := object.get(data.{RV_DOCUMENT}, id, null)\n"
TRUST_CLAIMS_RULE = "data.policy.trust_claims"  # broker.rs:38
TIERS = ("none", "affirming", "warning", "contraindicated")


# (lowest, highest, tier), first match wins: rust-ear ``src/trust/claim.rs:445-456``
TIER_RANGES = ((-1, 1, "none"), (-32, 31, "affirming"), (-96, 95, "warning"))


def tier(value: int) -> str:
    """AR4SI tier of one trust claim."""
    return next((name for low, high, name in TIER_RANGES if low <= value <= high), "contraindicated")


def ear_status(vector: Mapping[str, int]) -> str:
    """The worst tier of the vector (``Appraisal::update_status_from_trust_vector``)."""
    return max((tier(v) for v in vector.values()), key=TIERS.index, default="none")


def as_policy_input(tee: str, claims: Mapping, init_data_claims=None, runtime_data_claims=None) -> dict:
    """The policy input ``transform_claims`` builds from a verifier's claims (broker.rs:462-515):
    ``init_data`` and ``report_data`` move out of the TEE's object, next to it."""
    inner = dict(claims)
    out: dict = {}
    if "init_data" in inner:
        out["init_data"] = inner.pop("init_data")
        out["init_data_claims"] = init_data_claims if init_data_claims is not None else {}
    if "report_data" in inner:
        out["report_data"] = inner.pop("report_data")
        out["runtime_data_claims"] = runtime_data_claims if runtime_data_claims is not None else {}
    out[tee] = inner
    return out


@dataclass(frozen=True)
class Appraisal:
    trust_vector: dict[str, int]
    status: str


def appraise(policy_text: str, policy_input: Mapping, reference_values: Mapping) -> Appraisal:
    """Trust vector and EAR status the AS would give ``policy_input`` under ``policy_text`` with
    RVPS holding ``reference_values`` (exactly as registered: shapes are not corrected here)."""
    vector = evaluate_rule(policy_text + _QUERY_FUNCTION, TRUST_CLAIMS_RULE, dict(policy_input),
                           {RV_DOCUMENT: dict(reference_values)})  # fmt: skip
    if not isinstance(vector, dict):
        vector = dict.fromkeys(("executables", "hardware", "configuration"), 0)  # broker.rs:288-291
    return Appraisal({k: int(v) for k, v in vector.items()}, ear_status(vector))


# ------------------------------------------------------------------ reference values and their origin

COMPUTED = "computed"  # from the installed artefacts and settings
HOST = "read from the host"  # the worker's firmware interface
SITE_POLICY = "site policy"  # the site's own settings (guest policy)
PINNED = "pinned on first use"  # recorded from an attestation of a node the operator approved
OPERATOR = "operator"  # kbs_reference_values / kbs_reference_values_file
ORIGINS = (COMPUTED, HOST, SITE_POLICY, PINNED, OPERATOR)


@dataclass(frozen=True)
class Reference:
    """One expected value, where it applies and how it was obtained."""

    name: str
    value: object
    origin: str
    scope: str  # e.g. "worker-1/qemu-snp" or "worker-1"
    source: str = ""  # how exactly (tool, inputs, interface)

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"unknown origin {self.origin!r}")


@dataclass
class ReferenceSet:
    """Every expected value of a site, merged into what RVPS holds."""

    references: list[Reference] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # values that could not be obtained (why)

    def add(self, refs: Iterable[Reference]) -> None:
        self.references.extend(refs)

    def values(self, shapes: Mapping[str, str] = DEFAULT_CPU_SHAPES, overrides: Mapping | None = None,
               strict: bool = True) -> dict:  # fmt: skip
        """``{name: value}`` to register: a set name holds every distinct value of every
        shim/host (sorted, so a re-run registers the same document); a scalar name must agree
        across the site (else raised, or with ``strict=False`` left out and added to
        ``pending``). The operator's ``overrides`` replace a name entirely."""
        overrides = overrides or {}
        merged: dict[str, list] = {}
        for ref in self.references:
            if ref.name in overrides:
                continue
            bucket = merged.setdefault(ref.name, [])
            if ref.value not in bucket:
                bucket.append(ref.value)
        out: dict = {}
        for name, values in sorted(merged.items()):
            if shapes.get(name) == SCALAR and len(values) > 1:
                where = sorted({f"{r.scope}={r.value!r}" for r in self.references if r.name == name})
                problem = (f"{name}: the attestation policy compares it with `==` but the site's nodes differ "
                           f"({', '.join(where)}); fix: make the nodes agree, or set {name} in kbs_reference_values")  # fmt: skip
                if strict:
                    raise ReferenceValueError(problem)
                if problem not in self.pending:
                    self.pending.append(problem)
                continue
            out[name] = shaped(name, sorted(values, key=repr), shapes)
        for name, value in overrides.items():
            out[name] = shaped(name, value, shapes)
        return out

    def report(self, overrides: Mapping | None = None) -> list[dict]:
        """Rows for the dry-run and readiness report: name, scope, origin, value, source."""
        rows = [{"name": r.name, "scope": r.scope, "origin": r.origin, "value": r.value, "source": r.source}
                for r in self.references if r.name not in (overrides or {})]  # fmt: skip
        rows += [{"name": n, "scope": "site", "origin": OPERATOR, "value": v, "source": "kbs_reference_values"}
                 for n, v in sorted((overrides or {}).items())]  # fmt: skip
        return sorted(rows, key=lambda r: (r["name"], r["scope"]))


# ------------------------------------------------------------------ SNP values from their sources

# Guest policy bits (AMD SEV-SNP Firmware ABI spec 56860, Guest Policy table): the attestation
# report's POLICY field is the guest policy the VMM launched with (QEMU sev-snp-guest policy=).
SNP_POLICY_BITS = {"abi_minor": (0, 8), "abi_major": (8, 8), "smt_allowed": (16, 1), "reserved_17": (17, 1),
                   "migrate_ma": (18, 1), "debug": (19, 1), "single_socket": (20, 1)}  # fmt: skip


def snp_policy_fields(policy: int) -> dict:
    out = {}
    for name, (shift, width) in SNP_POLICY_BITS.items():
        raw = (policy >> shift) & ((1 << width) - 1)
        out[name] = bool(raw) if width == 1 else raw
    return out


def snp_configuration_values(guest_policy: int, scope: str, smt_enabled: bool, tsme_enabled: bool | None,
                             platform_source: str) -> list[Reference]:  # fmt: skip
    """The configuration names of the default policy (lines 124-134): ABI, SMT allowed and
    single socket from the site's guest policy (``runtime_snp_guest_policy``), SMT/TSME enabled
    from the host (``tsme_enabled`` None: not known, left out). Refused when the guest policy can never be affirmed (debug or migration agent)."""
    fields = snp_policy_fields(guest_policy)
    if fields["debug"] or fields["migrate_ma"]:
        which = "DEBUG (bit 19)" if fields["debug"] else "MIGRATE_MA (bit 18)"
        raise ReferenceValueError(
            f"{scope}: runtime_snp_guest_policy {guest_policy:#x} sets {which}; the default attestation policy "
            "requires it clear (ear_default_policy_cpu.rego:126-127), so no guest would be affirmed; fix: clear it"
        )
    source = f"runtime_snp_guest_policy {guest_policy:#x}"
    refs = [
        Reference("snp_guest_abi_major", fields["abi_major"], SITE_POLICY, scope, source),
        Reference("snp_guest_abi_minor", fields["abi_minor"], SITE_POLICY, scope, source),
        Reference("snp_smt_allowed", fields["smt_allowed"], SITE_POLICY, scope, source),
        Reference("snp_single_socket", fields["single_socket"], SITE_POLICY, scope, source),
        Reference("snp_smt_enabled", bool(smt_enabled), HOST, scope, platform_source),
    ]
    if tsme_enabled is not None:
        refs.append(Reference("snp_tsme_enabled", bool(tsme_enabled), HOST, scope, platform_source))
    return refs


@dataclass(frozen=True)
class SnpTcb:
    """A TCB_VERSION (spec 56860, TCB_VERSION structure: byte 0 boot loader, 1 TEE, 6 SNP, 7 microcode)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> SnpTcb:
        if len(raw) != 8:
            raise ValueError(f"a TCB_VERSION is 8 bytes, not {len(raw)}")
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])


def snp_hardware_values(tcb: SnpTcb, scope: str, source: str) -> list[Reference]:
    """The hardware names of the default policy (lines 113-116) from the host's reported TCB."""
    return [
        Reference("snp_bootloader", tcb.bootloader, HOST, scope, source),
        Reference("snp_microcode", tcb.microcode, HOST, scope, source),
        Reference("snp_snp_svn", tcb.snp, HOST, scope, source),
        Reference("snp_tee_svn", tcb.tee, HOST, scope, source),
    ]


def snp_executables_value(measurement: str, scope: str, source: str) -> Reference:
    """``snp_launch_measurement`` (line 106): the 48-byte launch digest, lowercase hex as the
    verifier reports it (``deps/verifier/src/snp/mod.rs:600-625``, ``hex::encode``)."""
    if not re.fullmatch(r"[0-9a-f]{96}", measurement):
        raise ReferenceValueError(f"{scope}: snp_launch_measurement {measurement!r} is not 96 lowercase hex digits")
    return Reference("snp_launch_measurement", measurement, COMPUTED, scope, source)


# ------------------------------------------------------------------ TDX: pinned on first use

# What ear_default_policy_cpu.rego checks for TDX beyond fixed constants (lines 151-239):
# path in the verifier's claims -> reference value name.
TDX_PINNED_FIELDS = {
    "rtmr_1": ("quote", "body", "rtmr_1"),
    "rtmr_2": ("quote", "body", "rtmr_2"),
    "mr_td": ("quote", "body", "mr_td"),
    "xfam": ("quote", "body", "xfam"),
}
# UEFI event log entries (lines 223-239): name -> (event type, matcher on details)
TDX_EVENT_FIELDS = {
    "tdvfkernel": ("EV_EFI_BOOT_SERVICES_APPLICATION", lambda d: "File(kernel)" in (d.get("device_paths") or [])),
    "tdvfkernelparams": ("EV_EVENT_TAG", lambda d: d.get("string") == "LOADED_IMAGE::LoadOptions"),
}


def tdx_pin_on_first_use(claims: Mapping, scope: str, approved_by: str) -> list[Reference]:
    """The TDX values of the default policy recorded from one attestation of a node the
    operator approved by name (``approved_by``: never empty, never implicit). Refused for a
    debug TD (``td_attributes.debug``: the policy's configuration check, line 217)."""
    if not approved_by:
        raise ReferenceValueError(f"{scope}: pinning TDX values on first use needs the operator's explicit approval")
    if (claims.get("td_attributes") or {}).get("debug"):
        raise ReferenceValueError(f"{scope}: the TD runs with debug on; its measurements would never be affirmed")
    source = f"first attestation of {scope}, approved by {approved_by}"
    refs = []
    for name, path in TDX_PINNED_FIELDS.items():
        value = claims
        for key in path:
            value = value[key]
        refs.append(Reference(name, value, PINNED, scope, source))
    for name, (event_type, match) in TDX_EVENT_FIELDS.items():
        digests = [d["digest"] for e in claims.get("uefi_event_logs", []) if e.get("type_name") == event_type
                   and match(e.get("details") or {}) for d in e.get("digests", [])]  # fmt: skip
        if len(set(digests)) == 1:
            refs.append(Reference(name, digests[0], PINNED, scope, source))
    return refs
