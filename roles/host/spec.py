"""What the host stage wants per TEE, loaded from ``boot.toml`` beside this module (data, not code).

Example::

    >>> spec = tee_spec("tdx", gpus=True)
    >>> spec.cmdline_tokens
    ('intel_iommu=on', 'kvm_intel.tdx=1', 'nohibernate', 'modprobe.blacklist=nouveau')
    >>> spec.forbidden_on("iommu=pt")
    >>> spec.forbidden_on("kvm-intel.tdx=0").key
    'kvm_intel.tdx'
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


def norm(name: str) -> str:
    """The kernel's rule: ``-`` and ``_`` are the same in module and parameter names."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class CmdlineToken:
    token: str
    why: str
    source: str


@dataclass(frozen=True)
class ModuleOption:
    module: str
    param: str
    value: str
    why: str
    source: str


@dataclass(frozen=True)
class Forbidden:
    """A kernel parameter value that keeps the TEE off."""

    key: str  # "iommu", "kvm_amd.sev_snp" (module.param also applies to modprobe.d options)
    values: tuple[str, ...]
    why: str
    source: str

    def matches(self, key: str, value: str | None) -> bool:
        if norm(key) != norm(self.key) or value is None:
            return False
        parts = {p.strip().lower() for p in value.split(",")}
        return bool(parts & set(self.values))

    @property
    def module_param(self) -> tuple[str, str] | None:
        """``(module, param)`` when the key is a module parameter (``kvm_amd.sev_snp``)."""
        module, sep, param = self.key.partition(".")
        return (norm(module), norm(param)) if sep else None


@dataclass(frozen=True)
class TeeSpec:
    tee: str
    name: str  # "AMD SEV-SNP"
    short: str  # "SNP"
    cpu_vendor: str  # "AuthenticAMD"
    cmdline: tuple[CmdlineToken, ...]
    options: tuple[ModuleOption, ...]
    forbidden: tuple[Forbidden, ...]
    required_modules: tuple[str, ...]
    firmware_checks: frozenset[str]
    gpu_modules: tuple[str, ...]  # host GPU drivers kept off (empty for hosts without GPUs)

    @property
    def cmdline_tokens(self) -> tuple[str, ...]:
        return tuple(t.token for t in self.cmdline)

    def forbidden_on(self, token: str) -> Forbidden | None:
        """The rule a command-line token (``key=value``) breaks, or None."""
        key, sep, value = token.partition("=")
        return next((f for f in self.forbidden if f.matches(key, value if sep else None)), None)


@cache
def _raw() -> dict:
    return tomllib.loads(resources.files("ccfactory.roles.host").joinpath("boot.toml").read_text())


def known_tees() -> tuple[str, ...]:
    return tuple(_raw()["tee"])


def tee_spec(tee: str, *, gpus: bool) -> TeeSpec:
    """The host configuration for ``tee`` (``snp``/``tdx``); ``gpus``: the host has GPUs to keep
    away from host drivers. Raises KeyError for a TEE without an entry."""
    raw = _raw()
    t = raw["tee"][tee]
    gpu = raw["gpu"] if gpus else {}
    cmdline = [CmdlineToken(**c) for c in t.get("cmdline", [])] + [CmdlineToken(**c) for c in gpu.get("cmdline", [])]
    return TeeSpec(
        tee=tee,
        name=t["name"],
        short=t["short"],
        cpu_vendor=t["cpu_vendor"],
        cmdline=tuple(cmdline),
        options=tuple(ModuleOption(**o) for o in t.get("options", [])),
        forbidden=tuple(
            Forbidden(f["key"], tuple(v.lower() for v in f["values"]), f["why"], f["source"]) for f in t.get("forbidden", [])
        ),
        required_modules=tuple(norm(m) for m in t.get("required_modules", [])),
        firmware_checks=frozenset(t.get("firmware_checks", [])),
        gpu_modules=tuple(norm(m) for m in gpu.get("modules", [])),
    )
