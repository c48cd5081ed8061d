"""SEV-SNP launch measurements with the pinned sev-snp-measure, matched to upstream's published values.

Expected digests: virtee/sev-snp-measure v0.0.13 ``tests/test_guest.py`` (line cited per case),
for the same inputs; the OVMF file is upstream's fixture (tests/fixtures/sev-snp-measure/SOURCES.md).
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from ccfactory.roles.kbs import snp_measure as sm
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "sev-snp-measure"
OVMF = str(FIXTURES / "ovmf_AmdSev_suffix.bin")
OVMF_X64 = str(FIXTURES / "ovmf_OvmfX64_suffix.bin")
OVMF_HASH = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"


@pytest.mark.parametrize(("launch", "expected", "line"), [
    (sm.SnpLaunch(OVMF, "/dev/null", "/dev/null", "console=ttyS0 loglevel=7", 1, guest_features=0x21),
     "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977", 163),
    (sm.SnpLaunch(OVMF, "/dev/null", "/dev/null", "console=ttyS0 loglevel=7", 1),  # guest features 0x1: Kata CI's
     "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa", 178),
    (sm.SnpLaunch(OVMF, "/dev/null", "/dev/null", "", 4),
     "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5", 238),
    (sm.SnpLaunch(OVMF, "/dev/null", "/dev/null", "", 4, guest_features=0x21),
     "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942", 223),
    (sm.SnpLaunch(OVMF, "/dev/null", "/dev/null", "console=ttyS0 loglevel=7", 1, ovmf_hash=OVMF_HASH),
     "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa", 68),
])  # fmt: skip
def test_measurement_matches_upstreams_published_value(launch, expected, line):
    assert sm.measure(launch) == expected, f"sev-snp-measure@v0.0.13:tests/test_guest.py:{line}"


def test_an_empty_initrd_path_is_measured_as_an_empty_initrd():
    """Kata guests with an ``image`` have no -initrd; sev-snp-measure hashes it as empty, as /dev/null."""
    with_null = sm.SnpLaunch(OVMF, "/dev/null", "/dev/null", "", 4)
    assert sm.measure(sm.SnpLaunch(OVMF, "/dev/null", "", "", 4)) == sm.measure(with_null)


def test_pinned_version_is_the_boms_and_pyprojects():
    bom = tomllib.loads((ROOT / "src" / "ccfactory" / "bom" / "bom.toml").read_text())
    entry = next(a for a in bom["artifact"] if a["name"] == "sev-snp-measure")
    assert metadata.version("sev-snp-measure") == entry["version"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"sev-snp-measure=={entry['version']}" in pyproject["project"]["dependencies"]


def test_firmware_without_kernel_hashes_is_refused_with_a_reason():
    with pytest.raises(sm.MeasureError, match="refused"):
        sm.measure(sm.SnpLaunch(OVMF_X64, "/dev/null", "", "console=hvc0", 1))


def test_unreadable_input_is_named():
    with pytest.raises(sm.MeasureError, match="cannot read /nonexistent/vmlinuz"):
        sm.measure(sm.SnpLaunch(OVMF, "/nonexistent/vmlinuz", "", "", 1))


def test_bad_vcpu_type_and_count():
    with pytest.raises(sm.MeasureError, match="unknown vCPU type"):
        sm.measure(sm.SnpLaunch(OVMF, "/dev/null", "", "", 1, vcpu_type="EPYC-v99"))
    with pytest.raises(sm.MeasureError, match="at least 1"):
        sm.measure(sm.SnpLaunch(OVMF, "/dev/null", "", "", 0))


# ------------------------------------------------------------------ learned from the runtime's log

APPEND = ('tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 '
          'i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests net.ifnames=0 pci=lastbus=0 root=/dev/vda1 '
          'rootflags=ro rootfstype=ext4 console=hvc0 console=hvc1 quiet panic=1 selinux=0 '
          'dm-mod.create="dm-verity,,,ro,0 736328 verity 1 /dev/vda1 /dev/vda2 4096 4096 92041 0 sha256 abc 0"')  # fmt: skip


def journal_line(kernel: str, firmware: str, append: str, smp: str = "2,cores=1,threads=1,sockets=2,maxcpus=2") -> str:
    """A Kata runtime journal line in logrus' logfmt: msg quoted, inner quotes escaped; the
    message is ``launching <qemu> with: [<args>]`` (qemu.go:3591, ``%v`` of a []string)."""
    args = ["-name", "sandbox-0123", "-machine", "q35,accel=kvm,confidential-guest-support=snp", "-cpu", "EPYC-v4",
            "-m", "2048M", "-object", "sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=196608",
            "-kernel", kernel, "-append", append, "-bios", firmware, "-pidfile", "/run/vc/vm/x/pid",
            "-smp", smp]  # fmt: skip
    msg = f"launching /opt/kata/bin/qemu-system-x86_64 with: [{' '.join(args)}]".replace('"', '\\"')
    return f'time="2026-12-07T01:00:00Z" level=info msg="{msg}" name=containerd-shim-v2 pid=42 source=virtcontainers subsystem=qmp\n'


def test_launch_from_the_runtime_log_reads_every_input_and_unescapes_quotes(tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"a kernel")
    log = "noise\n" + journal_line("/old/kernel", OVMF, "old") + journal_line(str(kernel), OVMF, APPEND)
    launch = sm.launch_from_log(log)
    assert (launch.kernel, launch.ovmf, launch.vcpus, launch.initrd) == (str(kernel), OVMF, 2, "")
    assert launch.append == APPEND  # the newest line; dm-mod.create quotes unescaped
    assert launch.origins["append"] == sm.FROM_LOG and launch.origins["vcpu_type"] == sm.FROM_UPSTREAM
    direct = sm.SnpLaunch(OVMF, str(kernel), "", APPEND, 2)
    assert sm.measure(launch) == sm.measure(direct)
    assert sm.measure(launch) != sm.measure(sm.SnpLaunch(OVMF, str(kernel), "", APPEND.replace(" quiet", ""), 2))


def test_no_launch_line_says_what_to_do():
    with pytest.raises(sm.MeasureError, match="smoke check"):
        sm.launch_from_log("nothing here\n")


SNP_CONFIG = """
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinuz-confidential.container"
image = "/opt/kata/share/kata-containers/kata-containers-confidential.img"
firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
confidential_guest = true
sev_snp_guest = true
default_vcpus = 1
"""
DROPIN = """
[hypervisor.qemu]
default_vcpus = 2
firmware = "%s"
kernel = "%s"
"""


def test_launch_from_config_takes_files_and_vcpus_from_the_config_and_the_command_line_from_the_log(tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"a kernel")
    config = sm.effective_kata_config(SNP_CONFIG, [DROPIN % (OVMF, kernel)])
    assert config["hypervisor"]["qemu"]["image"].endswith(".img")  # kept from the main file
    launch = sm.launch_from_config(config, journal_line(str(kernel), OVMF, APPEND))
    assert (launch.vcpus, launch.kernel, launch.initrd, launch.append) == (2, str(kernel), "", APPEND)
    assert launch.origins["vcpus"] == sm.FROM_CONFIG and launch.origins["append"] == sm.FROM_LOG
    with pytest.raises(sm.MeasureError, match="vcpus=1.*says 2"):  # a log of an older configuration
        sm.launch_from_config(config, journal_line(str(kernel), OVMF, APPEND, smp="1,maxcpus=1"))


def test_launch_from_config_refuses_a_non_snp_config():
    with pytest.raises(sm.MeasureError, match="not an SNP guest"):
        sm.launch_from_config(sm.effective_kata_config(SNP_CONFIG.replace("sev_snp_guest = true", "")), "")


def test_shell_command_is_the_upstream_cli():
    text = sm.shell_command(sm.SnpLaunch(OVMF, "/k", "", "a b", 2))
    assert text.startswith("sev-snp-measure --mode=snp --vcpus=2 --vcpu-type=EPYC-v4 --guest-features=0x1 ")
    assert "'--append=a b'" in text


def test_launch_from_config_skips_other_shims_launches(tmp_path):
    """The GPU shim's guest (another kernel) launched last; the CPU shim's line is older."""
    kernel, gpu_kernel = tmp_path / "vmlinuz", tmp_path / "vmlinuz-nvidia-gpu"
    kernel.write_bytes(b"a kernel")
    gpu_kernel.write_bytes(b"a gpu kernel")
    config = sm.effective_kata_config(SNP_CONFIG, [DROPIN % (OVMF, kernel)])
    log = journal_line(str(kernel), OVMF, APPEND) + journal_line(str(gpu_kernel), OVMF, APPEND + " nvidia.x=1")
    assert sm.launch_from_config(config, log).append == APPEND
