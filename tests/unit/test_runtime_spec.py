"""Runtime stage decisions (pure): shims, containerd choice, Kata requirements, kernel params."""

from __future__ import annotations

import pytest

from ccfactory.coco import spec


def test_shims_by_tee_and_gpus():
    assert spec.shims_for("snp", False) == ("qemu-snp",)
    assert spec.shims_for("tdx", True) == ("qemu-tdx", "qemu-nvidia-gpu-tdx")
    assert spec.shims_for("none", True) == ()


def test_gpu_shim_on_a_node_without_gpus_is_a_problem():
    shims, problems = spec.select_shims("tdx", 0, 0, ("qemu-tdx", "qemu-nvidia-gpu-tdx"))
    assert problems and "GPU shim qemu-nvidia-gpu-tdx requested on a node without GPUs" in problems[0]
    _, problems = spec.select_shims("snp", 8, 0, ("qemu-nvidia-gpu-snp",))
    assert "0 NVIDIA GPU(s) found" in problems[0]
    _, problems = spec.select_shims("snp", 8, 8, ("qemu-tdx", "qemu-foo"))
    assert any("needs a TDX node" in p for p in problems) and any("unknown Kata shim" in p for p in problems)
    assert spec.select_shims("snp", 8, 8, None) == (("qemu-snp", "qemu-nvidia-gpu-snp"), [])


@pytest.mark.parametrize(
    "text,expected",
    [("1.6.20~ds1", (1, 6, 20)), ("v2.3.5", (2, 3, 5)), ("containerd://2.2.0", (2, 2, 0)), ("2.2", (2, 2, 0)), ("x", None)],
)
def test_parse_version(text, expected):
    assert spec.parse_version(text) == expected


def test_kata_requirement_sources():
    # 4.1.0's own versions.yaml (externals.containerd.minimum), not a PR merged after the tag
    req = spec.kata_requirement("4.1.0")
    assert req.min_containerd == "1.7" and "4.1.0:versions.yaml" in req.source
    assert spec.kata_requirement("4.2.0").min_containerd == "2.2"
    assert spec.kata_requirement("4.9.9").min_containerd == "1.7"  # by major
    req = spec.kata_requirement("4.1.0-ccfactory-lab.1", {"containerd": "1.6"})
    assert req.min_containerd == "1.6" and "own metadata" in req.source


def test_containerd_choice():
    keep = spec.choose_containerd("1.6.20", "1.6.20", "2.3.5", "", "1.6", "kata")
    assert keep.action == "keep" and keep.config_version == 2 and not keep.drop_in
    distro = spec.choose_containerd(None, "2.2.1", "2.3.5", "", "2.2", "kata")
    assert distro.action == "distro" and distro.config_version == 3 and distro.drop_in
    bom = spec.choose_containerd("1.6.20", "1.6.20", "2.3.5", "", "2.2", "kata-static 4.1.0")
    assert bom.action == "bom" and bom.version == "2.3.5" and bom.drop_in
    fail = spec.choose_containerd("1.6.20", "1.6.20", None, "the BOM's containerd could not be fetched: x", "2.2", "kata-static 4.1.0")
    assert fail.action == "fail"
    assert "kata-static 4.1.0 needs containerd >= 2.2: installed 1.6.20, the distribution offers 1.6.20" in fail.problems[0]
    assert "nothing was changed" in fail.problems[0]
    # a newer static containerd is never downgraded through apt
    assert spec.choose_containerd("2.3.5", "1.6.20", "2.3.5", "", "2.2", "k").action == "keep"


def test_kernel_params_keep_upstream_and_add_ours():
    up = "cgroup_no_v1=all pci=realloc pci=nocrs pci=assign-busses nvrc.smi.srs=1"
    merged = spec.merged_kernel_params(up, ("agent.aa_kbc_params=cc_kbc::https://k", "nvrc.smi.srs=0"))
    assert merged.split() == ["cgroup_no_v1=all", "pci=realloc", "pci=nocrs", "pci=assign-busses",
                              "agent.aa_kbc_params=cc_kbc::https://k", "nvrc.smi.srs=0"]


def test_shim_settings_gpu_guests_get_more_time_and_memory():
    d = spec.KataDefaults()
    cpu, gpu = spec.shim_settings("qemu-snp", d), spec.shim_settings("qemu-nvidia-gpu-snp", d)
    assert gpu.dial_timeout >= 1200 and gpu.create_container_timeout >= 1200 and gpu.default_memory > cpu.default_memory
    assert gpu.firmware.endswith("AMDSEV.fd") and "cc_init_data" in gpu.enable_annotations
    assert spec.shim_settings("qemu-tdx", d).firmware.endswith("OVMF.inteltdx.fd")
