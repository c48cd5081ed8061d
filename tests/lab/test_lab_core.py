"""The lab core for real: nodes boot systemd, answer SSH, use apt, reboot, and show the
hardware their BIOS state and boot config say. The last test takes the lab down."""

from __future__ import annotations

import json
import socket
import subprocess
import time

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
