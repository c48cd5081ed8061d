"""Lab networking: the node bridge, the BMC bridge, one network namespace per node.

Address plan (everything inside 10.199.0.0/16; no forwarding, nodes have no route out):

=====================  ==========================  ==========================
what                   where                       address
=====================  ==========================  ==========================
node SSH bridge        host, ``ccflab0``           10.199.0.1/24
node *i* (1-based)     netns ``ccflab-<node>``     10.199.0.(10+i)/24 on eth0
apt proxy              host                        10.199.0.1:3142
BMC bridge             host, ``ccfbmc0``           10.199.1.1/24
BMC of node *i*        host, ``ccfbmc0`` (/32)     10.199.1.(10+i)
=====================  ==========================  ==========================

Every object the lab creates carries a ``ccf`` name prefix; teardown removes only those.
One lab per machine: the address plan is fixed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ccfactory.lab.errors import LabError
from ccfactory.lab.proc import run

log = logging.getLogger("ccfactory.lab")

LAB_BRIDGE = "ccflab0"
LAB_GATEWAY = "10.199.0.1"
BMC_BRIDGE = "ccfbmc0"
BMC_GATEWAY = "10.199.1.1"
PREFIX_LEN = 24
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


def _addresses(dev: str, netns: str | None = None) -> set[str]:
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + ["addr", "show", "dev", dev]
    data = json.loads(run(cmd).stdout or "[]")
    return {f"{a['local']}/{a['prefixlen']}" for link in data for a in link.get("addr_info", []) if a.get("family") == "inet"}


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
    """Both lab bridges, idempotent; True if anything changed."""
    a = ensure_bridge(LAB_BRIDGE, f"{LAB_GATEWAY}/{PREFIX_LEN}")
    b = ensure_bridge(BMC_BRIDGE, f"{BMC_GATEWAY}/{PREFIX_LEN}")
    return a or b


def ensure_bmc_address(ip: str) -> bool:
    """Add ``ip`` as a /32 on the BMC bridge so a host process can bind it; True if added.

    Example: ``ensure_bmc_address(bmc_address(1))`` then bind 10.199.1.11:443.
    """
    if not ip.startswith("10.199.1."):
        raise LabError(f"BMC address {ip} is outside the lab BMC network 10.199.1.0/24")
    if BMC_BRIDGE not in _links():
        ensure_bridge(BMC_BRIDGE, f"{BMC_GATEWAY}/{PREFIX_LEN}")
    if f"{ip}/32" in _addresses(BMC_BRIDGE):
        return False
    run(["ip", "addr", "add", f"{ip}/32", "dev", BMC_BRIDGE])
    return True


def remove_bmc_address(ip: str) -> None:
    if BMC_BRIDGE in _links() and f"{ip}/32" in _addresses(BMC_BRIDGE):
        run(["ip", "addr", "del", f"{ip}/32", "dev", BMC_BRIDGE])


def bmc_addresses_present() -> set[str]:
    """The /32 BMC addresses currently on the BMC bridge."""
    if BMC_BRIDGE not in _links():
        return set()
    return {a.split("/")[0] for a in _addresses(BMC_BRIDGE) if a.endswith("/32")}


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
