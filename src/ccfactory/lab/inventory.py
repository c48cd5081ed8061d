"""The files ``lab up`` writes for the operator: a pyinfra inventory and an SSH config.

Inventory (default ``inventories/lab.py`` of the repository): hosts are the node IP
addresses; groups ``workers`` (nodes with a TEE), ``kbs`` (the first plain node),
``snp``, ``tdx``, ``gpu``. Every host carries exactly these keys::

    ssh_user, ssh_key, ssh_known_hosts_file ("/dev/null"), ssh_strict_host_key_checking ("no"),
    lab (True), lab_dir, tee ("snp"|"tdx"|"none"), gpu_count, gpu_model ("H100"|None),
    gpu_cc_mode ("on"; "off" without GPUs), bmc_vendor, bmc_address, bmc_port (443),
    bmc_username, bmc_password_file (0600 file in the lab dir), bmc_ca_bundle, bmc_verify_tls (True)
"""

from __future__ import annotations

import os
from pathlib import Path
from pprint import pformat

HOST_KEYS = (
    "ssh_user", "ssh_key", "ssh_known_hosts_file", "ssh_strict_host_key_checking",
    "lab", "lab_dir", "tee", "gpu_count", "gpu_model", "gpu_cc_mode",
    "bmc_vendor", "bmc_address", "bmc_port", "bmc_username", "bmc_password_file", "bmc_ca_bundle", "bmc_verify_tls",
)  # fmt: skip


def render_inventory(hosts: list[tuple[str, dict, list[str]]], lab_dir: Path) -> str:
    """Python source of the inventory (pure): ``hosts`` = [(address, data, groups)].

    >>> src = render_inventory([("10.199.0.11", {"tee": "snp"}, ["workers", "snp"])], Path("/l"))
    >>> ns = {}; exec(src, ns); ns["snp"]
    [('10.199.0.11', {'tee': 'snp'})]
    """
    lines = [
        f'"""Lab inventory written by `ccfactory lab up` for the lab in {lab_dir}. Do not edit:',
        "`lab up` rewrites it. Hosts are node addresses; `ccfactory lab status` shows node names.",
        '"""',
        "",
        "# Host data, shared by every group the host is in (pyinfra merges a host's tuples).",
        f"_hosts = {pformat({a: d for a, d, _ in hosts}, sort_dicts=True, width=110)}",
        "",
    ]
    for group in ("workers", "kbs", "snp", "tdx", "gpu"):
        members = [a for a, _, groups in hosts if group in groups]
        lines.append(f"{group} = [{', '.join(f'({a!r}, _hosts[{a!r}])' for a in members)}]")
    return "\n".join(lines) + "\n"


def render_ssh_config(addresses: list[tuple[str, str]], key: Path) -> str:
    """OpenSSH config for the nodes (``ssh -F FILE node1`` or ``ssh -F FILE 10.199.0.11``)."""
    out = ["# Written by `ccfactory lab up`.", ""]
    for name, addr in addresses:
        out += [f"Host {name} {addr}", f"  HostName {addr}"]
    out += [
        "",
        "Host 10.199.0.* fdcc:f199::*",
        "  User root",
        f"  IdentityFile {key}",
        "  IdentitiesOnly yes",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  LogLevel ERROR",
        "  BatchMode yes",
        "  ConnectTimeout 5",
        "",
        "Host node*",
        "  User root",
        f"  IdentityFile {key}",
        "  IdentitiesOnly yes",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  LogLevel ERROR",
        "  BatchMode yes",
        "  ConnectTimeout 5",
    ]
    return "\n".join(out) + "\n"


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write ``text`` only if it differs (keeps mtimes stable for idempotent `up`)."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def default_inventory_path() -> Path:
    """``inventories/lab.py`` of the repository this code runs from, else of the current directory."""
    here = Path(__file__).resolve()
    for root in here.parents:
        if (root / "pyproject.toml").is_file() and (root / "src" / "ccfactory").is_dir():
            return root / "inventories" / "lab.py"
    return Path.cwd() / "inventories" / "lab.py"
