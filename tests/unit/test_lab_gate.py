"""The lab gate (``ccfactory.lab.proof``): ``lab = True`` in a host's data unlocks lab relaxations
only for a node of a lab running on this controller, proven from live state (supervisor processes,
bridges, the lab CA), never from a file anyone can write.

The real probe runs here against hand-written lab directories (it must refuse them, with or
without a lab running on this machine) and, with the kernel's network objects stood in
(``bridge_state``, ``link_master``, ``list_netns``), against a lab directory whose supervisor is a
real process: an impostor with the supervisor's exact command line is refused when it runs as
another user than the lab's owner. ``tests/lab/test_lab_core.py`` proves the real probe against a
running lab.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccfactory.config import InventoryError, load_node_config
from ccfactory.lab import network, proc, proof
from ccfactory.lab.layout import NodePaths
from lab_standin import self_signed_ca

NODE1, NODE1_BMC = network.node_address(1), network.bmc_address(1)
KBS_NODE = network.node_address(3)


@pytest.fixture(autouse=True)
def _lab_owner_is_this_user(monkeypatch):
    """The lab runs as root (CI runs these tests as root); elsewhere the test's user owns its lab dirs."""
    monkeypatch.setattr(proof, "LAB_OWNER_UID", os.getuid())


def _lab_dir(root: Path, *, nodes=("node1",), fingerprint: bool = True) -> Path:
    """A lab directory as `lab up` writes it (lab.json with indexes and the CA fingerprint, pki/ca.pem)."""
    lab = root / "lab"
    (lab / "pki").mkdir(parents=True)
    pem = self_signed_ca()
    (lab / "pki" / "ca.pem").write_bytes(pem)
    state = {"nodes": {n: {"index": i, "address": network.node_address(i)} for i, n in enumerate(nodes, 1)}}
    if fingerprint:
        state[proof.CA_FINGERPRINT_KEY] = proof.ca_fingerprint(pem)
    (lab / "lab.json").write_text(json.dumps(state))
    for path in (lab / "lab.json", lab / "pki" / "ca.pem"):
        path.chmod(0o644)
    return lab


def _refused(host: str, data: dict, groups=("kbs",)) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_node_config(host, groups, data, check_files=False)
    return [str(p) for p in info.value.problems]


# ------------------------------------------------------------------ hand-written labs, real probe

LAB_HOST = {"tee": "none", "lab": True}
RELAXATIONS = {  # each is refused outside the lab; with a hand-written lab.json it stays refused
    "bmc_verify_tls": {"bmc_vendor": "dell", "bmc_address": NODE1_BMC, "bmc_username": "root",
                       "bmc_password_env": "BMC_PW", "bmc_verify_tls": False},
    "kbs_url": {"kbs_url": f"http://{KBS_NODE}:8080"},
    "kbs_lab_permissive": {"kbs_lab_permissive": True},
    "reboot_graceful_timeout": {"reboot_graceful_timeout": 5},
    "runtime_snp_guest_policy": {"runtime_snp_guest_policy": 0xB0000},
}  # fmt: skip


@pytest.fixture
def real_probe():
    """The real probe for validation (tests/unit/conftest.py stands an empty one in)."""
    previous = proof.set_probe(proof.prove_lab)
    yield
    proof.set_probe(previous)


@pytest.mark.usefixtures("real_probe")
@pytest.mark.parametrize("fingerprint", [False, True], ids=["lab-json-only", "lab-json-and-ca"])
@pytest.mark.parametrize("relaxation", sorted(RELAXATIONS))
def test_a_hand_written_lab_unlocks_no_relaxation(tmp_path, relaxation, fingerprint):
    lab = _lab_dir(tmp_path, nodes=("node1", "node2", "node3"), fingerprint=fingerprint)
    data = {**LAB_HOST, "lab_dir": str(lab), **RELAXATIONS[relaxation]}
    found = _refused(NODE1, data)
    gate = [p for p in found if p.startswith(f"{NODE1}: lab: lab is true but")]
    assert gate, found
    assert "; fix: " in gate[0] and ("holds no running lab" in gate[0] or "(not running: node1: " in gate[0]), gate
    # and outside the lab the relaxation itself is what is refused (the case is not vacuous)
    outside = _refused(NODE1, {**data, "lab": False, "lab_dir": None})
    assert any(p.startswith(f"{NODE1}: {relaxation}: ") for p in outside), outside


def test_a_writable_lab_json_is_not_a_lab(tmp_path):
    lab = _lab_dir(tmp_path)
    (lab / "lab.json").chmod(0o666)
    with pytest.raises(proof.NoLiveLab, match="writable by group or others"):
        proof.prove_lab(lab)


def test_a_lab_json_whose_ca_was_replaced_is_not_a_lab(tmp_path):
    lab = _lab_dir(tmp_path)
    (lab / "pki" / "ca.pem").write_bytes(self_signed_ca("someone else's CA"))
    with pytest.raises(proof.NoLiveLab, match="is not the one `lab up` recorded"):
        proof.prove_lab(lab)


def test_a_lab_json_of_another_user_is_not_a_lab(tmp_path, monkeypatch):
    lab = _lab_dir(tmp_path)
    monkeypatch.setattr(proof, "LAB_OWNER_UID", os.getuid() + 1)
    with pytest.raises(proof.NoLiveLab, match=f"belongs to uid {os.getuid()}, not to the lab's owner"):
        proof.prove_lab(lab)


def test_no_lab_json_is_no_lab(tmp_path):
    with pytest.raises(proof.NoLiveLab, match="lab.json is absent"):
        proof.prove_lab(tmp_path)


# ------------------------------------------------------------------ supervisors: real processes

IMPOSTOR = "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: exit(0))\ntime.sleep(120)\n"


@pytest.fixture
def impostor(tmp_path):
    """A process whose command line is exactly a lab supervisor's (`python -m ccfactory.lab.supervisor
    --lab-dir LAB --node node1`), from a look-alike package, recorded in the node's pid file."""
    fake = tmp_path / "fakepkg" / "ccfactory" / "lab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "supervisor.py").write_text(IMPOSTOR)
    started = []

    def start(lab: Path, node: str = "node1", module: str = proof.SUPERVISOR_MODULE) -> int:
        argv = [sys.executable, "-m", module, "--lab-dir", str(lab), "--node", node]
        child = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(tmp_path / "fakepkg")}, cwd=tmp_path)
        started.append(child)
        deadline = time.monotonic() + 10
        while proc.cmdline(child.pid)[1:3] != ["-m", module] and time.monotonic() < deadline:
            time.sleep(0.02)
        NodePaths(lab, node).dir.mkdir(parents=True, exist_ok=True)
        proc.write_pidfile(NodePaths(lab, node).supervisor_pid, child.pid)
        return child.pid

    yield start
    for child in started:
        child.terminate()
        child.wait(10)


def test_supervisor_check(tmp_path, impostor):
    lab = _lab_dir(tmp_path)
    assert "no live supervisor" in proof._supervisor_problem(lab, "node1", os.getuid())
    pid = impostor(lab)
    assert proof._supervisor_problem(lab, "node1", os.getuid()) is None  # the positive control
    # the same command line run by another user than the lab's owner: not the lab's
    assert f"(pid {pid}) runs as uid {os.getuid()}, not as the lab's owner" in proof._supervisor_problem(
        lab, "node1", os.getuid() + 1)
    # the supervisor of another node (its pid file copied) does not count
    NodePaths(lab, "node2").dir.mkdir(parents=True)
    proc.write_pidfile(NodePaths(lab, "node2").supervisor_pid, pid)
    assert "is not its supervisor" in proof._supervisor_problem(lab, "node2", os.getuid())


def test_a_live_process_that_is_no_supervisor_does_not_count(tmp_path, impostor):
    lab = _lab_dir(tmp_path)
    pid = impostor(lab, module="ccfactory.lab.supervisor_not")
    assert f"pid {pid} is not its supervisor" in proof._supervisor_problem(lab, "node1", os.getuid())


@pytest.fixture
def kernel(monkeypatch):
    """The lab's kernel objects stood in: the bridges' addresses, veth masters, namespaces."""
    state = {
        "bridges": {network.LAB_BRIDGE: {f"{network.LAB_GATEWAY}/24"}, network.BMC_BRIDGE: {f"{NODE1_BMC}/32"}},
        "masters": {network.veth_name("node1"): network.LAB_BRIDGE},
        "netns": [network.netns_name("node1")],
    }

    def bridge_state(name):
        return (name in state["bridges"], set(state["bridges"].get(name, ())))

    monkeypatch.setattr(network, "bridge_state", bridge_state)
    monkeypatch.setattr(network, "link_master", lambda name: state["masters"].get(name))
    monkeypatch.setattr(network, "list_netns", lambda: list(state["netns"]))
    return state


def test_the_real_probe_proves_a_lab_from_live_state(tmp_path, impostor, kernel):
    lab = _lab_dir(tmp_path)
    impostor(lab)
    live = proof.prove_lab(lab)
    node = live.node_for(NODE1)
    assert node is not None and node.name == "node1" and node.bmc_addresses == (NODE1_BMC,), live
    assert live.node_for("node1") is node and live.node_for("10.199.0.12") is None
    # IPv6 only when the bridge carries it
    assert node.addresses == (NODE1,)
    kernel["bridges"][network.LAB_BRIDGE].add(f"{network.LAB_GATEWAY6}/64")
    node6 = proof.prove_lab(lab).node_for(network.node_address_v6(1))
    assert node6 is not None and node6.addresses == (NODE1, network.node_address_v6(1))

    # each piece of live state, taken away, breaks the proof
    kernel["netns"].clear()
    assert "network namespace ccflab-node1 does not exist" in proof.prove_lab(lab).dead["node1"]
    kernel["netns"].append(network.netns_name("node1"))
    kernel["masters"].clear()
    assert "ccfv-node1 is not on ccflab0" in proof.prove_lab(lab).dead["node1"]
    kernel["masters"][network.veth_name("node1")] = network.LAB_BRIDGE
    assert proof.prove_lab(lab).node_for(NODE1) is not None
    kernel["bridges"][network.BMC_BRIDGE].clear()
    assert proof.prove_lab(lab).node_for(NODE1).bmc_addresses == ()
    kernel["bridges"].pop(network.LAB_BRIDGE)
    with pytest.raises(proof.NoLiveLab, match="the lab bridge ccflab0 with 10.199.0.1/24 is not up"):
        proof.prove_lab(lab)


def test_a_node_whose_supervisor_stopped_is_not_in_the_lab(tmp_path, impostor, kernel, real_probe):
    lab = _lab_dir(tmp_path)
    pid = impostor(lab)
    assert proof.prove_lab(lab).node_for(NODE1)
    proc.stop(pid, timeout=10)
    live = proof.prove_lab(lab)
    assert live.node_for(NODE1) is None and "no live supervisor" in live.dead["node1"]
    found = _refused(NODE1, {**LAB_HOST, "lab_dir": str(lab)})
    assert any(f"has no node {NODE1} (not running: node1: no live supervisor" in p for p in found), found


# ------------------------------------------------------------------ binding the host to its node


def test_lab_data_of_a_live_node_passes(tmp_path, live_lab):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed_ca())
    live_lab(tmp_path, {"node1": NODE1, "node3": KBS_NODE}, bmcs={"node1": NODE1_BMC}, ca=ca)
    data = {**LAB_HOST, "lab_dir": str(tmp_path), **RELAXATIONS["bmc_verify_tls"], "kbs_url": f"http://{KBS_NODE}:8080",
            "reboot_graceful_timeout": 5}  # fmt: skip
    cfg = load_node_config(NODE1, ("kbs",), data, check_files=False)
    assert cfg.lab and not cfg.bmc.verify_tls and cfg.reboot.graceful_timeout == 5
    tls = {**data, "bmc_verify_tls": True, "bmc_ca_bundle": str(ca)}
    assert load_node_config(NODE1, ("kbs",), tls, check_files=False).bmc.ca_bundle == str(ca)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ssh_hostname": "prod-gpu-7.example.net"}, f"{NODE1}: ssh_hostname: lab node node1 is at {NODE1}, but pyinfra "
         "would connect to 'prod-gpu-7.example.net'; fix: set ssh_hostname to 10.199.0.11, or remove lab"),
        ({"bmc_address": "10.0.0.5"}, f"{NODE1}: bmc_address: 10.0.0.5 is not the BMC of lab node node1 ({NODE1_BMC})"),
        ({"bmc_ca_bundle": "@OTHER_CA@", "bmc_verify_tls": True}, f"{NODE1}: bmc_ca_bundle: @OTHER_CA@ is not the lab CA"),
        ({"kbs_url": "http://kbs.prod.example:8080"}, f"{NODE1}: kbs_url: http://kbs.prod.example:8080 is not served by a "
         "node of the lab"),
    ],
    ids=["ssh-elsewhere", "bmc-elsewhere", "foreign-ca", "kbs-elsewhere"],
)
def test_lab_relaxations_never_reach_a_machine_outside_the_lab(tmp_path, live_lab, change, expected):
    ca, other = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    ca.write_bytes(self_signed_ca())
    other.write_bytes(self_signed_ca("another CA"))
    live_lab(tmp_path, {"node1": NODE1, "node3": KBS_NODE}, bmcs={"node1": NODE1_BMC}, ca=ca)
    change = {k: str(other) if v == "@OTHER_CA@" else v for k, v in change.items()}
    data = {**LAB_HOST, "lab_dir": str(tmp_path), **RELAXATIONS["bmc_verify_tls"], **change}
    found = _refused(NODE1, data)
    assert any(p.startswith(expected.replace("@OTHER_CA@", str(other))) for p in found), found


def test_a_host_named_after_a_node_must_connect_to_it(tmp_path, live_lab):
    live_lab(tmp_path, {"node1": NODE1})
    data = {**LAB_HOST, "lab_dir": str(tmp_path)}
    found = _refused("node1", data)  # pyinfra would resolve "node1" by DNS: any machine
    assert any(p.startswith("node1: ssh_hostname: lab node node1 is at 10.199.0.11") for p in found), found
    assert load_node_config("node1", ("kbs",), {**data, "ssh_hostname": NODE1}, check_files=False).lab


def test_ipv6_node_addresses_match_in_any_spelling(tmp_path, live_lab):
    live_lab(tmp_path, {"node1": [NODE1, "fdcc:f199::b"]}, bmcs={"node1": "fdcc:f199:0:1::b"})
    data = {**LAB_HOST, "lab_dir": str(tmp_path), **RELAXATIONS["bmc_verify_tls"],
            "bmc_address": "[fdcc:f199:0:1:0:0:0:b]"}  # fmt: skip
    assert load_node_config("fdcc:f199:0:0::b", ("kbs",), data, check_files=False).lab
    assert load_node_config("node1", ("kbs",), {**data, "ssh_hostname": "FDCC:F199::B"}, check_files=False).lab


# ------------------------------------------------------------------ the IPv6 address plan


def test_ipv6_address_plan_mirrors_the_ipv4_one():
    for index in (1, 2, 200):
        node, bmc = ipaddress.ip_address(network.node_address_v6(index)), ipaddress.ip_address(network.bmc_address_v6(index))
        assert node in network.LAB_NET6 and bmc in network.BMC_NET6 and node.is_private
        assert int(node) - int(network.LAB_NET6.network_address) == 10 + index
        assert str(node) != network.LAB_GATEWAY6 and str(bmc) != network.BMC_GATEWAY6
    assert ipaddress.ip_network("fd00::/8").supernet_of(network.LAB_NET6)  # RFC 4193 unique local
    assert network._bmc_host_cidr(network.bmc_address_v6(3)) == ("inet6", "fdcc:f199:0:1::d/128")
    assert network._bmc_host_cidr(network.bmc_address(3)) == ("inet", "10.199.1.13/32")
    for outside in ("10.199.0.11", "fdcc:f199::b", "2001:db8::1", "bmc1"):
        with pytest.raises(network.LabError):
            network._bmc_host_cidr(outside)
    with pytest.raises(network.LabError):
        network.node_address_v6(0)


def test_a_bridge_without_ipv6_gives_nodes_no_ipv6_address():
    assert network.node_addresses_v6(1, {"10.199.0.1/24"}) == ()
    assert network.node_addresses_v6(1, {"10.199.0.1/24", "fdcc:f199::1/64"}) == ("fdcc:f199::b",)


@pytest.mark.parametrize("key", ["ssh_hostname", "bmc_address", "kbs_url"])
def test_the_gate_never_prints_a_secret_in_an_address(tmp_path, live_lab, key):
    live_lab(tmp_path, {"node1": NODE1}, bmcs={"node1": NODE1_BMC})
    value = {"ssh_hostname": "root:Zq9-GateSecret@10.0.0.9", "bmc_address": "root:Zq9-GateSecret@10.0.0.9",
             "kbs_url": "http://root:Zq9-GateSecret@10.0.0.9:8080"}[key]  # fmt: skip
    data = {**LAB_HOST, "lab_dir": str(tmp_path), **RELAXATIONS["bmc_verify_tls"], key: value}
    with pytest.raises(InventoryError) as info:
        load_node_config(NODE1, ("kbs",), data, check_files=False)
    assert "Zq9-GateSecret" not in str(info.value)
    assert any(p.field == key and "user information" in p.message for p in info.value.problems), info.value


def test_without_the_labs_hooks_lab_true_is_refused_and_entry_points_install_them(monkeypatch, tmp_path):
    """Product code reaches the lab only through ``ccfactory.labhooks`` (config never imports the
    lab): when no entry point installed the lab's hooks, ``lab = true`` gets no relaxation."""
    import subprocess
    import sys

    from ccfactory import labhooks

    monkeypatch.setattr(labhooks, "_installed", None)
    found = _refused(NODE1, {**LAB_HOST, "lab_dir": str(tmp_path)})
    assert any(p.startswith(f"{NODE1}: lab: lab is true, but this program cannot prove a lab") for p in found), found
    # in a fresh interpreter: config alone installs nothing; the inventory entry point (which
    # deploys, the CLI and the verify plugin go through) installs the lab's proof and CDH stand-in
    probe = (
        "from ccfactory import labhooks, config\n"
        "assert labhooks.installed() is None\n"
        "import ccfactory.inventory\n"
        "h = labhooks.installed()\n"
        "assert h is not None and 'ccflab-cdh' in h.cdh_program()\n"
        "print(h.prove_host.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ccfactory.lab.proof"
