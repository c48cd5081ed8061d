"""The typed configuration every stage reads: ``NodeConfig`` and its parts, frozen.

These are the *types*; ``ccfactory.config`` builds them from an inventory after validating it
(and re-exports them). Stage libraries, clients and operations that take a configuration
(``RedfishClient.from_config(BmcConfig)``, the BOM's ``ArtifactSource``) import it from here,
below the config layer (``tests/unit/test_layering.py``), so they never depend on validation.

Example::

    from ccfactory.model import BmcConfig
    def client_for(bmc: BmcConfig): ...
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ccfactory.validate import https_base_url, secret_file_problem

Tee = Literal["snp", "tdx", "none"]
GpuCcMode = Literal["on", "devtools", "off", "ppcie"]
ArtifactSourceKind = Literal["upstream", "mirror", "local"]

DEFAULT_REBOOT_TIMEOUT = 1800  # bare-metal GPU servers take 10-30 minutes to POST
DEFAULT_GRACEFUL_TIMEOUT = 300  # an OS that honours ACPI has stopped sshd well before this
DEFAULT_ARTIFACT_CACHE = "~/.cache/ccfactory/artifacts"


def opt(default: Any, description: str, section: str, **kw: Any) -> Any:
    """A host-data key: its default, its meaning (the option tables print it) and its section."""
    return Field(default, description=description, json_schema_extra={"section": section}, **kw)


class StrictModel(BaseModel):
    """Unknown fields refused, instances frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionsModel(StrictModel):
    """Host-data keys (a stage's options, and ``config.HostData`` assembled from them): strict,
    frozen, and no inf or nan (they are not durations or sizes; pydantic accepts them for floats
    by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SecretRef(StrictModel):
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
        if not os.path.lexists(path):
            return f"file {path} does not exist"
        return secret_file_problem(path)

    def reveal(self) -> str:
        """The secret. Callers must never print, log or store what this returns."""
        if self.env:
            value = os.environ.get(self.env, "")
        else:
            path = Path(self.file or "").expanduser()
            if bad := secret_file_problem(path):
                raise ValueError(f"secret from {self.describe()}: {bad}")
            # O_NOFOLLOW: a symlink swapped in after the check is not followed
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise ValueError(f"secret from {self.describe()} is not a regular file")
                value = handle.read().decode().strip()
        if not value:
            raise ValueError(f"secret from {self.describe()} is empty")
        return value


class BmcConfig(StrictModel):
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
        """The Redfish base URL; an IPv6 address bracketed once (``https_base_url``)."""
        return https_base_url(self.address, self.port)


class GpuConfig(StrictModel):
    count: int = 0
    model: str | None = None
    cc_mode: GpuCcMode = "on"


class KbsConfig(StrictModel):
    url: str | None = None
    ca_cert: str | None = None


class RuntimeConfig(StrictModel):
    """The runtime stage's options: ``HostData``'s ``runtime_*`` keys (plus
    ``template_overlay_dirs`` and ``coco_resource_uris``) without the prefix. No defaults
    here: ``HostData`` holds them, once (``RuntimeConfig.from_host_data``)."""

    shims: tuple[str, ...] | None
    guest_pull: bool
    drain: bool
    smoke_image: str | None
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
    snp_debug_acknowledged: bool
    tdx_qgs_port: int
    coco_resource_uris: tuple[str, ...]
    health_timeout: float

    @classmethod
    def from_host_data(cls, d) -> RuntimeConfig:  # d: ccfactory.config.HostData
        unprefixed = {"template_overlay_dirs", "coco_resource_uris"}
        values = {f: getattr(d, f if f in unprefixed else f"runtime_{f}") for f in cls.model_fields}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class RebootPolicy(StrictModel):
    batch_size: int = 1
    timeout: int = DEFAULT_REBOOT_TIMEOUT
    graceful_timeout: int = DEFAULT_GRACEFUL_TIMEOUT


class ArtifactSource(StrictModel):
    kind: ArtifactSourceKind = "upstream"
    mirror_url: str | None = None
    directory: str | None = None
    cache_dir: str = DEFAULT_ARTIFACT_CACHE
    site_bom: str | None = None


class NodeConfig(StrictModel):
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
