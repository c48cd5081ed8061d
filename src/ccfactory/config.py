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
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ccfactory.gpus import gpu_model_by_name, gpu_models

Tee = Literal["snp", "tdx", "none"]
GpuCcMode = Literal["on", "devtools", "off", "ppcie"]
ArtifactSourceKind = Literal["upstream", "mirror", "local"]

# Inventory groups that carry meaning for ccfactory.
ROLE_GROUPS = {"workers": "worker", "kbs": "kbs"}
TEE_GROUPS = ("snp", "tdx")
GPU_GROUP = "gpu"

# BMC vendors with a packaged BIOS profile (ccfactory/data/bios/); an OEM adds one with
# bios_profile_dirs. Validation asks the profiles themselves; this is for help texts.
KNOWN_BMC_VENDORS = ("dell", "hpe", "lenovo", "supermicro", "generic")

DEFAULT_REBOOT_TIMEOUT = 1800  # bare-metal GPU servers take 10-30 minutes to POST
DEFAULT_GRACEFUL_TIMEOUT = 300  # an OS that honours ACPI has stopped sshd well before this
MIN_GRACEFUL_TIMEOUT = 60  # outside the lab: below this a normal shutdown could be cut short
DEFAULT_ARTIFACT_CACHE = "~/.cache/ccfactory/artifacts"

# Keys that hold secrets must never carry the secret itself: only a reference.
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|private_key|api_key)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _opt(default: Any, description: str, section: str, **kw: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"section": section}, **kw)


class HostData(_Strict):
    """Every ccfactory host-data key, flat, as written in inventories and group_data.

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
    # --- BMC (firmware stage)
    bmc_vendor: str | None = _opt(
        None, f"BMC/BIOS vendor profile: one of {', '.join(KNOWN_BMC_VENDORS)}.", "bmc"
    )
    bmc_address: str | None = _opt(None, "BMC host name or IP address (Redfish endpoint).", "bmc")
    bmc_port: int = _opt(443, "BMC Redfish HTTPS port.", "bmc", ge=1, le=65535)
    bmc_username: str | None = _opt(None, "BMC user with BIOS and power privileges.", "bmc")
    bmc_password_env: str | None = _opt(
        None,
        "Name of the environment variable on the controller that holds the BMC password. "
        "Never put the password itself in the inventory.",
        "bmc",
    )
    bmc_password_file: str | None = _opt(
        None,
        "Path, on the controller, of a file (mode 0600) holding the BMC password.",
        "bmc",
    )
    bmc_verify_tls: bool = _opt(True, "Verify the BMC's TLS certificate.", "bmc")
    bmc_ca_bundle: str | None = _opt(
        None, "CA bundle (PEM, on the controller) for the BMC's certificate; system CAs if unset.", "bmc"
    )
    bmc_system_id: str | None = _opt(
        None, "Redfish ComputerSystem id; discovered when the BMC manages exactly one system.", "bmc"
    )
    bmc_timeout: float = _opt(30.0, "Seconds to wait for one Redfish request.", "bmc", gt=0, le=600)
    bmc_retries: int = _opt(
        4, "Attempts per Redfish request on 5xx and connection errors (exponential backoff).", "bmc", ge=1, le=20
    )
    bmc_retry_backoff: float = _opt(1.0, "First backoff in seconds between Redfish retries.", "bmc", ge=0, le=120)
    bios_overrides: dict[str, str | int] = _opt(
        {},
        "Per-setting overrides of the vendor BIOS profile, by logical name, e.g. "
        "`{\"min_sev_asid\": 100, \"tsme\": \"Disabled\"}`.",
        "bmc",
    )
    bios_profile_dirs: list[str] = _opt(
        [],
        "Controller-side directories with extra or replacement BIOS profiles (`<vendor>.toml`); "
        "searched before the packaged ones. An OEM adds a vendor here.",
        "bmc",
    )
    # --- GPUs
    gpu_count: int = _opt(0, "Number of NVIDIA GPUs the node must have.", "gpu", ge=0, le=64)
    gpu_model: str | None = _opt(
        None, f"Expected GPU model: one of {', '.join(gpu_models())}.", "gpu"
    )
    gpu_cc_mode: GpuCcMode = _opt(
        "on",
        "GPU confidential-computing mode for all GPUs of the node: `on`, `devtools` "
        "(CC with debugging allowed, never for production), `off`, or `ppcie` "
        "(protected PCIe, HGX Hopper multi-GPU only).",
        "gpu",
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
    # --- KBS host (kbs stage); meanings in ccfactory.kbs.settings.KEYS
    kbs_resources: dict[str, str] = _opt(
        {}, "Resources to upload: KBS path `<repo>/<type>/<tag>` -> controller-side file.", "kbs"
    )
    kbs_gpu_resources: list[str] | None = _opt(
        None,
        "Resource paths that also need an affirming GPU attestation; unset: all, when the inventory has GPU workers.",
        "kbs",
    )
    kbs_policy_file: str | None = _opt(
        None, "Controller-side Rego file replacing ccfactory's strict resource policy.", "kbs"
    )
    kbs_attestation_policy_file: str | None = _opt(
        None, "Controller-side Rego file replacing Trustee's default attestation policy.", "kbs"
    )
    kbs_reference_values: dict[str, list[str | int | bool]] = _opt(
        {}, "Reference values for RVPS by name, e.g. `{\"snp_launch_measurement\": [\"...\"]}`.", "kbs"
    )
    kbs_reference_values_file: str | None = _opt(
        None, "Controller-side TOML/JSON file of reference values (name = [values]); inventory wins per name.", "kbs"
    )
    kbs_lab_permissive: bool = _opt(
        False, "LAB ONLY: release resources to any attested client, sample evidence included. Refused outside the lab.",
        "kbs",
    )
    kbs_pki_dir: str | None = _opt(
        None,
        "Controller-side directory of the KBS keys and certificates "
        "(default `~/.ccfactory/sites/<kbs host>/pki`, or under `$CCFACTORY_HOME`).",
        "kbs",
    )
    kbs_ca_key_file: str | None = _opt(
        None, "Private key of `kbs_ca_cert`, to issue the KBS HTTPS certificate with your own CA.", "kbs"
    )
    kbs_tls_cert_file: str | None = _opt(
        None, "Your own KBS HTTPS certificate (issued by `kbs_ca_cert`, covering kbs_url).", "kbs"
    )
    kbs_tls_key_file: str | None = _opt(None, "Its private key (mode 0600).", "kbs")
    kbs_admin_key_file: str | None = _opt(
        None, "Your own Ed25519 admin private key (PKCS#8 PEM, 0600); never leaves the controller.", "kbs"
    )
    kbs_nvidia_verifier: Literal["Remote", "Local"] = _opt(
        "Remote", "NVIDIA GPU verifier of the attestation service: `Remote` (NRAS) or `Local`.", "kbs"
    )
    # --- runtime (containerd, Kata, CoCo guest components)
    runtime_shims: list[str] | None = _opt(
        None,
        "Kata shims to register; default by TEE and GPUs (qemu-snp/qemu-tdx, plus qemu-nvidia-gpu-snp/-tdx with GPUs).",
        "runtime",
    )
    runtime_guest_pull: bool = _opt(
        False, "Pull images inside the guest through the nydus snapshotter (BOM-pinned) for the Kata TEE handlers.",
        "runtime",
    )
    runtime_drain: bool = _opt(
        False, "Allow replacing Kata while sandboxes run on it (drain the node first).", "runtime"
    )
    runtime_kubeconfig: str | None = _opt(
        None, "Controller-side kubeconfig; when set, RuntimeClasses and node labels are applied with kubectl.", "runtime"
    )
    runtime_output_dir: str = _opt(
        "~/.local/share/ccfactory/runtime",
        "Controller-side directory for Kubernetes manifests and the per-host initdata report.",
        "runtime",
    )
    template_overlay_dirs: list[str] = _opt(
        [], "Controller-side directories whose templates shadow ccfactory's by relative path.", "runtime"
    )
    runtime_kata_memory: int = _opt(2048, "Default guest memory (MiB) for CPU Kata shims.", "runtime", ge=256)
    runtime_kata_vcpus: int = _opt(1, "Default guest vCPUs for CPU Kata shims.", "runtime", ge=1)
    runtime_kata_gpu_memory: int = _opt(16384, "Default guest memory (MiB) for GPU Kata shims.", "runtime", ge=1024)
    runtime_kata_gpu_vcpus: int = _opt(4, "Default guest vCPUs for GPU Kata shims.", "runtime", ge=1)
    runtime_kata_timeout: int = _opt(300, "Agent dial and create-container timeout (s), CPU guests.", "runtime", ge=30)
    runtime_kata_gpu_timeout: int = _opt(
        1200, "Agent dial and create-container timeout (s), GPU guests.", "runtime", ge=60
    )
    runtime_snp_guest_policy: int = _opt(0x30000, "SEV-SNP guest policy for the SNP shims.", "runtime", ge=0)
    runtime_tdx_qgs_port: int = _opt(4050, "TDX quote generation service vsock port.", "runtime", ge=0, le=65535)
    coco_resource_uris: list[str] = _opt(
        [], "KBS resources (`kbs:///repo/type/tag`) the guest's confidential data hub fetches at start.", "runtime"
    )
    runtime_health_timeout: float = _opt(
        60.0, "Seconds to wait for containerd to be healthy after a config change before rolling back.", "runtime",
        gt=0,
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
    # --- lab
    lab: bool = _opt(
        False,
        "Set only by `ccfactory lab up` in the inventory it writes: allows lab stand-ins. "
        "Refused unless `lab_dir` holds a running lab that has this host.",
        "lab",
    )
    lab_dir: str | None = _opt(None, "Directory of the lab this host belongs to.", "lab")

    @field_validator("bios_overrides", mode="before")
    @classmethod
    def _no_bool_bios_values(cls, value: Any) -> Any:
        # pydantic's lax mode would turn True into 1 (an ASID limit of 1) without a word
        if isinstance(value, Mapping):
            bad = sorted(str(k) for k, v in value.items() if isinstance(v, bool))
            if bad:
                raise ValueError(f"{', '.join(bad)}: a bool is not a BIOS value; give the BIOS value, e.g. 'Enabled' or 100")
        return value


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
        text = f"{self.host}: {self.field}: {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class InventoryError(Exception):
    """Raised with every problem of every host, before any host is touched."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        lines = [f"{len(self.problems)} problem(s) in the inventory, no host was touched:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------- typed view


class SecretRef(_Strict):
    """Where the controller finds a secret; never the secret itself."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def problem(self) -> str | None:
        """Why the secret cannot be read right now, or None."""
        if self.env:
            return None if os.environ.get(self.env) else f"environment variable {self.env} is not set or empty"
        path = Path(self.file or "").expanduser()
        if not path.is_file():
            return f"file {path} does not exist"
        if not os.access(path, os.R_OK):
            return f"file {path} is not readable"
        return None

    def reveal(self) -> str:
        """The secret. Callers must never print, log or store what this returns."""
        if self.env:
            value = os.environ.get(self.env, "")
        else:
            value = Path(self.file or "").expanduser().read_text().strip()
        if not value:
            raise ValueError(f"secret from {self.describe()} is empty")
        return value


class BmcConfig(_Strict):
    vendor: str
    address: str
    port: int = 443
    username: str
    password: SecretRef
    verify_tls: bool = True
    ca_bundle: str | None = None
    system_id: str | None = None
    timeout: float = 30.0
    retries: int = 4
    retry_backoff: float = 1.0
    bios_overrides: dict[str, str | int] = {}
    bios_profile_dirs: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"


class GpuConfig(_Strict):
    count: int = 0
    model: str | None = None
    cc_mode: GpuCcMode = "on"


class KbsConfig(_Strict):
    url: str | None = None
    ca_cert: str | None = None


class RuntimeConfig(_Strict):
    """The runtime stage's options: ``HostData``'s ``runtime_*`` keys (plus
    ``template_overlay_dirs`` and ``coco_resource_uris``) without the prefix. No defaults
    here: ``HostData`` holds them, once (``RuntimeConfig.from_host_data``)."""

    shims: tuple[str, ...] | None
    guest_pull: bool
    drain: bool
    kubeconfig: str | None
    output_dir: str
    template_overlay_dirs: tuple[str, ...]
    kata_memory: int
    kata_vcpus: int
    kata_gpu_memory: int
    kata_gpu_vcpus: int
    kata_timeout: int
    kata_gpu_timeout: int
    snp_guest_policy: int
    tdx_qgs_port: int
    coco_resource_uris: tuple[str, ...]
    health_timeout: float

    @classmethod
    def from_host_data(cls, d: HostData) -> RuntimeConfig:
        unprefixed = {"template_overlay_dirs", "coco_resource_uris"}
        values = {f: getattr(d, f if f in unprefixed else f"runtime_{f}") for f in cls.model_fields}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class RebootPolicy(_Strict):
    batch_size: int = 1
    timeout: int = DEFAULT_REBOOT_TIMEOUT
    graceful_timeout: int = DEFAULT_GRACEFUL_TIMEOUT


class ArtifactSource(_Strict):
    kind: ArtifactSourceKind = "upstream"
    mirror_url: str | None = None
    directory: str | None = None
    cache_dir: str = DEFAULT_ARTIFACT_CACHE


class NodeConfig(_Strict):
    """The validated configuration of one host, as every role reads it."""

    name: str
    groups: tuple[str, ...]
    roles: frozenset[str]
    tee: Tee
    bmc: BmcConfig | None
    gpu: GpuConfig
    kbs: KbsConfig
    runtime: RuntimeConfig
    reboot: RebootPolicy
    artifacts: ArtifactSource
    lab: bool
    lab_dir: str | None

    @property
    def is_worker(self) -> bool:
        return "worker" in self.roles

    @property
    def is_kbs(self) -> bool:
        return "kbs" in self.roles

    @property
    def has_gpus(self) -> bool:
        return self.gpu.count > 0


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
        message = err["msg"]
        if not isinstance(got, (dict, list)):
            message = f"{message} (got {got!r})"
        problems.append(Problem(host, field, message, FIELD_HINTS.get(field, "")))
    return problems


def _check_url(value: str, *, https_only: bool) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    if https_only and parts.scheme != "https":
        return "must use https"
    return None


def _lab_problem(host: str, data: HostData) -> Problem | None:
    """A host may use lab stand-ins only if a real lab on this machine has it."""
    if not data.lab_dir:
        return Problem(host, "lab", "lab is true but lab_dir is not set", "only `ccfactory lab up` sets lab")
    state = Path(data.lab_dir) / "lab.json"
    try:
        nodes = json.loads(state.read_text()).get("nodes", {})
    except (OSError, ValueError):
        return Problem(
            host, "lab", f"lab is true but {state} holds no running lab", "run `ccfactory lab up`, or remove lab"
        )
    if host not in nodes and not any(n.get("address") == host for n in nodes.values()):
        return Problem(host, "lab", f"lab is true but the lab in {data.lab_dir} has no node {host}", "remove lab")
    return None


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
    if "workers" in groups and tee == "none":
        add(Problem(host, "tee", "a worker needs a TEE", "put the host in the snp or tdx group, or set tee"))

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
    if data.bmc_address:
        bad = _check_url(f"https://{data.bmc_address}", https_only=True)
        if bad or "/" in data.bmc_address:
            add(Problem(host, "bmc_address", "not a host name or IP address", "give the BMC's name or IP, no URL"))
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
    if data.kbs_url:
        bad = _check_url(data.kbs_url, https_only=not data.lab)
        if bad:
            fix = "plain http is only for the lab" if bad == "must use https" else FIELD_HINTS["kbs_url"]
            add(Problem(host, "kbs_url", bad, fix))

    if data.kbs_lab_permissive and not data.lab:
        add(Problem(host, "kbs_lab_permissive", "permissive KBS policy outside the lab", "remove it: production KBS releases secrets only after attestation"))

    # artifacts
    if data.artifact_source == "mirror":
        if not data.artifact_mirror_url:
            add(Problem(host, "artifact_mirror_url", "artifact_source is mirror but no URL", "set artifact_mirror_url"))
        elif bad := _check_url(data.artifact_mirror_url, https_only=False):
            add(Problem(host, "artifact_mirror_url", bad, "use http(s)://host/path"))
    if data.artifact_source == "local" and not data.artifact_dir:
        add(Problem(host, "artifact_dir", "artifact_source is local but no directory", "set artifact_dir"))

    if data.lab and (lab_problem := _lab_problem(host, data)):
        add(lab_problem)
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
    for key in ("bmc_ca_bundle", "bmc_password_file"):
        value = getattr(data, key)
        if value and _expand(value) is None:
            problems.append(Problem(host, key, f"{value}: '~' names no user on this controller", "fix the path"))
    value = data.bmc_ca_bundle
    if value and _expand(value) is not None and not _expand(value).is_file():
        problems.append(Problem(host, "bmc_ca_bundle", f"file {value} does not exist on the controller", "fix the path"))
    if data.artifact_source == "local" and data.artifact_dir:
        directory = _expand(data.artifact_dir)
        if directory is None or not directory.is_dir():
            problems.append(Problem(host, "artifact_dir", f"directory {data.artifact_dir} does not exist", "fix the path"))
    return problems


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
            for line in str(exc).splitlines()[1:]:
                text = line.strip().removeprefix("- ").removeprefix(f"{host}: ")
                field, _, rest = text.partition(": ")
                message, _, fix = rest.partition("; fix: ")
                if field not in reported | {"kbs_url", "kbs_lab_permissive"}:  # _cross_field_problems' own
                    problems.append(Problem(host, field, message, fix))
    if data.lab and data.lab_dir:
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
        key = (cfg.bmc.address, cfg.bmc.port)
        if key in seen:
            problems.append(
                Problem(name, "bmc_address", f"same BMC as host {seen[key]}", "give each host its own BMC")
            )
        seen.setdefault(key, name)
    return problems


def node_config(host: Any) -> NodeConfig:
    """The ``NodeConfig`` of a pyinfra ``Host``; what every role calls once.

    Example (inside a ``@deploy``)::

        from pyinfra import host
        cfg = node_config(host)
    """
    return load_node_config(host.name, host.groups, host.data.dict())
