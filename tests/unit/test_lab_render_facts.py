"""Contract between the lab renderer and the project's facts: what the lab renders, the
facts read back as a real host's state (SNP/TDX active or not, GPUs on vfio-pci)."""

from __future__ import annotations

import pytest

from ccfactory.lab.bootconfig import BootConfig, parse_modprobe
from ccfactory.lab.hwprofile import load_profile
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.render import RenderInput, render
from support import materialize, run_fact_command

facts_tee = pytest.importorskip("ccfactory.facts.tee")
facts_gpu = pytest.importorskip("ccfactory.facts.gpu")
facts_kernel = pytest.importorskip("ccfactory.facts.kernel")
sections = pytest.importorskip("ccfactory.parsers.sections")


AMD = load_profile("amd-snp-hgx")
SNP_ON = PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)


@pytest.mark.parametrize("extra, active", [("", True), (" iommu=pt", False)])
def test_snp_fact_reads_the_rendered_host(tmp_path, extra, active):
    root = tmp_path / "root"
    materialize(render(RenderInput("n", AMD, SNP_ON, BootConfig(AMD.kernel["cmdline"] + extra))), root)
    out = run_fact_command(facts_tee.tee_command(str(root)), tmp_path)
    snp = facts_tee.TeeHostStatus().process(out).snp
    assert snp.sev_snp is active
    assert snp.dev_sev
    if not active:
        assert any("passthrough" in str(c) for c in snp.failed)


def test_tdx_fact_reads_the_rendered_host(tmp_path):
    p = load_profile("intel-tdx")
    on = PlatformFeatures(tme=True, tme_mt=True, tdx=True, seam_loader=True, tdx_key_split=1)
    root = tmp_path / "root"
    materialize(render(RenderInput("n", p, on, BootConfig(p.kernel["cmdline"] + " kvm_intel.tdx=1"))), root)
    tdx = facts_tee.TeeHostStatus().process(run_fact_command(facts_tee.tee_command(str(root)), tmp_path)).tdx
    assert tdx.tdx and tdx.module_initialized


def test_gpu_and_iommu_facts_read_the_rendered_pci_tree(tmp_path):
    boot = BootConfig(AMD.kernel["cmdline"], parse_modprobe(["options vfio-pci ids=10de:2330,10de:22a3"]))
    root = tmp_path / "root"
    materialize(render(RenderInput("n", AMD, SNP_ON, boot)), root)
    devs = facts_gpu.NvidiaGpus().process(run_fact_command(facts_gpu.nvidia_gpus_command(str(root)), tmp_path))
    assert devs.models() == {"H100"}
    assert devs.drivers() == {"vfio-pci"}
    groups = facts_kernel.IommuGroups().process(run_fact_command(facts_kernel.iommu_groups_command(str(root)), tmp_path))
    assert groups.enabled and not groups.passthrough
