"""Lab networking: the node bridge, the BMC bridge, one network namespace per node.

Address plan (IPv4 inside 10.199.0.0/16, IPv6 unique local addresses (RFC 4193) inside
fdcc:f199::/48; no forwarding, nodes have no route out):

=====================  ==========================  ==========================  ===========================
what                   where                       IPv4                        IPv6
=====================  ==========================  ==========================  ===========================
node SSH bridge        host, ``ccflab0``           10.199.0.1/24               fdcc:f199::1/64
node *i* (1-based)     netns ``ccflab-<node>``     10.199.0.(10+i)/24 on eth0  fdcc:f199::(10+i)/64 (hex)
apt proxy              host                        10.199.0.1:3142
BMC bridge             host, ``ccfbmc0``           10.199.1.1/24               fdcc:f199:0:1::1/64
BMC of node *i*        host, ``ccfbmc0``           10.199.1.(10+i)/32          fdcc:f199:0:1::(10+i)/128
=====================  ==========================  ==========================  ===========================

Nodes and bridges always carry both; a BMC listens on one address, IPv4 unless the lab is up
with ``--ipv6`` (then the inventory names nodes and BMCs by their IPv6 addresses).

Every object the lab creates carries a ``ccf`` name prefix; teardown removes only those.
One lab per machine: the address plan is fixed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from pathlib import Path

from ccfactory.lab.errors import LabError
from ccfactory.lab.proc import run

log = logging.getLogger("ccfactory.lab")

LAB_BRIDGE = "ccflab0"
LAB_GATEWAY = "10.199.0.1"
REGISTRY_PORT = 5001  # the lab's image registry on the gateway (ccfactory.lab.registry)
BMC_BRIDGE = "ccfbmc0"
BMC_GATEWAY = "10.199.1.1"
PREFIX_LEN = 24
# IPv6 (unique local addresses, RFC 4193): the same plan, one /64 per bridge
LAB_NET6 = ipaddress.IPv6Network("fdcc:f199::/64")
BMC_NET6 = ipaddress.IPv6Network("fdcc:f199:0:1::/64")
LAB_GATEWAY6 = str(LAB_NET6.network_address + 1)
BMC_GATEWAY6 = str(BMC_NET6.network_address + 1)
PREFIX_LEN6 = 64
NETNS_PREFIX = "ccflab-"
VETH_PREFIX = "ccfv-"
MAX_NODES = 200  # .11 .. .210 keeps clear of the gateway and broadcast

_NODE_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # veth name "ccfv-" + node must fit IFNAMSIZ (15)


def check_node_name(node: str) -> str:
    if not _NODE_NAME.match(node):
        raise LabError(f"invalid lab node name {node!r}: use 1-10 lowercase letters/digits, starting with a letter")
    return node


def _check_index(index: int) -> None:
    if not 1 <= index <= MAX_NODES:
        raise LabError(f"lab node index {index} out of range 1..{MAX_NODES}")


def node_address(index: int) -> str:
    """SSH address of lab node ``index`` (1-based).

    >>> node_address(1)
    '10.199.0.11'
    """
    _check_index(index)
    return f"10.199.0.{10 + index}"


def bmc_address(index: int) -> str:
    """Address the BMC emulator of lab node ``index`` (1-based) listens on.

    >>> bmc_address(2)
    '10.199.1.12'
    """
    _check_index(index)
    return f"10.199.1.{10 + index}"


def node_address_v6(index: int) -> str:
    """ULA IPv6 SSH address of lab node ``index`` (1-based), used when the lab carries IPv6.

    >>> node_address_v6(1)
    'fdcc:f199::b'
    """
    _check_index(index)
    return str(LAB_NET6.network_address + 10 + index)


def bmc_address_v6(index: int) -> str:
    """ULA IPv6 address of the BMC of lab node ``index``.

    >>> bmc_address_v6(2)
    'fdcc:f199:0:1::c'
    """
    _check_index(index)
    return str(BMC_NET6.network_address + 10 + index)


def node_addresses_v6(index: int, bridge: set[str]) -> tuple[str, ...]:
    """The node's IPv6 address when the lab bridge (its CIDRs: ``bridge_state``) carries IPv6."""
    return (node_address_v6(index),) if f"{LAB_GATEWAY6}/{PREFIX_LEN6}" in bridge else ()


def bmc_addresses_v6(index: int) -> tuple[str, ...]:
    return (bmc_address_v6(index),)


def netns_name(node: str) -> str:
    """``ccflab-node1``; its handle is ``/run/netns/ccflab-node1``."""
    return NETNS_PREFIX + check_node_name(node)


def netns_path(node: str) -> Path:
    return Path("/run/netns") / netns_name(node)


def veth_name(node: str) -> str:
    """Host side of the node's veth pair (``ccfv-node1``); the node side is ``eth0``."""
    return VETH_PREFIX + check_node_name(node)


def _links() -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")}


def _addresses(dev: str, netns: str | None = None, family: str = "inet") -> set[str]:
    """CIDRs of ``family`` (``inet``, ``inet6``: global scope only) on ``dev``."""
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + ["addr", "show", "dev", dev]
    data = json.loads(run(cmd).stdout or "[]")
    return {f"{a['local']}/{a['prefixlen']}" for link in data for a in link.get("addr_info", [])
            if a.get("family") == family and a.get("scope") != "link"}  # fmt: skip


def _ensure_address6(dev: str, cidr: str, netns: str | None = None) -> bool:
    """Add an IPv6 address without duplicate address detection (usable at once: the lab plan
    has no duplicates); True if added. A lab address of the same prefix length already on
    ``dev`` is stale (a node renumbered) and goes; BMC host addresses (/128) beside the BMC
    bridge's gateway (/64) stay."""
    ns = ["-n", netns] if netns else []
    present = _addresses(dev, netns, "inet6")
    if cidr in present:
        return False
    wanted = ipaddress.ip_interface(cidr)
    for stale in present:
        old = ipaddress.ip_interface(stale)
        if old.network.prefixlen == wanted.network.prefixlen and any(old.ip in net for net in (LAB_NET6, BMC_NET6)):
            run(["ip", *ns, "addr", "del", stale, "dev", dev])
    run(["ip", *ns, "addr", "add", cidr, "dev", dev, "nodad"])
    return True


def bridge_state(name: str) -> tuple[bool, set[str]]:
    """Whether ``name`` is a live bridge (``/sys/class/net/<name>/bridge``) and its addresses
    (CIDR, IPv4 and IPv6, link-local excluded); ``(False, set())`` when it does not exist."""
    if not (Path("/sys/class/net") / name / "bridge").is_dir():
        return False, set()
    data = json.loads(run(["ip", "-j", "addr", "show", "dev", name], check=False).stdout or "[]")
    found = {f"{a['local']}/{a['prefixlen']}" for link in data for a in link.get("addr_info", [])
             if a.get("family") in ("inet", "inet6") and a.get("scope") != "link"}  # fmt: skip
    return True, found


def link_master(name: str) -> str | None:
    """The bridge a link is enslaved to (``/sys/class/net/<name>/master``), or None."""
    try:
        return Path(os.readlink(Path("/sys/class/net") / name / "master")).name
    except OSError:
        return None


def list_netns() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    return [n["name"] for n in json.loads(out)] if out else []


def ensure_bridge(name: str, address: str) -> bool:
    """Create bridge ``name`` with ``address`` (CIDR) and bring it up; True if anything changed."""
    changed = False
    if name not in _links():
        run(["ip", "link", "add", name, "type", "bridge"])
        changed = True
    if address not in _addresses(name):
        run(["ip", "addr", "add", address, "dev", name])
        changed = True
    if "UP" not in _links()[name].get("flags", []):
        run(["ip", "link", "set", name, "up"])
        changed = True
    return changed


def ensure_bridges() -> bool:
    """Both lab bridges, IPv4 and IPv6 (ULA) gateways, idempotent; True if anything changed."""
    a = ensure_bridge(LAB_BRIDGE, f"{LAB_GATEWAY}/{PREFIX_LEN}")
    b = ensure_bridge(BMC_BRIDGE, f"{BMC_GATEWAY}/{PREFIX_LEN}")
    a6 = _ensure_address6(LAB_BRIDGE, f"{LAB_GATEWAY6}/{PREFIX_LEN6}")
    b6 = _ensure_address6(BMC_BRIDGE, f"{BMC_GATEWAY6}/{PREFIX_LEN6}")
    return a or b or a6 or b6


def _bmc_host_cidr(ip: str) -> tuple[str, str]:
    """``(family, cidr)`` of a BMC address as a host route on the BMC bridge (/32 or /128)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise LabError(f"BMC address {ip!r} is not an IP address") from None
    if addr.version == 4 and addr in ipaddress.ip_network(f"{BMC_GATEWAY}/{PREFIX_LEN}", strict=False):
        return "inet", f"{addr}/32"
    if addr.version == 6 and addr in BMC_NET6:
        return "inet6", f"{addr}/128"
    raise LabError(f"BMC address {ip} is outside the lab BMC networks 10.199.1.0/24 and {BMC_NET6}")


def ensure_bmc_address(ip: str) -> bool:
    """Add ``ip`` as a host address (/32, IPv6 /128) on the BMC bridge so a host process can
    bind it; True if added.

    Example: ``ensure_bmc_address(bmc_address(1))`` then bind 10.199.1.11:443.
    """
    family, cidr = _bmc_host_cidr(ip)
    if BMC_BRIDGE not in _links():
        ensure_bridge(BMC_BRIDGE, f"{BMC_GATEWAY}/{PREFIX_LEN}")
    if cidr in _addresses(BMC_BRIDGE, family=family):
        return False
    run(["ip", "addr", "add", cidr, "dev", BMC_BRIDGE] + (["nodad"] if family == "inet6" else []))
    return True


def remove_bmc_address(ip: str) -> None:
    family, cidr = _bmc_host_cidr(ip)
    if BMC_BRIDGE in _links() and cidr in _addresses(BMC_BRIDGE, family=family):
        run(["ip", "addr", "del", cidr, "dev", BMC_BRIDGE])


def bmc_addresses_present() -> set[str]:
    """The host addresses (/32, /128) currently on the BMC bridge."""
    if BMC_BRIDGE not in _links():
        return set()
    found = _addresses(BMC_BRIDGE) | _addresses(BMC_BRIDGE, family="inet6")
    return {a.split("/")[0] for a in found if a.endswith(("/32", "/128"))}


def ensure_node_network(node: str, index: int) -> bool:
    """Netns + veth for one node, address 10.199.0.(10+index)/24 on its eth0; True if changed.

    No default route: nodes reach only the lab bridge (apt goes through the proxy).
    """
    ns, veth, addr = netns_name(node), veth_name(node), f"{node_address(index)}/{PREFIX_LEN}"
    changed = False
    if ns not in list_netns():
        run(["ip", "netns", "add", ns])
        changed = True
    links = _links()
    ns_links = json.loads(run(["ip", "-j", "-n", ns, "link", "show"]).stdout or "[]")
    has_eth0 = any(link["ifname"] == "eth0" for link in ns_links)
    if veth in links and not has_eth0:  # half a pair (crash mid-setup): start over
        run(["ip", "link", "del", veth])
        links.pop(veth)
    if veth not in links:
        if has_eth0:
            run(["ip", "-n", ns, "link", "del", "eth0"])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        changed = True
    links = _links()
    if links[veth].get("master") != LAB_BRIDGE:
        run(["ip", "link", "set", veth, "master", LAB_BRIDGE])
        changed = True
    if "UP" not in links[veth].get("flags", []):
        run(["ip", "link", "set", veth, "up"])
        changed = True
    ns_links = {link["ifname"]: link for link in json.loads(run(["ip", "-j", "-n", ns, "link", "show"]).stdout or "[]")}
    if "UP" not in ns_links["lo"].get("flags", []):
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        changed = True
    if addr not in _addresses("eth0", ns):
        for stale in _addresses("eth0", ns):
            run(["ip", "-n", ns, "addr", "del", stale, "dev", "eth0"])
        run(["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"])
        changed = True
    if _ensure_address6("eth0", f"{node_address_v6(index)}/{PREFIX_LEN6}", ns):
        changed = True
    if "UP" not in ns_links["eth0"].get("flags", []):
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        changed = True
    return changed


def remove_node_network(node: str) -> None:
    """Delete the node's veth and netns (no error if already gone)."""
    veth, ns = veth_name(node), netns_name(node)
    if veth in _links():
        run(["ip", "link", "del", veth], check=False)
    if ns in list_netns():
        run(["ip", "netns", "del", ns], check=False)


def teardown() -> list[str]:
    """Remove every lab network object (ccf-prefixed netns, veths, both bridges); returns what went."""
    removed = []
    for name in _links():
        if name.startswith(VETH_PREFIX):
            run(["ip", "link", "del", name], check=False)
            removed.append(name)
    for ns in list_netns():
        if ns.startswith(NETNS_PREFIX):
            run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    for br in (LAB_BRIDGE, BMC_BRIDGE):
        if br in _links():
            run(["ip", "link", "del", br], check=False)
            removed.append(br)
    return removed


def leftovers() -> list[str]:
    """Lab network objects that still exist (for ``down``'s final check and tests)."""
    found = [n for n in _links() if n.startswith(VETH_PREFIX) or n in (LAB_BRIDGE, BMC_BRIDGE)]
    found += [f"netns {n}" for n in list_netns() if n.startswith(NETNS_PREFIX)]
    return found
