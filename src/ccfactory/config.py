"""Typed configuration: one validated, frozen ``NodeConfig`` per host.

Host data in pyinfra is flat (pyinfra does not deep-merge dicts), so every option is a
flat, prefixed key (``bmc_address``, ``gpu_cc_mode`` ...). ``HostData`` is the schema of
those keys and doubles as their documentation (the README's option table is generated
from it). ``NodeConfig`` is the nested, typed view the roles use.

Example::

    >>> cfg = load_node_config("gpu-01", ["workers", "snp", "gpu"], {
    ...     "bmc_vendor": "dell", "bmc_address": "10.0.0.5", "bmc_username": "root",
    ...     "bmc_password_env": "BMC_GPU01_PASSWORD", "gpu_count": 8, "gpu_model": "H100",
    ... })
    >>> cfg.tee, cfg.gpu.cc_mode, cfg.bmc.port
    ('snp', 'on', 443)
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError, ValidationInfo, field_validator

from ccfactory.gpus import gpu_model_by_name, gpu_models
from ccfactory.model import opt as _opt
from ccfactory.roles.firmware.options import KNOWN_BMC_VENDORS, FirmwareOptions
from ccfactory.roles.gpu.options import GpuOptions
from ccfactory.roles.kbs.options import KbsOptions
from ccfactory.roles.runtime.options import RuntimeOptions
from ccfactory.model import (  # noqa: F401 (re-exported: the typed view, built here from the inventory)
    DEFAULT_ARTIFACT_CACHE,
    DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_REBOOT_TIMEOUT,
    ArtifactSource,
    ArtifactSourceKind,
    BmcConfig,
    GpuCcMode,
    GpuConfig,
    KbsConfig,
    NodeConfig,
    RebootPolicy,
    RuntimeConfig,
    SecretRef,
    StrictModel,
    Tee,
)
from ccfactory.validate import (  # noqa: F401 (also re-exported: the inventory checks and tests import them from here)
    RESOURCE_PATH_RE,
    RESOURCE_URI_RE,
    SECRET_IN_URL,
    host_name_problem,
    host_problem,
    https_base_url,
    normalize_host,
    regular_file_problem,
    resource_uri_problem,
    safe_path_component,
    secret_file_problem,
    url_host,
    url_identity,
    url_problem,
)


# Inventory groups that carry meaning for ccfactory.
ROLE_GROUPS = {"workers": "worker", "kbs": "kbs"}
TEE_GROUPS = ("snp", "tdx")
GPU_GROUP = "gpu"

MIN_GRACEFUL_TIMEOUT = 60  # outside the lab: below this a normal shutdown could be cut short

# SEV-SNP guest policy (AMD SEV Secure Nested Paging Firmware ABI Specification, pub. 56860,
# "Guest Policy" table): a 64-bit field; bit 17 is reserved and must be one; bit 19 (DEBUG)
# lets the host debug (read and write) the guest's memory.
SNP_POLICY_RESERVED_ONE = 1 << 17
SNP_POLICY_DEBUG = 1 << 19
# bios_overrides min_sev_asid (BIOS "Minimum SEV non-ES ASID"): ASIDs below it are for SEV-ES
# and SNP guests, so 1 leaves none. Dell R750's BiosRegistry allows 1..510 (EPYC 7003: 509
# ASIDs); EPYC 9004/9005 have 1006, so at most 1007.
MIN_SEV_ASID_RANGE = (1, 1007)

# Keys that hold secrets must never carry the secret itself: only a reference.
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|private_key|api_key)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")




class HostData(RuntimeOptions, KbsOptions, GpuOptions, FirmwareOptions):  # fields: firmware's first
    """Every ccfactory host-data key, flat, as written in inventories and group_data: the keys
    shared by stages (below) and every stage's own options (``roles/<stage>/options.py``).

    Connector keys (``ssh_*`` ...) and pyinfra global arguments (``_sudo`` ...) belong to
    pyinfra and are not listed here.
    """

    # --- node identity
    tee: Tee | None = _opt(
        None,
        "Trusted execution environment of the node's CPU. Defaults from the `snp`/`tdx` "
        "group; `none` for machines without a TEE (e.g. the KBS host).",
        "node",
    )
    # --- KBS (Trustee)
    kbs_url: str | None = _opt(
        None, "URL of the Key Broker Service the node's guests attest to (https://).", "kbs"
    )
    kbs_ca_cert: str | None = _opt(
        None,
        "Controller-side PEM file of the CA that signed the KBS certificate (the site CA the "
        "kbs stage creates, unless you bring your own).",
        "kbs",
    )
    # --- templates (every stage)
    template_overlay_dirs: list[str] = _opt(
        [], "Controller-side directories whose templates shadow ccfactory's by relative path (every stage's templates).", "templates"
    )
    # --- reboots
    reboot_batch_size: int = _opt(
        1, "At most this many hosts reboot at the same time (rolling).", "reboot", ge=1, le=1000
    )
    reboot_timeout: int = _opt(
        DEFAULT_REBOOT_TIMEOUT,
        "Seconds to wait for a host to come back after a reboot before it fails.",
        "reboot",
        ge=30,
        le=14400,
    )
    reboot_graceful_timeout: int | None = _opt(
        None,
        "Seconds a host may keep answering SSH on its old boot after a reboot request (the firmware stage's "
        "GracefulRestart, the host and gpu stages' `systemctl reboot`: ignored or refused) before ccfactory resets "
        "it with ForceRestart through its BMC. At least 60 (lab: any), below `reboot_timeout`; unset: 300, or half "
        "of `reboot_timeout` if less. A shutdown that hangs after sshd stopped is not caught: it fails at "
        "`reboot_timeout`.",
        "reboot",
        ge=1,
        le=14400,
    )
    # --- artifacts
    artifact_source: ArtifactSourceKind = _opt(
        "upstream",
        "Where BOM artifacts come from: `upstream` URLs, a `mirror` base URL, or a `local` directory.",
        "artifacts",
    )
    artifact_mirror_url: str | None = _opt(
        None, "Base URL of an internal mirror holding the BOM's files by name.", "artifacts"
    )
    artifact_dir: str | None = _opt(
        None, "Controller-side directory holding the BOM's files by name (air-gapped sites).", "artifacts"
    )
    artifact_cache_dir: str = _opt(
        DEFAULT_ARTIFACT_CACHE, "Controller-side cache of verified artifacts.", "artifacts"
    )
    bom_site_file: str | None = _opt(
        None,
        "Controller-side TOML file of the site's own BOM entries (`[[artifact]]`), laid over the packaged BOM: "
        "pins what the packaged BOM leaves unpinned (`ccfactory bom pin NAME --site-bom FILE` writes it) or "
        "replaces an entry (e.g. an image from the site's registry mirror, same digest).",
        "artifacts",
    )
    # --- lab
    lab: bool = _opt(
        False,
        "Set only by `ccfactory lab up` in the inventory it writes: allows lab stand-ins. "
        "Refused unless the host is a node of a lab running on this controller, proven from live state "
        "(see Validation rules).",
        "lab",
    )
    lab_dir: str | None = _opt(None, "Directory of the lab this host belongs to.", "lab")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode turns True into 1 for int and float keys (gpu_count = True: one
        # GPU); a bool where a number belongs is refused instead
        if isinstance(value, bool) and info.field_name in _NUMBER_FIELDS:
            raise ValueError(f"a bool is not a number (got {value!r}); fix: give the number itself, e.g. 8")
        return value



def _is_number_annotation(annotation: Any) -> bool:
    import typing

    args = typing.get_args(annotation) or (annotation,)
    return any(a in (int, float) for a in args)


_NUMBER_FIELDS = frozenset(k for k, f in HostData.model_fields.items() if _is_number_annotation(f.annotation))


# Fix hints shown with an error on a field, when the error itself does not say.
FIELD_HINTS: dict[str, str] = {
    "tee": "set tee to snp, tdx or none, or put the host in exactly one of the snp/tdx groups",
    "bmc_vendor": f"use one of {', '.join(KNOWN_BMC_VENDORS)} or add a BIOS profile for the vendor",
    "gpu_model": f"use one of {', '.join(gpu_models())}",
    "gpu_cc_mode": "use on, devtools, off or ppcie",
    "kbs_url": "use https://host[:port]",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one host's data."""

    host: str
    field: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        # a newline or control character in a host name or value must not forge a line
        host, field, message, fix = (_printable(t) for t in (self.host, self.field, self.message, self.fix))
        text = f"{host}: {field}: {message}"
        return f"{text}; fix: {fix}" if fix else text


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class InventoryError(Exception):
    """Raised with every problem of every host, before any host is touched."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        lines = [f"{len(self.problems)} problem(s) in the inventory, no host was touched:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------- loading


def connector_keys() -> frozenset[str]:
    """Host-data keys that belong to pyinfra's connectors (``ssh_port`` ...)."""
    from pyinfra.api.connectors import get_all_connectors

    keys: set[str] = set()
    for connector in get_all_connectors().values():
        keys.update(getattr(connector, "data_meta", {}) or {})
    return frozenset(keys)


def _is_pyinfra_key(key: str, connector: frozenset[str]) -> bool:
    # "_sudo" and friends are pyinfra global arguments set as data
    return key.startswith("_") or key in connector


def _unknown_key_problem(host: str, key: str) -> Problem:
    if _SECRET_KEY.search(key):
        return Problem(
            host,
            key,
            "a literal secret is not allowed in the inventory",
            f"remove it and set {_secret_ref_hint(key)}",
        )
    close = difflib.get_close_matches(key, HostData.model_fields, n=1, cutoff=0.75)
    fix = f"did you mean '{close[0]}'?" if close else "remove it (see README, 'Configuration')"
    if not key.isascii():
        # a look-alike (Cyrillic 'а' for 'a', a zero-width space...) prints like the real key
        odd = ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(key) if not c.isascii())
        fix = f"the key contains non-ASCII characters ({odd}); retype it" + (f": did you mean '{close[0]}'?" if close else "")
        return Problem(host, ascii(key)[1:-1], "unknown key (contains non-ASCII characters)", fix)
    return Problem(host, key, "unknown key", fix)


def _secret_ref_hint(key: str) -> str:
    if key.endswith("password"):
        base = key[: -len("password")].rstrip("_")
        return f"{base}_password_env (name of an environment variable) or {base}_password_file (path of a 0600 file)"
    return f"{key}_env or {key}_file"


def _pydantic_problems(host: str, error: ValidationError) -> list[Problem]:
    problems = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(data)"
        if err["type"] == "extra_forbidden":
            problems.append(_unknown_key_problem(host, field))
            continue
        got = err.get("input")
        message, _, fix = err["msg"].removeprefix("Value error, ").partition("; fix: ")
        if not isinstance(got, (dict, list)) and "(got " not in message:
            message = f"{message} (got {got!r})"
        fix = fix or FIELD_HINTS.get(field) or f"see {field.split('.')[0]} in the README's Configuration section"
        problems.append(Problem(host, field, message, fix))
    return problems


# Every rule enforced on inventory input beyond a key's type and range, with its source; the
# README's "Validation rules" list is generated from this (ccfactory docs) plus the ranges of
# HostData's fields. (keys, rule, source)
VALIDATION_RULES: tuple[tuple[str, str, str], ...] = (
    ("(any key)", "unknown keys are refused, with a 'did you mean'; a key with non-ASCII characters (a look-alike) says so and shows their code points", "ccfactory"),
    ("(any key)", "a key named like a secret (`*password`, `*secret`, `*token`, `*private_key`, `*api_key`) is refused and its value never printed: give `<key>_env` or `<key>_file`", "ccfactory"),
    ("(numbers)", "a bool is not a number (pydantic would read True as 1); floats must be finite (no inf, nan)", "ccfactory"),
    ("bmc_address", "an IP address (IPv4, IPv6 bare or in brackets) or a host name (IDNA via Python's `idna` codec, RFC 1123 labels, last label not numeric); no `user:password@` (a literal secret, never printed), no `host:port` (use bmc_port), no URL, query, fragment, zone index, whitespace, control characters or quotes", "RFC 1123 2.1, RFC 3696 2, RFC 3986 3.2.2"),
    ("bmc_address", "two hosts with the same BMC (same address in any letter case or IPv6 spelling, same port) are refused", "ccfactory"),
    ("bmc_address", "the Redfish URL is built from parts, an IPv6 address bracketed once", "RFC 3986 3.2.2"),
    ("kbs_url", "parsed by `urllib.parse.urlsplit`: https (http only in the lab), a host name or IP, port 1-65535, no path, query, fragment or user information (a secret: never printed), no whitespace, control characters or quotes", "RFC 3986; Trustee serves /kbs/v0 at the root"),
    ("kbs_url", "when the inventory has a KBS host, every worker's kbs_url must be one a KBS host serves (scheme, host, port)", "ccfactory"),
    ("artifact_mirror_url", "http(s), a host, port 1-65535, a path without `..`, no query, fragment or user information (never printed)", "RFC 3986"),
    ("runtime_snp_guest_policy", "reserved bit 17 must be set; DEBUG (bit 19) only with runtime_snp_debug_acknowledged or in the lab; at most 2^63-1 (TOML integers are signed 64-bit; bits 63:26 are reserved)", "AMD SEV-SNP Firmware ABI spec 56860, Guest Policy table; TOML 1.0 Integer"),
    ("bios_overrides.min_sev_asid", "1 to 1007", "Dell R750 BiosRegistry 1..510 (EPYC 7003: 509 ASIDs); EPYC 9004/9005: 1006 ASIDs"),
    ("runtime_kata_memory, runtime_kata_gpu_memory, runtime_kata_vcpus, runtime_kata_gpu_vcpus", "guest memory at least 256 MiB, at most 4 TiB; vCPUs 1-256", "Kata virtcontainers/hypervisor.go MinHypervisorMemory = 256; kata-types config/default.rs MAX_QEMU_VCPUS = 256"),
    ("reboot_timeout", "outside the lab, when reboot_graceful_timeout is unset, its derived value (half of reboot_timeout, at most 300) must be at least 60: reboot_timeout at least 120", "ccfactory (MIN_GRACEFUL_TIMEOUT)"),
    ("gpu_cc_mode", "devtools outside the lab needs gpu_devtools_acknowledged = True", "NVIDIA: devtools mode is for debugging, not confidential"),
    ("bmc_password_file, kbs_ca_key_file, kbs_tls_key_file, kbs_admin_key_file", "a regular file, not a symlink (`os.lstat`; read with O_NOFOLLOW), owned by the controller user, mode 0600 or stricter", "ssh(1) rule for private keys"),
    ("kbs_resources, kbs_tls_cert_file, kbs_policy_file, ...", "each file resolves to a regular readable file outside /proc, /sys and /dev (no devices, FIFOs, sockets, directories, process environments)", "ccfactory"),
    ("kbs_resources, kbs_gpu_resources", "resource paths `<repo>/<type>/<tag>`, matched whole (`\\A...\\Z`: a trailing newline does not pass)", "Trustee kbs/src/plugins/implementations/resource/backend.rs (ResourceDesc)"),
    ("coco_resource_uris", "`kbs:///<repo>/<type>/<tag>` with the same segment rule: no `..`, no host, exactly three segments", "guest-components confidential-data-hub; Trustee ResourceDesc"),
    ("(host name)", "one path component of letters, digits, '.', '-', '_', ':', '@', no '..' (host names become controller paths: sites/<host>/pki, reports/<host>.json)", "ccfactory"),
    ("(paths)", "`~user` must name a user of the controller; template_overlay_dirs must be directories", "ccfactory"),
    ("(groups)", "a host in two groups whose data give one key different values is refused (unless the host's own data sets it), naming both groups", "pyinfra merges group data silently, last group wins"),
    ("ssh_hostname", "group data (or global data) may not give the same ssh_hostname to two hosts", "ccfactory"),
    ("ssh_hostname", "the bmc_address parser: a host name (IDNA) or IP address, IPv6 bare (paramiko passes it to `getaddrinfo`, which takes no brackets); no `user:password@` (a literal secret, never printed; the user goes in ssh_user), no `host:port` (use ssh_port), no URL, whitespace, control characters or quotes", "RFC 1123 2.1; RFC 4291 2.2 (IPv6 text form)"),
    ("(inventory)", "an inventory without hosts is refused; a Python error in an inventory or group-data file is reported as file:line: message", "ccfactory"),
    ("lab", "accepted only for a node of a lab running on this controller, proven from live state, never from a file: `lab.json` and `pki/ca.pem` owned by root (the lab runs as root) and writable by nobody else, the CA's SHA-256 the one `lab up` recorded; the node's supervisor alive (pid and start time), its command line `-m ccfactory.lab.supervisor --lab-dir <lab_dir> --node <node>`, run by root; bridge `ccflab0` up with the lab gateway, the node's veth on it, its network namespace present. The host must connect to that node's address (ssh_hostname, else the host name), and bmc_address, bmc_ca_bundle and the kbs_url host must be the node's BMC on `ccfbmc0`, the lab CA and a node of the same lab; otherwise no lab relaxation applies", "ccfactory (ccfactory.lab.proof)"),
    ("(rendered configs)", "aa.toml, cdh.toml, the Kata and containerd drop-ins write every value through a TOML serializer (tomli_w); initdata is serialized by tomli_w, reports by json", "ccfactory"),
)


# (the hostile-input validators live in ccfactory.validate, imported above)

def _lab_problems(host: str, data: HostData, raw: Mapping[str, Any]) -> list[Problem]:
    """A host may use lab stand-ins only if it is a node of a lab running on this controller,
    proven from live state (the lab's proof, reached through ``ccfactory.labhooks``: config
    does not import the lab), never from a file anyone can write. No proof installed: refused."""
    from ccfactory import labhooks

    hooks = labhooks.installed()
    if hooks is None:
        return [Problem(host, "lab", "lab is true, but this program cannot prove a lab (the lab's hooks are not installed)",
                        "run through pyinfra with deploy/*.py, or `ccfactory`, which install them; or remove lab")]  # fmt: skip
    facts = {**data.model_dump(include={"lab_dir", "bmc_address", "bmc_ca_bundle", "kbs_url"}),
             "ssh_hostname": raw.get("ssh_hostname")}  # fmt: skip
    return [Problem(host, field, message, fix) for field, message, fix in hooks.prove_host(host, facts)]


def _ssh_hostname_problems(host: str, raw: Mapping[str, Any]) -> list[Problem]:
    """pyinfra's ``ssh_hostname`` (a connector key, else passed through unchecked): the same
    parser as ``bmc_address``; IPv6 bare, as paramiko hands it to ``getaddrinfo``."""
    value = raw.get("ssh_hostname")
    if value is None:
        return []
    if not isinstance(value, str):
        return [Problem(host, "ssh_hostname", f"is not a string ({type(value).__name__})", "give the host's name or IP address")]
    if bad := host_problem(value):
        message, bmc_fix = bad
        if "@" in value:
            fix = "give only the host's name or IP: the user goes in ssh_user; SSH logs in with a key (ssh_key)"
        else:
            fix = "put the port in ssh_port" if "bmc_port" in bmc_fix else "give the host's name or IP address"
        return [Problem(host, "ssh_hostname", message, fix)]
    if value.startswith("["):
        return [Problem(host, "ssh_hostname", "an IPv6 address in brackets: SSH takes it bare", f"use {value[1:-1]}")]
    return []


def _cross_field_problems(host: str, groups: tuple[str, ...], data: HostData) -> tuple[list[Problem], Tee]:
    problems: list[Problem] = []
    add = problems.append
    add_all = problems.extend

    tee_groups = [g for g in TEE_GROUPS if g in groups]
    tee: Tee
    if len(tee_groups) > 1:
        add(Problem(host, "tee", "host is in both the snp and tdx groups", FIELD_HINTS["tee"]))
        tee = data.tee or "none"
    elif tee_groups and data.tee and data.tee != tee_groups[0]:
        add(
            Problem(
                host,
                "tee",
                f"tee is {data.tee!r} but the host is in group {tee_groups[0]!r}",
                FIELD_HINTS["tee"],
            )
        )
        tee = data.tee
    else:
        tee = data.tee or (tee_groups[0] if tee_groups else "none")  # type: ignore[assignment]
    if data.reboot_graceful_timeout is not None and data.reboot_graceful_timeout < MIN_GRACEFUL_TIMEOUT and not data.lab:
        add(Problem(host, "reboot_graceful_timeout",
                    f"{data.reboot_graceful_timeout}s is too short: a host still stopping its services would be "
                    "reset hard, before its disks are synced",
                    f"use at least {MIN_GRACEFUL_TIMEOUT} (shorter only in the lab), or leave it unset"))
    elif data.reboot_graceful_timeout is not None and data.reboot_graceful_timeout >= data.reboot_timeout:
        add(Problem(host, "reboot_graceful_timeout",
                    f"{data.reboot_graceful_timeout}s is not below reboot_timeout ({data.reboot_timeout}s): a host that "
                    "ignores a GracefulRestart would fail before it is force-restarted",
                    "set it below reboot_timeout, or leave it unset"))
    elif data.reboot_graceful_timeout is None and not data.lab:
        derived = min(DEFAULT_GRACEFUL_TIMEOUT, data.reboot_timeout // 2)
        if derived < MIN_GRACEFUL_TIMEOUT:
            add(Problem(host, "reboot_timeout",
                        f"{data.reboot_timeout}s leaves a graceful-reboot window of {derived}s (half of it), below the "
                        f"minimum of {MIN_GRACEFUL_TIMEOUT}s",
                        f"use at least {2 * MIN_GRACEFUL_TIMEOUT}s (bare metal takes 10-30 minutes to POST)"))
    if "workers" in groups and tee == "none":
        add(Problem(host, "tee", "a worker needs a TEE", "put the host in the snp or tdx group, or set tee"))
    if bad_name := host_name_problem(host):
        add(Problem(host, "(host name)", bad_name, "rename the host (its address goes in ssh_hostname)"))

    # SEV-SNP guest policy (AMD SEV-SNP ABI spec 56860, "Guest Policy"); the 64-bit limit is
    # the field's le=2**64-1
    policy = data.runtime_snp_guest_policy
    if not policy & SNP_POLICY_RESERVED_ONE:
        add(Problem(host, "runtime_snp_guest_policy", f"{policy:#x} has reserved bit 17 clear; the SNP firmware "
                    "refuses a policy without it (ABI spec 56860, Guest Policy)", f"use {policy | SNP_POLICY_RESERVED_ONE:#x}"))
    if policy & SNP_POLICY_DEBUG and not (data.runtime_snp_debug_acknowledged or data.lab):
        add(Problem(host, "runtime_snp_guest_policy", f"{policy:#x} sets DEBUG (bit 19): the host could read and "
                    "write the guests' memory", f"use {policy & ~SNP_POLICY_DEBUG:#x}, or set "
                    "runtime_snp_debug_acknowledged = True for a debug-only site"))
    for i, uri in enumerate(data.coco_resource_uris):
        if bad_uri := resource_uri_problem(uri):
            add(Problem(host, f"coco_resource_uris[{i}]", f"{uri!r} {bad_uri}", "e.g. kbs:///models/llama-3/key"))
    asid = data.bios_overrides.get("min_sev_asid")
    if asid is not None:
        low, high = MIN_SEV_ASID_RANGE
        number = asid if isinstance(asid, int) else int(asid) if str(asid).strip().isdigit() else None
        if number is not None and not low <= number <= high:
            add(Problem(host, "bios_overrides", f"min_sev_asid: {number} is outside {low}-{high} (ASIDs below it "
                        "are for SEV-ES/SNP guests; EPYC has at most 1006)", "e.g. 100, or 509 for the most SNP guests"))

    # GPUs
    if GPU_GROUP in groups and data.gpu_count == 0:
        add(Problem(host, "gpu_count", "host is in group gpu but gpu_count is 0", "set gpu_count"))
    if data.gpu_count and not data.gpu_model:
        add(Problem(host, "gpu_model", "gpu_count is set but gpu_model is not", FIELD_HINTS["gpu_model"]))
    model = gpu_model_by_name(data.gpu_model) if data.gpu_model else None
    if data.gpu_model and model is None:
        add(Problem(host, "gpu_model", f"unknown GPU model {data.gpu_model!r}", FIELD_HINTS["gpu_model"]))
    if model and data.gpu_count:
        mode = data.gpu_cc_mode
        if mode in ("on", "devtools") and not model.cc:
            add(Problem(host, "gpu_cc_mode", f"{model.model} does not support CC mode", "use off"))
        if mode == "ppcie" and not model.ppcie:
            add(
                Problem(
                    host,
                    "gpu_cc_mode",
                    f"ppcie needs an HGX Hopper GPU; {model.model} ({model.architecture}) cannot do it",
                    "use on",
                )
            )
        elif mode == "ppcie" and data.gpu_count < 2:
            add(Problem(host, "gpu_cc_mode", "ppcie protects multi-GPU HGX systems; gpu_count is 1", "use on"))
    if data.gpu_cc_mode == "devtools" and not data.lab and not data.gpu_devtools_acknowledged:
        add(Problem(host, "gpu_cc_mode", "devtools lets the host debug the GPUs: no confidentiality, never for production",
                    "use on, or set gpu_devtools_acknowledged = True on a debug-only host"))
    if data.gpu_count and tee == "none" and data.gpu_cc_mode != "off":
        add(Problem(host, "gpu_cc_mode", "GPU CC mode needs a CPU TEE, but tee is none", "use off, or set tee"))

    # BMC: a host has one when bmc_address is set; vendor and username may be site-wide
    has_secret = bool(data.bmc_password_env or data.bmc_password_file)
    if data.bmc_address:
        for key in ("bmc_vendor", "bmc_username"):
            if not getattr(data, key):
                add(Problem(host, key, "missing while bmc_address is set", f"set {key}"))
        if not has_secret:
            add(
                Problem(
                    host,
                    "bmc_password_env",
                    "no BMC password reference",
                    "set bmc_password_env or bmc_password_file",
                )
            )
    elif has_secret:
        add(Problem(host, "bmc_address", "a BMC password reference is set but no bmc_address", "set bmc_address"))
    if data.bmc_password_env and data.bmc_password_file:
        add(Problem(host, "bmc_password_file", "both bmc_password_env and bmc_password_file are set", "keep one"))
    if data.bmc_password_env and not _ENV_NAME.match(data.bmc_password_env):
        add(
            Problem(
                host,
                "bmc_password_env",
                "is not an environment variable name (is it the password itself?)",
                "set the NAME of a variable, e.g. BMC_PASSWORD_NODE1",
            )
        )
    if data.bmc_vendor:
        add_all(_bios_problems(host, data, tee))
    if data.bmc_address and (bad := host_problem(data.bmc_address)):
        add(Problem(host, "bmc_address", *bad))
    if data.bmc_ca_bundle and not data.bmc_verify_tls:
        add(Problem(host, "bmc_ca_bundle", "set while bmc_verify_tls is false", "drop one of them"))
    if not data.bmc_verify_tls and not data.lab:
        add(
            Problem(
                host,
                "bmc_verify_tls",
                "TLS verification may only be turned off in the lab",
                "give the BMC's CA in bmc_ca_bundle instead",
            )
        )

    # KBS
    if data.kbs_url and (bad := url_problem(data.kbs_url, https_only=not data.lab, path=False)):
        message, secret = bad
        if secret:
            fix = "remove the user information: guests authenticate to the KBS by attestation"
        elif message == "must use https":
            fix = "plain http is only for the lab"
        elif message.startswith("has a path"):
            fix = "drop the path"
        else:
            fix = FIELD_HINTS["kbs_url"]
        add(Problem(host, "kbs_url", message, fix))

    if data.kbs_lab_permissive and not data.lab:
        add(Problem(host, "kbs_lab_permissive", "permissive KBS policy outside the lab", "remove it: production KBS releases secrets only after attestation"))

    # artifacts
    if data.artifact_source == "mirror" and not data.artifact_mirror_url:
        add(Problem(host, "artifact_mirror_url", "artifact_source is mirror but no URL", "set artifact_mirror_url"))
    if data.artifact_mirror_url and (bad := url_problem(data.artifact_mirror_url, https_only=False, path=True)):
        message, secret = bad
        fix = ("remove the credentials: give the mirror's URL without user information (artifacts are checked by "
               "sha256, the mirror needs no secret)") if secret else "use http(s)://host[:port]/path"
        add(Problem(host, "artifact_mirror_url", message, fix))
    if data.artifact_source == "local" and not data.artifact_dir:
        add(Problem(host, "artifact_dir", "artifact_source is local but no directory", "set artifact_dir"))

    return problems, tee


def _bios_problems(host: str, data: HostData, tee: str) -> list[Problem]:
    """The vendor must have a BIOS profile and the overrides must name its settings."""
    from ccfactory.firmware import FirmwareError, bios_profile_for, known_vendors

    unknown_home = [d for d in data.bios_profile_dirs if _expand(d) is None]
    if unknown_home:
        return [Problem(host, "bios_profile_dirs", f"'~' names no user on this controller: {', '.join(unknown_home)}", "fix the path")]
    dirs = [str(_expand(d)) for d in data.bios_profile_dirs]
    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        return [Problem(host, "bios_profile_dirs", f"not a directory: {', '.join(missing)}", "fix the path")]
    try:
        vendors = known_vendors(dirs)
    except FirmwareError as exc:
        return [Problem(host, "bios_profile_dirs", str(exc), "fix the profile file")]
    if data.bmc_vendor not in vendors:
        fix = f"use one of {', '.join(vendors)}, or add <vendor>.toml to bios_profile_dirs"
        return [Problem(host, "bmc_vendor", f"unknown vendor {data.bmc_vendor!r}", fix)]
    if tee not in ("snp", "tdx"):
        return []
    try:
        bios_profile_for(data.bmc_vendor, tee, extra_dirs=dirs, overrides=data.bios_overrides or None)
    except FirmwareError as exc:
        field = "bios_overrides" if data.bios_overrides else "bmc_vendor"
        return [Problem(host, field, str(exc).replace("\n", " "), "correct it against the profile (ccfactory/data/bios/<vendor>.toml)")]
    return []


def _file_problems(host: str, data: HostData) -> list[Problem]:
    """Controller-side files named by the inventory must exist."""
    problems = []
    # kbs_ca_cert is not checked here: the kbs stage creates it on its first run
    for key in _CONTROLLER_PATH_KEYS:
        value = getattr(data, key)
        if value and _expand(value) is None:
            problems.append(Problem(host, key, f"{value}: '~' names no user on this controller", "fix the path"))
    for i, directory in enumerate(data.template_overlay_dirs):
        path = _expand(directory)
        if path is None or not path.is_dir():
            why = "'~' names no user on this controller" if path is None else "is not a directory"
            problems.append(Problem(host, f"template_overlay_dirs[{i}]", f"{directory} {why}",
                                    "create it or remove it from template_overlay_dirs"))
        else:  # an overlay file that shadows no template would be ignored without a word
            from ccfactory.templating import TemplateOverlayError, check_overlays

            try:
                check_overlays([str(path)])
            except TemplateOverlayError as e:
                problems.append(Problem(host, f"template_overlay_dirs[{i}]", e.message, e.fix))
    # a password file that is not on this controller is reported by `ccfactory check` as not
    # readable here (validation may run where the secrets are not); one that is must be private
    if data.bmc_password_file and (path := _expand(data.bmc_password_file)) is not None and os.path.lexists(path):
        if bad := secret_file_problem(path):
            problems.append(Problem(host, "bmc_password_file", bad,
                                    f"chown {os.geteuid()} and chmod 600 a regular file (no symlink), or use bmc_password_env"))
    value = data.bmc_ca_bundle
    if value and _expand(value) is not None and not _expand(value).is_file():
        problems.append(Problem(host, "bmc_ca_bundle", f"file {value} does not exist on the controller", "fix the path"))
    if data.artifact_source == "local" and data.artifact_dir:
        directory = _expand(data.artifact_dir)
        if directory is None or not directory.is_dir():
            problems.append(Problem(host, "artifact_dir", f"directory {data.artifact_dir} does not exist", "fix the path"))
    return problems


# Controller-side paths whose '~user' must name a user of the controller
_CONTROLLER_PATH_KEYS = ("bmc_ca_bundle", "bmc_password_file", "kbs_ca_cert", "kbs_pki_dir", "runtime_kubeconfig",
                         "runtime_output_dir", "artifact_cache_dir", "bom_site_file")


def _expand(value: str) -> Path | None:
    """``value`` with ``~`` expanded, or None when ``~user`` names no user of this controller
    (``Path.expanduser`` raises RuntimeError, which must not crash validation)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return None


def _site_file_problems(host: str, groups: tuple[str, ...], data: HostData, reported: set[str]) -> list[Problem]:
    """Site files the deploy reads on the controller, checked before any connection: a KBS
    host's resources, policies and keys (``ccfactory.kbs.settings``), a lab host's BOM overlay."""
    problems: list[Problem] = []
    if "kbs" in groups and "kbs_url" not in reported:  # a bad kbs_url is reported already
        from types import SimpleNamespace

        from ccfactory.kbs.errors import KbsSettingsError
        from ccfactory.kbs.settings import kbs_settings

        view = SimpleNamespace(name=host, lab=data.lab, kbs=KbsConfig(url=data.kbs_url, ca_cert=data.kbs_ca_cert))
        try:
            kbs_settings(view, data.model_dump())
        except KbsSettingsError as exc:
            if not exc.problems:  # worded as one message: still a problem, never a silent pass
                problems.append(Problem(host, "kbs", str(exc), "fix the KBS host's kbs_* keys"))
            for found in exc.problems:
                if found.key not in reported | {"kbs_url", "kbs_lab_permissive"}:  # _cross_field_problems' own
                    problems.append(Problem(host, found.key, found.message, found.fix))
    if data.bom_site_file:
        from ccfactory.bom import BomError, bom_for

        path = _expand(data.bom_site_file)
        if path is None or not path.is_file():
            problems.append(Problem(host, "bom_site_file", f"file {data.bom_site_file} does not exist on the controller",
                                    "fix the path, or write it with `ccfactory bom pin NAME --site-bom FILE`"))  # fmt: skip
        else:
            try:
                bom_for(False, None, str(path))
            except BomError as exc:
                problems += [Problem(host, "bom_site_file", line, "fix the site BOM file") for line in str(exc).splitlines()]
    if data.lab and data.lab_dir and "lab" not in reported:  # an unproven lab has no overlay to check
        from ccfactory.bom import BomError, bom_for

        try:
            bom_for(True, data.lab_dir)
        except BomError as exc:
            problems += [
                Problem(host, "lab_dir", f"lab BOM overlay: {line}", "re-run `ccfactory lab up` (it rewrites the overlay)")
                for line in str(exc).splitlines()
            ]
    return problems


def load_node_config(
    name: str, groups: Iterable[str], data: Mapping[str, Any], *, check_files: bool = True
) -> NodeConfig:
    """Validate one host's data and return its ``NodeConfig``.

    Raises ``InventoryError`` listing every problem of this host.
    """
    groups = tuple(groups)
    connector = connector_keys()
    ours = {k: v for k, v in data.items() if not _is_pyinfra_key(k, connector)}
    problems: list[Problem] = []
    try:
        host_data = HostData(**ours)
    except ValidationError as exc:
        problems = _pydantic_problems(name, exc)
        # keep going on the keys that did validate, so one run reports everything
        bad = {p.field.split(".")[0] for p in problems}
        host_data = HostData(**{k: v for k, v in ours.items() if k not in bad and k in HostData.model_fields})
    cross, tee = _cross_field_problems(name, groups, host_data)
    problems += [p for p in cross if p.field not in {q.field.split(".")[0] for q in problems}]
    problems += _ssh_hostname_problems(name, data)
    if host_data.lab:  # the lab gate: relaxations above hold only for a node of a running lab
        problems += [p for p in _lab_problems(name, host_data, data) if p.field not in {q.field for q in problems}]
    if check_files:
        problems += _file_problems(name, host_data)
        reported = {p.field.split(".")[0] for p in problems}
        problems += [p for p in _site_file_problems(name, groups, host_data, reported) if p.field not in reported]
    if problems:
        raise InventoryError(problems)
    d = host_data
    bmc = None
    if d.bmc_vendor and d.bmc_address and d.bmc_username:
        bmc = BmcConfig(
            vendor=d.bmc_vendor,
            address=d.bmc_address,
            port=d.bmc_port,
            username=d.bmc_username,
            password=SecretRef(env=d.bmc_password_env, file=d.bmc_password_file),
            verify_tls=d.bmc_verify_tls,
            ca_bundle=d.bmc_ca_bundle,
            system_id=d.bmc_system_id,
            timeout=d.bmc_timeout,
            retries=d.bmc_retries,
            retry_backoff=d.bmc_retry_backoff,
            bios_overrides=d.bios_overrides,
            bios_profile_dirs=tuple(d.bios_profile_dirs),
        )
    return NodeConfig(
        name=name,
        groups=groups,
        roles=frozenset(role for group, role in ROLE_GROUPS.items() if group in groups),
        tee=tee,
        bmc=bmc,
        gpu=GpuConfig(count=d.gpu_count, model=d.gpu_model, cc_mode=d.gpu_cc_mode),
        kbs=KbsConfig(url=d.kbs_url, ca_cert=d.kbs_ca_cert),
        runtime=RuntimeConfig.from_host_data(d),
        reboot=RebootPolicy(
            batch_size=d.reboot_batch_size,
            timeout=d.reboot_timeout,
            graceful_timeout=d.reboot_graceful_timeout or min(DEFAULT_GRACEFUL_TIMEOUT, d.reboot_timeout // 2),
        ),
        artifacts=ArtifactSource(
            kind=d.artifact_source,
            mirror_url=d.artifact_mirror_url,
            directory=d.artifact_dir,
            cache_dir=d.artifact_cache_dir,
            site_bom=d.bom_site_file,
        ),
        lab=d.lab,
        lab_dir=d.lab_dir,
    )


def load_fleet(
    hosts: Iterable[tuple[str, Iterable[str], Mapping[str, Any]]], *, check_files: bool = True
) -> dict[str, NodeConfig]:
    """Validate every host; raise one ``InventoryError`` with all problems of all hosts."""
    configs: dict[str, NodeConfig] = {}
    problems: list[Problem] = []
    for name, groups, data in hosts:
        try:
            configs[name] = load_node_config(name, groups, data, check_files=check_files)
        except InventoryError as exc:
            problems.extend(exc.problems)
    problems += _fleet_problems(configs)
    if problems:
        raise InventoryError(problems)
    return configs


def _fleet_problems(configs: Mapping[str, NodeConfig]) -> list[Problem]:
    """Rules that span hosts: two nodes cannot share one BMC; one rolling batch size."""
    problems = []
    sizes = {cfg.reboot.batch_size for cfg in configs.values()}
    if len(sizes) > 1:
        # pyinfra's _parallel must be the same on every host of an operation
        first = next(iter(configs))
        for name, cfg in configs.items():
            if cfg.reboot.batch_size != configs[first].reboot.batch_size:
                problems.append(
                    Problem(
                        name,
                        "reboot_batch_size",
                        f"{cfg.reboot.batch_size} differs from {configs[first].reboot.batch_size} on {first}",
                        "set reboot_batch_size once, site-wide, in group_data/<site>.py",
                    )
                )
    seen: dict[tuple[str, int], str] = {}
    for name, cfg in configs.items():
        if cfg.bmc is None:
            continue
        # one BMC however it is written: BMC1.example.net, bmc1.example.net; [::1], ::1, 0:0::1
        key = (normalize_host(cfg.bmc.address), cfg.bmc.port)
        if key in seen:
            problems.append(
                Problem(name, "bmc_address", f"same BMC as host {seen[key]}", "give each host its own BMC")
            )
        seen.setdefault(key, name)
    # a worker's guests must attest to a KBS of this site (when the inventory has one)
    served = {url_identity(c.kbs.url): c.kbs.url for c in configs.values() if c.is_kbs and c.kbs.url}
    served.pop(None, None)
    if served:
        for name, cfg in configs.items():
            if cfg.is_worker and cfg.kbs.url and url_identity(cfg.kbs.url) not in served:
                problems.append(
                    Problem(name, "kbs_url", f"{cfg.kbs.url} is served by no KBS host of this inventory; "
                            f"they serve {', '.join(sorted(served.values()))}",
                            "set kbs_url to the URL of a KBS host (scheme, host and port must match)")
                )
    return problems


def node_config(host: Any) -> NodeConfig:
    """The ``NodeConfig`` of a pyinfra ``Host``; what every role calls once.

    Example (inside a ``@deploy``)::

        from pyinfra import host
        cfg = node_config(host)

    Kept on the ``Host`` for the run (while its name, groups and data stay the same): roles,
    the kbs stage and the verify stage ask for it ~20 times per host in a site run, and on a
    lab host each validation proves the lab from live state with subprocesses (~40 ms).
    """
    data = host.data.dict()
    key = (host.name, tuple(host.groups))
    slots = getattr(host, "__dict__", None)
    memo = slots.get("_ccfactory_node_config") if slots is not None else None
    if memo is not None and memo[0] == key and memo[1] == data:
        return memo[2]
    cfg = load_node_config(host.name, host.groups, data)
    if slots is not None:
        slots["_ccfactory_node_config"] = (key, data, cfg)
    return cfg
