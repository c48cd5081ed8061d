"""TEE facts: ``command`` + ``process(lines)`` as pyinfra tests its facts, and the real shell
command run against a fake root (the lab's case: ``dmesg`` fails, the lab log file is read)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ccfactory.facts.tee import LAB_DMESG, SnpHostStatus, TdxHostStatus, TeeHostStatus, tee_command
from ccfactory.parsers.kernel import parse_cmdline
from ccfactory.parsers.tee import SnpStatus, TdxStatus, TeeStatus

SNP_OUTPUT = """\
### ccfactory:cmdline
BOOT_IMAGE=/boot/vmlinuz-6.17.0-5-generic root=UUID=6b1c ro quiet
### ccfactory:cpuflags
flags\t\t: fpu vme svm sme sev sev_es sev_snp
### ccfactory:modules
kvm_amd 217088 0 - Live 0x0000000000000000
kvm 1400832 1 kvm_amd, Live 0x0000000000000000
### ccfactory:params
/sys/module/kvm_amd/parameters/sev=Y
/sys/module/kvm_amd/parameters/sev_es=Y
/sys/module/kvm_amd/parameters/sev_snp=Y
### ccfactory:devices
/dev/sev
/dev/kvm
### ccfactory:dmesg-source
dmesg
### ccfactory:dmesg
[    0.000000] SEV-SNP: RMP table physical range [0x000000bf7e800000 - 0x000000c03f0fffff]
[    4.300000] ccp 0000:02:00.1: SEV-SNP API:1.55 build:21
[    4.400000] kvm_amd: SEV enabled (ASIDs 100 - 509)
[    4.400000] kvm_amd: SEV-ES enabled (ASIDs 1 - 99)
[    4.400000] kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)
""".splitlines()


def test_command_is_one_string_and_ends_successfully():
    for fact in (TeeHostStatus, SnpHostStatus, TdxHostStatus):
        assert fact.command == tee_command() and fact.command.endswith("; true")
    assert SnpHostStatus.name == "ccfactory.facts.tee.SnpHostStatus"
    assert "/var/log/ccfactory-lab/dmesg" in tee_command()


def test_process_snp_output():
    snp = SnpHostStatus().process(SNP_OUTPUT)
    assert isinstance(snp, SnpStatus) and snp.active and snp.failed == ()
    tee = TeeHostStatus().process(SNP_OUTPUT)
    assert isinstance(tee, TeeStatus) and tee.snp == snp and not tee.tdx.active
    assert tee.cmdline.value("root") == "UUID=6b1c"
    assert isinstance(TdxHostStatus().process(SNP_OUTPUT), TdxStatus)


def test_defaults_are_judged_statuses_not_none():
    assert not SnpHostStatus.default().active and SnpHostStatus.default().failed
    assert not TdxHostStatus.default().active
    assert TeeHostStatus.default().inputs.dmesg_source == "none"


# ------------------------------------------------------------------ the real command on a fake root


def _write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _fake_dmesg(tmp_path: Path, script: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "dmesg").write_text("#!/bin/sh\n" + script)
    (bindir / "dmesg").chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def _run(root: Path, env: dict[str, str]) -> list[str]:
    result = subprocess.run(["sh", "-c", tee_command(str(root))], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def snp_root(tmp_path: Path) -> Path:
    root = tmp_path / "root with space"
    _write(root, "/proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz ro iommu=pt\n")
    _write(
        root,
        "/proc/cpuinfo",
        "processor\t: 0\nflags\t\t: fpu sme sev sev_es sev_snp\nprocessor\t: 1\nflags\t\t: other\n",
    )
    _write(root, "/proc/modules", "kvm_amd 217088 0 - Live 0x0000000000000000\n")
    for name, value in (("sev", "Y"), ("sev_es", "Y"), ("sev_snp", "N")):
        _write(root, f"/sys/module/kvm_amd/parameters/{name}", value + "\n")
    _write(root, "/dev/sev", "")
    _write(
        root,
        LAB_DMESG,
        "[    0.000000] Linux version 6.16.12-amd64\n"
        "[    0.000000] SEV-SNP: RMP table physical range [0x000000bf7e800000 - 0x000000c03f0fffff]\n"
        "[    0.900000] AMD-Vi: SNP: IOMMU disabled or configured in passthrough mode, SNP cannot be supported.\n"
        "[    4.400000] kvm_amd: SEV enabled (ASIDs 100 - 509)\n"
        "[    4.400000] kvm_amd: SEV-ES enabled (ASIDs 1 - 99)\n"
        "[    4.400000] kvm_amd: SEV-SNP disabled (ASIDs 1 - 99)\n"
        "[    4.410000] kvm_amd: Nested Virtualization enabled\n",
    )
    return root


def test_lab_node_where_dmesg_fails_reads_the_lab_log(tmp_path, snp_root):
    # systemd-nspawn: "dmesg: read kernel buffer failed: Operation not permitted"
    env = _fake_dmesg(tmp_path, "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1\n")
    lines = _run(snp_root, env)
    snp = SnpHostStatus().process(lines)
    assert snp.inputs.dmesg_source == LAB_DMESG
    assert "Linux version" not in "\n".join(snp.inputs.dmesg)  # only SEV/SNP/TDX lines come back
    assert snp.inputs.params == {
        "/sys/module/kvm_amd/parameters/sev": "Y",
        "/sys/module/kvm_amd/parameters/sev_es": "Y",
        "/sys/module/kvm_amd/parameters/sev_snp": "N",
    }
    assert snp.inputs.cpu_flags == {"fpu", "sme", "sev", "sev_es", "sev_snp"}  # first flags line only
    assert snp.dev_sev and snp.kvm_amd_loaded and snp.iommu_passthrough_warning
    assert [c.name for c in snp.failed] == ["iommu_not_passthrough", "snp_asids", "kvm_amd_sev_snp"]


def test_real_host_reads_dmesg_not_the_lab_file(tmp_path, snp_root):
    env = _fake_dmesg(
        tmp_path, "echo '[    4.4] kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)'; echo 'usb 1-1: new device'\n"
    )
    snp = SnpHostStatus().process(_run(snp_root, env))
    assert snp.inputs.dmesg_source == "dmesg"
    assert snp.inputs.dmesg == ("[    4.4] kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)",)


def test_dmesg_that_prints_nothing_counts_as_failed(tmp_path, snp_root):
    # a container whose /dev/kmsg reads empty: dmesg exits 0 with no output
    snp = SnpHostStatus().process(_run(snp_root, _fake_dmesg(tmp_path, "exit 0\n")))
    assert snp.inputs.dmesg_source == LAB_DMESG and snp.log.asids


def test_nothing_readable_still_succeeds(tmp_path):
    env = _fake_dmesg(tmp_path, "exit 1\n")
    status = TeeHostStatus().process(_run(tmp_path / "empty", env))
    assert status.inputs.dmesg_source == "none" and status.inputs.params == {}
    assert not status.snp.active and not status.tdx.active


def test_tdx_on_a_fake_root(tmp_path):
    root = tmp_path / "tdx"
    _write(root, "/proc/cmdline", "ro nohibernate kvm_intel.tdx=1\n")
    _write(root, "/proc/modules", "kvm_intel 462848 0 - Live 0x0\n")
    _write(root, "/sys/module/kvm_intel/parameters/tdx", "Y\n")
    _write(
        root,
        LAB_DMESG,
        "[0.62] virt/tdx: BIOS enabled: private KeyID range [64, 128)\n"
        "[4.40] virt/tdx: TDX module: attributes 0x0, vendor_id 0x8086, major_version 1, minor_version 5, "
        "build_date 20230323, build_num 481\n[4.52] virt/tdx: module initialized\n",
    )
    tdx = TdxHostStatus().process(_run(root, _fake_dmesg(tmp_path, "exit 1\n")))
    assert tdx.active and tdx.module_version.build_num == 481


def test_through_pyinfra_on_the_local_machine():
    """The fact as pyinfra runs it (sh -c, quoting) on this machine: it loads, whatever the machine is."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.facts import get_fact

    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    status = get_fact(state, inventory.get_host("@local"), TeeHostStatus)
    assert isinstance(status, TeeStatus)
    assert status.inputs.cmdline == parse_cmdline(Path("/proc/cmdline").read_text())
