"""The lab gate: proof, from live state on this controller, that a host is a node of a running lab.

A host's data may say ``lab = True`` (``ccfactory lab up`` writes it into ``inventories/lab.py``);
that unlocks lab relaxations (BMC TLS off, plain-HTTP KBS, permissive KBS policy, short graceful
timeouts, the stand-in BOM overlay). Data is a claim anyone can write, and so is ``lab.json``.
``prove_lab(lab_dir)`` therefore trusts only what a running lab has and a file cannot fake:

* the lab's **supervisors**: for every node, the process recorded in ``nodes/<n>/supervisor.pid``
  is alive with the recorded start time (``ccfactory.lab.proc.read_pidfile``), its command line is
  ``python -m ccfactory.lab.supervisor --lab-dir <lab_dir> --node <n>`` and it runs as the user
  that owns the lab's state files (root: the lab needs it for namespaces and nspawn);
* the lab's **bridges**: ``ccflab0`` is a live bridge carrying the lab gateway, the node's veth
  ``ccfv-<n>`` is enslaved to it, the node's network namespace exists, and the node's BMC address
  is on ``ccfbmc0``. A node's addresses come from the lab's fixed address plan
  (``ccfactory.lab.network``), never from a file;
* the lab's **CA**: ``pki/ca.pem`` (made by the BMC emulator) has the SHA-256 fingerprint that
  ``lab up`` recorded in ``lab.json``, and both files belong to the lab's owner and are writable
  by nobody else; their owner is root, as the lab (and every supervisor) runs as root.

``lab_host_problems()`` then binds the host to a live node: the address pyinfra will connect to
(``ssh_hostname`` or the host's name) must be the node's address, ``bmc_address`` its BMC,
``bmc_ca_bundle`` the lab CA, and the ``kbs_url`` host a node of the same lab; so lab relaxations
never reach a machine outside the lab.

The probe is injectable (``set_probe``) so unit tests can stand a lab in without root;
``tests/lab/test_lab_core.py`` proves the real one against a running lab.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SUPERVISOR_MODULE = "ccfactory.lab.supervisor"
LAB_OWNER_UID = 0  # the lab runs as root (namespaces, overlay mounts, nspawn: ccfactory.lab.hostdeps)
CA_FINGERPRINT_KEY = "ca_sha256"  # lab.json: SHA-256 of the lab CA certificate (DER), hex


class NoLiveLab(Exception):
    """No running lab in a directory: ``message`` (what is missing) and ``fix``."""

    def __init__(self, message: str, fix: str = "run `ccfactory lab up` on this controller, or remove lab") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix


@dataclass(frozen=True)
class LiveNode:
    """One node of a running lab, as proven from live state."""

    name: str
    addresses: tuple[str, ...]  # SSH addresses (IPv4; IPv6 when the lab carries it)
    bmc_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveLab:
    """A running lab: its directory, CA fingerprint, live nodes and the nodes found not running."""

    lab_dir: str
    ca_fingerprint: str
    nodes: tuple[LiveNode, ...]
    dead: Mapping[str, str] = field(default_factory=dict)  # node -> why it does not count as running

    def node_for(self, host: str) -> LiveNode | None:
        """The node named ``host`` or having ``host`` as an address (any IPv6 spelling)."""
        key = _same(host)
        return next((n for n in self.nodes if n.name == host or key in {_same(a) for a in n.addresses}), None)


Probe = Callable[[Path], LiveLab]


def _same(address: str) -> str:
    """A comparison key: an IP address in its one canonical form, else the name in lower case."""
    text = address.strip().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower().rstrip(".")


def ca_fingerprint(pem: bytes) -> str:
    """SHA-256 (hex) of the DER encoding of the first certificate in ``pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def _owned_file(path: Path, what: str) -> os.stat_result:
    try:
        st = os.lstat(path)
    except OSError:
        raise NoLiveLab(f"{path} is absent ({what})") from None
    if not stat.S_ISREG(st.st_mode):
        raise NoLiveLab(f"{path} is not a regular file ({what})")
    if st.st_mode & 0o022:
        raise NoLiveLab(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): not the lab's")
    return st


def _process_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])  # real uid
    except (OSError, ValueError, IndexError):
        pass
    return None


def _supervisor_problem(lab: Path, node: str, owner: int) -> str | None:
    """Why ``node`` has no live supervisor of this lab (None: it has one)."""
    from ccfactory.lab import proc
    from ccfactory.lab.layout import NodePaths

    paths = NodePaths(lab, node)
    pid = proc.read_pidfile(paths.supervisor_pid)
    if not pid:
        return f"no live supervisor ({paths.supervisor_pid})"
    argv = proc.cmdline(pid)
    expected = ["-m", SUPERVISOR_MODULE, "--lab-dir", str(lab), "--node", node]
    if argv[1 : 1 + len(expected)] != expected:
        return f"pid {pid} is not its supervisor ({' '.join(argv)[:120]!r})"
    uid = _process_uid(pid)
    if uid != owner:
        return f"its supervisor (pid {pid}) runs as uid {uid}, not as the lab's owner (uid {owner})"
    return None


def prove_lab(lab_dir: str | os.PathLike) -> LiveLab:
    """The real probe: a ``LiveLab`` proven from live state, or ``NoLiveLab`` saying what is missing.

    Example: ``prove_lab("/var/lib/ccfactory/lab").node_for("10.199.0.11")``
    """
    from ccfactory.lab import network
    from ccfactory.lab.errors import LabError

    lab = Path(lab_dir).resolve()
    state = lab / "lab.json"
    st = _owned_file(state, "written by `ccfactory lab up`, removed by `lab down`")
    if st.st_uid != LAB_OWNER_UID:
        raise NoLiveLab(f"{state} belongs to uid {st.st_uid}, not to the lab's owner (uid {LAB_OWNER_UID}): the lab runs as root")
    try:
        recorded = json.loads(state.read_text())
        nodes = {str(name): int(node["index"]) for name, node in recorded["nodes"].items()}
        fingerprint = str(recorded[CA_FINGERPRINT_KEY])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise NoLiveLab(f"{state} is not a lab's state (nodes with indexes and the CA fingerprint)",
                        "re-run `ccfactory lab up` (it rewrites lab.json)") from None  # fmt: skip
    ca = lab / "pki" / "ca.pem"
    ca_st = _owned_file(ca, "the lab CA")
    if ca_st.st_uid != st.st_uid:
        raise NoLiveLab(f"{ca} and {state} have different owners")
    try:
        actual = ca_fingerprint(ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise NoLiveLab(f"{ca} is not a certificate ({exc})") from None
    if actual != fingerprint:
        raise NoLiveLab(f"the lab CA {ca} (sha256 {actual[:16]}...) is not the one `lab up` recorded "
                        f"({fingerprint[:16]}...)", "re-run `ccfactory lab up`")  # fmt: skip
    try:
        is_bridge, bridge = network.bridge_state(network.LAB_BRIDGE)
        _, bmc_bridge = network.bridge_state(network.BMC_BRIDGE)
        namespaces = set(network.list_netns())
    except LabError as exc:
        raise NoLiveLab(f"the lab network cannot be read ({exc})") from None
    gateway = f"{network.LAB_GATEWAY}/{network.PREFIX_LEN}"
    if not is_bridge or gateway not in bridge:
        raise NoLiveLab(f"the lab bridge {network.LAB_BRIDGE} with {gateway} is not up")
    live: list[LiveNode] = []
    dead: dict[str, str] = {}
    for name, index in sorted(nodes.items()):
        try:
            network.check_node_name(name)
            address, bmc = network.node_address(index), network.bmc_address(index)
        except LabError as exc:
            dead[name] = str(exc)
            continue
        why = _supervisor_problem(lab, name, st.st_uid)
        if why is None and network.link_master(network.veth_name(name)) != network.LAB_BRIDGE:
            why = f"its link {network.veth_name(name)} is not on {network.LAB_BRIDGE}"
        if why is None and network.netns_name(name) not in namespaces:
            why = f"its network namespace {network.netns_name(name)} does not exist"
        if why:
            dead[name] = why
            continue
        addresses = (address, *network.node_addresses_v6(index, bridge))
        bmcs = tuple(a for a in (bmc, *network.bmc_addresses_v6(index)) if any(c.startswith(a + "/") for c in bmc_bridge))
        live.append(LiveNode(name, addresses, bmcs))
    return LiveLab(str(lab), fingerprint, tuple(live), dead)


_probe: Probe = prove_lab


def set_probe(probe: Probe) -> Probe:
    """Replace the probe (tests stand a lab in without root); returns the previous one."""
    global _probe
    previous, _probe = _probe, probe
    return previous


def current_probe() -> Probe:
    return _probe


def live_lab(lab_dir: str | os.PathLike) -> LiveLab:
    """The running lab in ``lab_dir`` through the current probe (raises ``NoLiveLab``)."""
    return _probe(Path(lab_dir))


def lab_host_problems(host: str, data: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """``(field, message, fix)`` for every reason ``host``'s data may not have lab relaxations;
    ``data`` is the host's data (``lab_dir``, ``ssh_hostname``, ``bmc_address``, ...)."""
    lab_dir = data.get("lab_dir")
    if not lab_dir:
        return [("lab", "lab is true but lab_dir is not set", "only `ccfactory lab up` sets lab")]
    try:
        lab = live_lab(str(lab_dir))
    except NoLiveLab as exc:
        return [("lab", f"lab is true but {lab_dir} holds no running lab: {exc.message}", exc.fix)]
    node = lab.node_for(host)
    if node is None:
        why = f" (not running: {'; '.join(f'{n}: {r}' for n, r in sorted(lab.dead.items()))})" if lab.dead else ""
        return [("lab", f"lab is true but the running lab in {lab_dir} has no node {host}{why}",
                 "remove lab: lab relaxations are only for the lab's own nodes")]  # fmt: skip
    problems = []
    # a value with user information is a literal secret: its own field refuses it, never printed here
    secret = lambda value: "@" in str(value)  # noqa: E731
    target = str(data.get("ssh_hostname") or host)
    if not secret(target) and _same(target) not in {_same(a) for a in node.addresses}:
        problems.append(("ssh_hostname", f"lab node {node.name} is at {', '.join(node.addresses)}, but pyinfra would "
                         f"connect to {target!r}", f"set ssh_hostname to {node.addresses[0]}, or remove lab"))  # fmt: skip
    bmc = data.get("bmc_address")
    if bmc and not secret(bmc) and _same(str(bmc)) not in {_same(a) for a in node.bmc_addresses}:
        where = ", ".join(node.bmc_addresses) or "no BMC address on the lab's BMC bridge"
        problems.append(("bmc_address", f"{bmc} is not the BMC of lab node {node.name} ({where})",
                         "use the lab BMC's address, or remove lab"))  # fmt: skip
    bundle = data.get("bmc_ca_bundle")
    if bmc and bundle:
        try:
            path = Path(str(bundle)).expanduser()
            matches = ca_fingerprint(path.read_bytes()) == lab.ca_fingerprint if path.exists() else True
        except (OSError, ValueError, RuntimeError):
            matches = False  # a missing file is bmc_ca_bundle's own problem (ccfactory.config)
        if not matches:
            problems.append(("bmc_ca_bundle", f"{bundle} is not the lab CA of {lab_dir}",
                             f"use {Path(lab.lab_dir) / 'pki' / 'ca.pem'}, or remove lab"))  # fmt: skip
    url = data.get("kbs_url")
    if isinstance(url, str) and url and not secret(url):
        try:
            kbs_host = urlsplit(url).hostname or ""
        except ValueError:
            kbs_host = ""  # a malformed URL is kbs_url's own problem
        if kbs_host and lab.node_for(kbs_host) is None:
            problems.append(("kbs_url", f"{url} is not served by a node of the lab in {lab_dir}",
                             "point it at the lab's KBS node, or remove lab"))  # fmt: skip
    return problems
