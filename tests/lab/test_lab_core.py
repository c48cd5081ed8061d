"""The lab core for real: nodes boot systemd, answer SSH, use apt, reboot, and show the
hardware their BIOS state and boot config say. The last test takes the lab down."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccfactory.lab import manager
from ccfactory.lab.features import write_local_platform_features
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.power import power
from ccfactory.lab.render import DMESG_PATH, SNP_IOMMU_MESSAGE

pytestmark = pytest.mark.lab


def test_nodes_reachable_as_root_with_key_auth(lab):
    ids = set()
    for name, node in lab.nodes.items():
        r = lab.ssh(name, "id -u; hostname; cat /etc/machine-id; ip -4 -o addr show dev eth0")
        uid, hostname, machine_id, addr = r.stdout.strip().splitlines()
        assert uid == "0" and hostname == name
        assert node["address"] + "/24" in addr
        ids.add(machine_id)
    assert len(ids) == len(lab.nodes), "every node has its own machine-id"
    # key auth only: a login without the key is refused
    r = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "PubkeyAuthentication=no", "-o", "ConnectTimeout=5", f"root@{lab.nodes['node1']['address']}", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_ssh_host_keys_differ_per_node(lab):
    keys = {lab.ssh(n, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for n in lab.nodes}
    assert len(keys) == len(lab.nodes)


def test_systemd_is_running(lab):
    for name in lab.nodes:
        r = lab.ssh(name, "systemctl is-system-running --wait", check=False, timeout=120)
        failed = lab.ssh(name, "systemctl --failed --no-legend", check=False).stdout
        assert r.stdout.strip() == "running", f"{name}: {r.stdout.strip()}; failed units: {failed}"


def test_apt_update_works_through_the_proxy(lab):
    name = "node1"
    assert "default" not in lab.ssh(name, "ip route").stdout, "nodes have no route out"
    assert "10.199.0.1:3142" in lab.ssh(name, "apt-config dump | grep -i proxy").stdout
    r = lab.ssh(name, "apt-get update", check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Err:" not in r.stdout
    r = lab.ssh(name, "apt-get install -y --no-install-recommends jq >/dev/null && jq --version", timeout=300)
    assert r.stdout.startswith("jq-")
    assert not lab.ssh(name, "ls /var/cache/apt/archives/*.deb 2>/dev/null", check=False).stdout.strip(), "debs not kept"


def test_guest_reboot_changes_boot_id_and_ssh_returns(lab):
    name = "node3"
    before = lab.ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    lab.ssh(name, "systemctl reboot", check=False)
    t0 = time.monotonic()
    deadline = t0 + 90
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.3)
        r = lab.ssh(name, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=15)
        after = r.stdout.strip() if r.returncode == 0 else before
    assert after != before, "boot_id did not change"
    print(f"\nreboot: SSH back with a new boot_id after {time.monotonic() - t0:.1f} s")


def test_hardware_matches_the_profiles(lab):
    amd, intel, plain = (lab.node_of_profile(p) for p in ("amd-snp-hgx", "intel-tdx", "plain"))
    out = lab.ssh(amd, "lspci -nn -d 10de: | grep -c 'H100'; ls /sys/bus/pci/devices | wc -l; grep -m1 'model name' /proc/cpuinfo").stdout
    gpus, devices, model = out.strip().splitlines()
    assert (gpus, devices) == ("8", "13") and "EPYC 9654" in model
    assert "2" == lab.ssh(intel, "lspci -n -d 10de:2901 | wc -l").stdout.strip()
    assert "0" == lab.ssh(plain, "ls /sys/bus/pci/devices | wc -l").stdout.strip()
    # dmesg cannot be read in a container; the rendered log can
    assert lab.ssh(amd, "dmesg", check=False).returncode != 0
    assert "Linux version" in lab.ssh(amd, f"cat {DMESG_PATH}").stdout


def _reboot_and_wait(lab, name: str) -> None:
    before = lab.ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    lab.ssh(name, "systemctl reboot", check=False)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        time.sleep(0.3)
        r = lab.ssh(name, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=15)
        if r.returncode == 0 and r.stdout.strip() != before:
            return
    raise AssertionError(f"{name} did not come back from reboot")


def test_iommu_pt_in_a_grub_dropin_turns_snp_off(lab):
    if json.loads((lab.dir / "spec.json").read_text()).get("platform_source") != "local":
        manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source="local")  # set BIOS state directly
    name = lab.node_of_profile("amd-snp-hgx")
    snp_on = PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)
    write_local_platform_features(lab.dir, name, snp_on)
    try:
        assert power(lab.dir, name, "force-restart") == "On"  # BIOS changes apply at the next POST
        lab.wait_ssh(name)
        assert lab.ssh(name, "cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip() == "Y"
        assert "kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)" in lab.ssh(name, f"cat {DMESG_PATH}").stdout

        lab.ssh(name, "mkdir -p /etc/default/grub.d && echo 'GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt\"' > /etc/default/grub.d/60-test-iommu.cfg && update-grub")
        _reboot_and_wait(lab, name)
        assert "iommu=pt" in lab.ssh(name, "cat /proc/cmdline").stdout.split()
        assert lab.ssh(name, "cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip() == "N"
        log = lab.ssh(name, f"cat {DMESG_PATH}").stdout
        assert SNP_IOMMU_MESSAGE in log and "kvm_amd: SEV-SNP disabled" in log

        lab.ssh(name, "rm /etc/default/grub.d/60-test-iommu.cfg")
        _reboot_and_wait(lab, name)
        assert lab.ssh(name, "cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip() == "Y"
    finally:
        (lab.dir / "nodes" / name / "platform.json").unlink(missing_ok=True)
        lab.ssh(name, "rm -f /etc/default/grub.d/60-test-iommu.cfg", check=False)
        power(lab.dir, name, "force-restart")
        lab.wait_ssh(name)


def test_bmc_style_power_actions(lab):
    name = lab.node_of_profile("plain")
    address = lab.nodes[name]["address"]
    assert power(lab.dir, name, "status") == "On"
    assert power(lab.dir, name, "force-off") == "Off"
    assert power(lab.dir, name, "status") == "Off"
    with pytest.raises(OSError):
        socket.create_connection((address, 22), timeout=1).close()
    time.sleep(1)
    assert power(lab.dir, name, "status") == "Off", "an off node stays off"
    assert power(lab.dir, name, "on") == "On"
    lab.wait_ssh(name)
    assert power(lab.dir, name, "off") == "Off"  # graceful: systemd powers off
    assert power(lab.dir, name, "restart") == "On"  # restart of an off node powers it on
    lab.wait_ssh(name)
    before = lab.ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout
    assert power(lab.dir, name, "restart") == "On"
    lab.wait_ssh(name)
    assert lab.ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout != before


def test_the_lab_gate_proves_this_running_lab(lab, tmp_path):
    """The real probe (ccfactory.lab.proof) against the running lab: every node proven from its live
    supervisor, the bridges and the lab CA; the lab inventory gets lab relaxations; a copy of the
    lab's state files elsewhere, or a lab host sent to another machine, gets none."""
    from ccfactory.config import InventoryError, load_node_config
    from ccfactory.inventory import load_inventory, validate_inventory
    from ccfactory.lab import proof

    live = proof.prove_lab(lab.dir)
    assert not live.dead, live.dead
    assert {n.name for n in live.nodes} == set(lab.nodes)
    for name, node in lab.nodes.items():
        found = live.node_for(node["address"])
        assert found is not None and found.name == name
        assert node["bmc_address"] in found.bmc_addresses
    assert live.ca_fingerprint == proof.ca_fingerprint((lab.dir / "pki" / "ca.pem").read_bytes())

    inventory = load_inventory(lab.inventory)
    configs = validate_inventory(inventory)
    assert configs and all(cfg.lab for cfg in configs.values())

    # the lab's own state files, copied: the supervisors name the real lab dir, not the copy
    copy = tmp_path / "copy"
    (copy / "pki").mkdir(parents=True)
    shutil.copy2(lab.dir / "lab.json", copy / "lab.json")
    shutil.copy2(lab.dir / "pki" / "ca.pem", copy / "pki" / "ca.pem")
    for name in lab.nodes:
        (copy / "nodes" / name).mkdir(parents=True)
        shutil.copy2(lab.dir / "nodes" / name / "supervisor.pid", copy / "nodes" / name / "supervisor.pid")
    forged = proof.prove_lab(copy)
    assert not forged.nodes and all("is not its supervisor" in why for why in forged.dead.values()), forged

    host = next(iter(configs))
    data = inventory.get_host(host).data.dict()
    for change, field in [({"lab_dir": str(copy)}, "lab"), ({"ssh_hostname": "192.0.2.7"}, "ssh_hostname")]:
        with pytest.raises(InventoryError) as info:
            load_node_config(host, inventory.get_host(host).groups, {**data, **change}, check_files=False)
        assert any(p.host == host and p.field == field and p.fix for p in info.value.problems), info.value


def test_ipv6_end_to_end_bmc_and_ssh(lab, tmp_path):
    """A lab up with --ipv6: the inventory names a node and its BMC by their ULA addresses only;
    ccfactory's Redfish client reads the BMC at https://[v6]:443 (TLS verified against the lab CA,
    the BMC no longer answering on IPv4), and pyinfra's SSH connector runs a command on the node
    over IPv6. Then the lab goes back to IPv4, its inventory as before."""
    from ccfactory.clients.redfish import RedfishClient
    from ccfactory.inventory import load_inventory, validate_inventory
    from ccfactory.lab import network, proc

    name = lab.node_of_profile("amd-snp-hgx")
    index = lab.nodes[name]["index"]
    v6, bmc6 = network.node_address_v6(index), network.bmc_address_v6(index)
    inventory6 = tmp_path / "lab6.py"
    before = lab.inventory.read_text()
    try:
        manager.up(lab_dir=lab.dir, inventory=inventory6, ipv6=True)
        assert f"{v6}/64" in lab.ssh(name, "ip -6 -o addr show dev eth0 scope global").stdout
        configs = validate_inventory(load_inventory(inventory6))
        cfg = configs[v6]  # the host is its IPv6 address; the lab gate proved it from live state
        assert cfg.lab and cfg.bmc.address == bmc6 and cfg.bmc.verify_tls
        assert not proc.listening(lab.nodes[name]["bmc_address"], 443), "the BMC must answer on IPv6 only"
        with RedfishClient.from_config(cfg.bmc, host=v6) as client:
            assert client.base_url == f"https://[{bmc6}]:443"
            assert client.power_state() == "On"
            assert client.read_bios(registry=False).attributes
            assert client.requests_made > 0
        # the operator's read-only entry point, every TEE node's BMC by its IPv6 address
        plan = subprocess.run([str(Path(sys.executable).with_name("ccfactory")), "firmware", "plan", str(inventory6)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
        assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
        workers = [h for h, c in configs.items() if c.tee in ("snp", "tdx")]
        assert workers and all(h in plan.stdout for h in workers), plan.stdout[-2000:]
        boot_id = lab.ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
        run = subprocess.run(
            [str(Path(sys.executable).with_name("pyinfra")), "-y", "--limit", v6, str(inventory6), "exec", "--",
             "cat /proc/sys/kernel/random/boot_id"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path, env={**os.environ, "PYINFRA_PROGRESS": "off"},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert f"[{v6}] {boot_id}" in run.stdout + run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    finally:
        manager.up(lab_dir=lab.dir, inventory=lab.inventory, ipv6=False)
    assert lab.inventory.read_text() == before
    assert proc.listening(lab.nodes[name]["bmc_address"], 443)


def test_second_up_changes_nothing_and_is_fast(lab):
    boots = {n["name"]: n["boots"] for n in manager.status(lab_dir=lab.dir)["nodes"]}
    inv_before = lab.inventory.read_text()
    t0 = time.monotonic()
    st = manager.up(lab_dir=lab.dir, inventory=lab.inventory)
    took = time.monotonic() - t0
    print(f"\nwarm lab up: {took:.1f} s")
    assert took < 15
    assert {n["name"]: n["boots"] for n in st["nodes"]} == boots, "no node was restarted"
    assert lab.inventory.read_text() == inv_before
