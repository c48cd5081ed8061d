"""nvidia-smi and /proc/driver/nvidia parsers, on the real H100/H200 recordings (driver 580.159.04)."""

from __future__ import annotations

import pytest
from support import FIXTURES

from ccfactory.parsers.nvidia import (
    parse_conf_compute,
    parse_nvidia_smi_list,
    parse_nvidia_smi_q,
    parse_proc_gpu_information,
    parse_query_gpu_csv,
)

H100 = FIXTURES / "nvidia-h100-real"
H200 = FIXTURES / "nvidia-h200-real"


def recording(path):
    if not path.is_file():
        pytest.fail(f"recording {path} is missing: tests/fixtures is part of the repository")
    return path.read_text()


def _csv_block(text: str) -> str:
    """The --query-gpu CSV as recorded: the header line and the rows after it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name, pci.bus_id"))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.startswith(("$ ", "[rc=")):
            break
        block.append(line)
    return "\n".join(block)


# ------------------------------------------------------------------ conf-compute


@pytest.mark.parametrize(
    ("path", "name", "unprotected", "key_rotation"),
    [
        (H100 / "conf-compute.txt", "NVIDIA H100 80GB HBM3", 83024896, None),  # -gkr is in conf-compute-2.txt
        (H200 / "conf-compute.txt", "NVIDIA H200", 146591680, 60),
    ],
)
def test_conf_compute_every_query_as_recorded(path, name, unprotected, key_rotation):
    cc = parse_conf_compute(recording(path))
    assert cc.cc_status == "OFF" and cc.cc_on is False
    # -grs says "not-ready", -q says "Not Ready": both recorded, both mean not ready
    assert cc.gpus_ready is False
    assert cc.environment == "UNAVAILABLE" and cc.production is False
    assert cc.devtools_mode == "OFF"
    assert cc.multi_gpu_mode == "None"
    assert cc.cpu_caps == "None"
    assert cc.gpu_caps == "CC Capable"
    assert cc.key_rotation_attacker_advantage == key_rotation
    [mem] = cc.memory
    assert (mem.index, mem.name, mem.protected_kib, mem.unprotected_kib) == (0, name, 0, unprotected)
    assert mem.uuid.startswith("GPU-")


def test_conf_compute_single_queries_keep_unprinted_fields_unknown():
    text = recording(H100 / "conf-compute-2.txt")
    cc = parse_conf_compute(text)
    assert cc.cpu_caps == "None" and cc.gpu_caps == "CC Capable"
    assert cc.key_rotation_attacker_advantage == 60
    assert cc.cc_status is None and cc.cc_on is None and cc.gpus_ready is None


def test_conf_compute_ready_grs_line_alone():
    cc = parse_conf_compute("\nConfidential Compute GPUs Ready state: not-ready\n\n")
    assert cc.ready_state == "not-ready" and cc.gpus_ready is False


def test_conf_compute_q_section_alone():
    text = recording(H200 / "conf-compute.txt")
    q = text[text.index("NVSMI CONF-COMPUTE LOG") :].split("[rc=0]")[0]
    cc = parse_conf_compute(q)
    assert (cc.cc_status, cc.ready_state, cc.multi_gpu_mode, cc.gpu_caps) == ("OFF", "Not Ready", "None", "CC Capable")
    assert cc.gpus_ready is False


def test_conf_compute_help_text_is_ignored():
    text = recording(H100 / "conf-compute.txt")
    help_part = text.split("$ nvidia-smi conf-compute -f")[0]
    assert parse_conf_compute(help_part) == parse_conf_compute("")


# ------------------------------------------------------------------ nvidia-smi -q


@pytest.mark.parametrize(
    ("path", "product", "devid", "vbios", "serial"),
    [
        (H100 / "nvidia-smi-q.txt", "NVIDIA H100 80GB HBM3", "2330", "96.00.DA.00.0C", "1652824033605"),
        (H200 / "nvidia-smi-q.txt", "NVIDIA H200", "2335", "96.00.A5.00.1A", "1653724025738"),
    ],
)
def test_nvidia_smi_q(path, product, devid, vbios, serial):
    log = parse_nvidia_smi_q(recording(path))
    assert (log.driver_version, log.cuda_version, log.attached_gpus) == ("580.159.04", "13.0", 1)
    [gpu] = log.gpus
    assert gpu.bus_id == "00000000:00:06.0" and gpu.bdf == "0000:00:06.0"
    assert gpu.product_name == product and gpu.architecture == "Hopper"
    assert gpu.device_id == devid and gpu.vendor_id == "10de"
    assert gpu.vbios_version == vbios and gpu.serial == serial
    assert gpu.uuid.startswith("GPU-")
    assert gpu.virtualization_mode == "Pass-Through"
    assert gpu.cc_protected_memory_total == "0 MiB"
    # nested sections are addressed by path
    assert gpu.get("PCI/GPU Link Info/PCIe Generation/Max") == "5"
    assert gpu.get("ECC Errors/Aggregate/SRAM Threshold Exceeded") == "No"
    assert gpu.get("GSP Firmware Version") == "580.159.04"
    assert gpu.get("Processes") == "None"


def test_nvidia_smi_q_model_lookup_through_gpu_table():
    from ccfactory.gpus import gpu_by_device_id

    for path, model in ((H100 / "nvidia-smi-q.txt", "H100"), (H200 / "nvidia-smi-q.txt", "H200")):
        gpu = parse_nvidia_smi_q(recording(path)).gpus[0]
        assert gpu_by_device_id(gpu.device_id).model == model


def test_nvidia_smi_q_several_gpus():
    one = recording(H100 / "nvidia-smi-q.txt")
    head, _, block = one.partition("GPU 00000000:00:06.0\n")
    block = block.split("[rc=0]")[0]
    two = head + "GPU 00000000:00:06.0\n" + block + "GPU 00000000:00:07.0\n" + block
    log = parse_nvidia_smi_q(two)
    assert [g.bdf for g in log.gpus] == ["0000:00:06.0", "0000:00:07.0"]
    assert log.gpus[1].product_name == "NVIDIA H100 80GB HBM3"


# ------------------------------------------------------------------ nvidia-smi -L, --query-gpu, /proc


def test_nvidia_smi_list():
    [gpu] = parse_nvidia_smi_list(recording(H100 / "nvidia-smi-L.txt"))
    assert (gpu.index, gpu.name, gpu.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-9546e258-1567-6bb6-1e71-62c876244be2")


@pytest.mark.parametrize(
    ("path", "name", "devid", "vbios"),
    [
        (H100 / "conf-compute.txt", "NVIDIA H100 80GB HBM3", "2330", "96.00.DA.00.0C"),
        (H200 / "conf-compute.txt", "NVIDIA H200", "2335", "96.00.A5.00.1A"),
    ],
)
def test_query_gpu_csv(path, name, devid, vbios):
    [row] = parse_query_gpu_csv(_csv_block(recording(path)))
    assert row.get("name") == name and row.device_id == devid and row.bdf == "0000:00:06.0"
    assert row.get("driver_version") == "580.159.04" and row.get("vbios_version") == vbios


def test_proc_driver_gpu_information():
    info = parse_proc_gpu_information(recording(H200 / "proc-driver-gpus.txt").splitlines())
    assert info.model == "NVIDIA H200"
    assert info.uuid == "GPU-58ca22cc-fdd4-dae5-1509-f57387200af8"
    assert info.video_bios == "96.00.a5.00.1a"
    assert info.bdf == "0000:00:06.0"
    assert info.firmware == "580.159.04"
    assert info.excluded is False
    assert info.get("Bus Type") == "PCIe" and info.get("DMA Mask") == "0xfffffffffffff"
