"""Lab BMCs against real lab nodes (root, lab network, systemd-nspawn): each node's BMC on its
management address 10.199.1.(10+i):443, Redfish resets that really reboot the node, and a
BIOS change through Redfish that really changes the node's hardware view.

Run with ``CCFACTORY_LAB_PLATFORM=bmc pytest -m lab tests/lab`` (the SNP test needs nodes
that read their BIOS state from the BMC; it is skipped with the ``local`` source).
"""

from __future__ import annotations

import time

import pytest

from ccfactory.lab.bmc import service
from ccfactory.lab.bmc.personality import load_personality
from ccfactory.lab.bmc.state import reset as reset_bios

sushy = pytest.importorskip("sushy")
from sushy.resources import constants as sc  # noqa: E402

pytestmark = pytest.mark.lab

# SNP bring-up per BMC vendor, stage by stage (cc-stack.md §1; see test_lab_bmc_bios.py).
SNP_STAGES = {
    "dell": [{"Sme": "Enabled"}, {"Snp": "Enabled", "CpuMinSevAsid": 100}, {"Rmp": "Enabled"}],
    "hpe": [{"AmdSecureMemoryEncryption": "Enabled"}, {"AmdSecureNestedPaging": "Enabled", "MinimumSevAsid": 100}],
    "lenovo": [{"Memory_SMEE": "Enabled"},
               {"Processors_SEV_SNPSupport": "Enabled", "Memory_SEV_ESASIDSpaceLimit": 100},
               {"Processors_SNPMemoryRMPTableCoverage": "Enabled"}],
    "supermicro": [{"SMEE#003E": "Enabled"}, {"SEV-SNPSupport#01A7": "Enabled", "SEV-ESASIDSpaceLimit#700C": 100},
                   {"SNPMemory(RMPTable)Coverage#003C": "Enabled"}],
    "generic": [{"CbsCmnCpuSmee": "CbsCmnCpuSmeeEnabled"},
                {"CbsSevSnpSupport": "CbsSevSnpSupportEnable", "CbsCmnCpuSevAsidSpaceLimit": 100},
                {"CbsDbgCpuSnpMemCover": "CbsDbgCpuSnpMemCoverEnabled"}],
}


def _system(lab, node):
    address = lab.nodes[node]["bmc_address"]
    user, password = service.credentials(lab.dir, node)
    conn = sushy.Sushy(f"https://{address}/redfish/v1", auth=sushy.auth.BasicAuth(user, password),
                       verify=str(service.ca_bundle(lab.dir)))
    return conn.get_system()


def test_every_node_has_its_bmc_on_its_management_address(lab):
    bmcs = {s.node: s for s in service.status(lab.dir)}
    for node, info in lab.nodes.items():
        assert bmcs[node].listening, node
        assert bmcs[node].url == f"https://{info['bmc_address']}"
        system = _system(lab, node)
        vendor = info["bmc_vendor"]
        assert system.manufacturer == load_personality(vendor).identity.manufacturer
        assert system.power_state == sc.PowerState.ON  # read from the running node


def test_redfish_force_restart_really_reboots_the_node(lab):
    node = lab.node_of_profile("plain")
    before = lab.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout
    _system(lab, node).reset_system(sc.ResetType.FORCE_RESTART)
    time.sleep(1)
    lab.wait_ssh(node)
    assert lab.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout != before
    assert _system(lab, node).power_state == sc.PowerState.ON


def test_enabling_snp_through_redfish_turns_snp_on_in_the_node(lab):
    from ccfactory.lab import manager

    # nodes must read their BIOS state from their BMC for this test (the session default
    # is the local platform.json that core tests set directly)
    manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source="bmc")
    node = lab.node_of_profile("amd-snp-hgx")
    vendor = lab.nodes[node]["bmc_vendor"]
    reset_bios(lab.dir, node)  # factory BIOS, whatever an earlier session left
    _system(lab, node).reset_system(sc.ResetType.FORCE_RESTART)
    time.sleep(1)
    lab.wait_ssh(node)
    assert lab.ssh(node, "cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip() == "N"
    apply_time = sushy.ApplyTime.ON_RESET if load_personality(vendor).paths.jobs else None
    try:
        for stage in SNP_STAGES[vendor]:
            system = _system(lab, node)
            system.bios.set_attributes(stage, apply_time=apply_time)
            system.reset_system(sc.ResetType.FORCE_RESTART)
            time.sleep(1)
            lab.wait_ssh(node)
        assert lab.ssh(node, "cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip() == "Y"
    finally:  # leave the node as the other lab tests expect it: factory BIOS, local source
        reset_bios(lab.dir, node)
        _system(lab, node).reset_system(sc.ResetType.FORCE_RESTART)
        time.sleep(1)
        lab.wait_ssh(node)
        manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source="local")
