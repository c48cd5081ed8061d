"""What one lab BMC is: ``BmcSpec``, and where its files live under the lab directory.

Layout (``<lab>`` is the lab directory)::

    <lab>/pki/ca.pem, ca.key        lab CA (key 0600)
    <lab>/bmc/<node>/spec.json              the BmcSpec the emulator serves
    <lab>/bmc/<node>/state.json             applied/pending BIOS, jobs, power (survives restarts)
    <lab>/bmc/<node>/faults.json            fault-injection switches (see faults.py)
    <lab>/bmc/<node>/credentials.json       username/password (0600, random, never logged)
    <lab>/bmc/<node>/htpasswd               bcrypt hash of the password (0600)
    <lab>/bmc/<node>/tls/cert.pem, key.pem  server certificate with the IP SAN (key 0600)
    <lab>/bmc/run/<group>.pid|.json|.log    emulator processes (one per group of BMCs)

Example::

    >>> spec = BmcSpec.for_node("node1", 1, vendor="dell", tee="snp")
    >>> spec.address, spec.port, spec.url
    ('10.199.1.11', 443, 'https://10.199.1.11')
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ccfactory.lab.bmc.personality import available_vendors

# The colleague's network code adds these addresses to the host bridge ccfbmc0.
BMC_NET_PREFIX = "10.199.1."
BMC_HOST_OFFSET = 10
BMC_PORT = 443
NODE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class BmcSpec(BaseModel):
    """One BMC: which node it manages, which vendor it pretends to be, where it listens.

    ``power``: ``"node"`` power-cycles the real lab node through ``ccfactory.lab.power``;
    ``"simulated"`` (BMC-only mode, benchmarks) touches no node and takes
    ``reset_seconds`` to come back from a reset.

    Example: ``BmcSpec(node="node1", index=1, vendor="hpe", tee="tdx", address="127.0.0.2", port=8443)``
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str = Field(pattern=NODE_NAME_PATTERN)
    index: int = Field(ge=0, le=9999)  # 10.199.1.(10+index) only up to 244; larger fleets give an address
    vendor: str
    tee: Literal["snp", "tdx", "none"]
    address: str
    port: int = Field(default=BMC_PORT, ge=1, le=65535)
    power: Literal["node", "simulated"] = "node"
    reset_seconds: float = Field(default=2.0, ge=0, le=3600)

    @field_validator("vendor")
    @classmethod
    def _known_vendor(cls, v: str) -> str:
        known = available_vendors()
        if v not in known:
            raise ValueError(f"unknown BMC vendor {v!r}; known: {', '.join(known)}")
        return v

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))  # IPv4, or IPv6 for a lab up with --ipv6
        except ValueError:
            raise ValueError(f"BMC address must be an IPv4 or IPv6 address, got {v!r}") from None

    @classmethod
    def for_node(cls, node: str, index: int, *, vendor: str, tee: str, **extra: object) -> "BmcSpec":
        """The lab's standard spec: 10.199.1.(10+index), port 443.

        Example: ``BmcSpec.for_node("node3", 3, vendor="lenovo", tee="tdx").address`` -> ``'10.199.1.13'``
        """
        address = extra.pop("address", f"{BMC_NET_PREFIX}{BMC_HOST_OFFSET + index}")
        return cls(node=node, index=index, vendor=vendor, tee=tee, address=address, **extra)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """Base URL of the Redfish service, e.g. ``https://10.199.1.11`` (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}" if self.port == 443 else f"https://{host}:{self.port}"


def bmc_root(lab_dir: Path) -> Path:
    return Path(lab_dir) / "bmc"


def node_dir(lab_dir: Path, node: str) -> Path:
    """``<lab>/bmc/<node>``; the node name is checked so it can never escape the lab dir."""
    if not re.match(NODE_NAME_PATTERN, node):
        raise ValueError(f"invalid node name {node!r}")
    return bmc_root(lab_dir) / node


def run_dir(lab_dir: Path) -> Path:
    return bmc_root(lab_dir) / "run"


def write_spec(lab_dir: Path, spec: BmcSpec) -> Path:
    """Write ``spec.json`` atomically (the emulator process reads it at start)."""
    path = node_dir(lab_dir, spec.node) / "spec.json"
    write_json_atomic(path, spec.model_dump())
    return path


def read_spec(lab_dir: Path, node: str) -> BmcSpec:
    path = node_dir(lab_dir, node) / "spec.json"
    return BmcSpec.model_validate_json(path.read_text())


def known_nodes(lab_dir: Path) -> list[str]:
    """Nodes that have a BMC spec under ``<lab>/bmc``."""
    root = bmc_root(lab_dir)
    return sorted(p.parent.name for p in root.glob("*/spec.json")) if root.is_dir() else []


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime ns, size) of a file, None if it does not exist: a cheap "has it changed" test."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def write_json_atomic(path: Path, data: object, *, mode: int = 0o644) -> None:
    """Write JSON via a temp file + rename so readers in other processes never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)
