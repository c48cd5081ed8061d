"""A lab node's boot config, parsed as update-grub and kmod would."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccfactory.lab.bootconfig import (
    BootConfig,
    grub_cmdline,
    modprobe_files,
    parse_modprobe,
    parse_shell_assignments,
    read_boot_config,
)
from ccfactory.lab.rootfs import DEFAULT_GRUB

BASE = "BOOT_IMAGE=/boot/vmlinuz ro"


def test_debian_default_grub():
    assert grub_cmdline(BASE, DEFAULT_GRUB, []) == f"{BASE} quiet"


@pytest.mark.parametrize(
    "dropin, expected",
    [
        ('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt"', "quiet iommu=pt"),
        ("GRUB_CMDLINE_LINUX_DEFAULT=\"${GRUB_CMDLINE_LINUX_DEFAULT} kvm_intel.tdx=1 nohibernate\"", "quiet kvm_intel.tdx=1 nohibernate"),
        ('GRUB_CMDLINE_LINUX="amd_iommu=on"', "amd_iommu=on quiet"),  # LINUX comes before LINUX_DEFAULT
        ("GRUB_CMDLINE_LINUX_DEFAULT='iommu=pt $NOT_EXPANDED'", "iommu=pt $NOT_EXPANDED"),
        ("export GRUB_CMDLINE_LINUX_DEFAULT=splash", "splash"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="quiet \\\n  iommu=pt"', "quiet iommu=pt"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="a"; GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT b"', "a b"),
        ("# GRUB_CMDLINE_LINUX_DEFAULT=commented\n", "quiet"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="x" echo not-an-assignment', "quiet"),  # env for a command only
        ('GRUB_CMDLINE_LINUX_DEFAULT="$(cat /proc/cmdline) y"', "y"),  # command substitution: not run
        ('GRUB_CMDLINE_LINUX_DEFAULT="${UNSET:-dflt} z"', "dflt z"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="say \\"hi\\""', 'say "hi"'),
    ],
)
def test_grub_dropins(dropin, expected):
    assert grub_cmdline(BASE, DEFAULT_GRUB, [dropin]) == f"{BASE} {expected}"


def test_dropins_apply_in_order_after_the_main_file():
    a = 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT a"'
    b = 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT b"'
    assert grub_cmdline(BASE, DEFAULT_GRUB, [a, b]) == f"{BASE} quiet a b"


def test_no_grub_files_gives_the_base_cmdline():
    assert grub_cmdline(BASE, None, []) == BASE


def test_shell_parser_keeps_earlier_values():
    env = parse_shell_assignments("A=1\nB=$A$A\nC=\"$B-x\"\n")
    assert env == {"A": "1", "B": "11", "C": "11-x"}


def test_modprobe_options_blacklist_install():
    cfg = parse_modprobe(
        [
            "# comment\noptions kvm_amd sev_snp=0 sev=1\nblacklist nouveau\n",
            "options vfio-pci ids=10de:2330,10de:22a3 disable_idle_d3=1\ninstall nvidia /bin/false\n",
            "options kvm_amd sev_snp=1\n",  # later files win
        ]
    )
    assert cfg.options["kvm_amd"] == {"sev_snp": "1", "sev": "1"}
    assert cfg.options["vfio_pci"]["ids"] == "10de:2330,10de:22a3"
    assert cfg.blacklist == {"nouveau"} and cfg.disabled == {"nvidia"}


def test_boot_config_params_and_blacklists():
    b = BootConfig("ro kvm-amd.sev_snp=0 modprobe.blacklist=nouveau,nvidia", parse_modprobe(["options kvm_amd sev_snp=1"]))
    assert b.module_param("kvm_amd", "sev_snp") == "0"
    assert b.module_blocked("nouveau") and b.module_blocked("nvidia") and not b.module_blocked("kvm_amd")


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_read_boot_config_from_a_root(tmp_path):
    _write(tmp_path, "etc/default/grub", DEFAULT_GRUB)
    _write(tmp_path, "etc/default/grub.d/50-cc.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt"')
    _write(tmp_path, "etc/default/grub.d/ignored.txt", 'GRUB_CMDLINE_LINUX_DEFAULT="nope"')
    _write(tmp_path, "etc/modprobe.d/kvm.conf", "options kvm_amd sev_snp=0\n")
    _write(tmp_path, "usr/lib/modprobe.d/kvm.conf", "options kvm_amd sev_snp=1\n")  # hidden by /etc
    _write(tmp_path, "usr/lib/modprobe.d/aa.conf", "blacklist nouveau\n")
    _write(tmp_path, "etc/ccfactory/vfio-pci.conf", "0000:18:00.0\n10de:22a3  # nvswitches\n")
    b = read_boot_config(tmp_path, BASE)
    assert b.cmdline == f"{BASE} quiet iommu=pt"
    assert b.module_param("kvm_amd", "sev_snp") == "0"
    assert b.module_blocked("nouveau")
    assert b.vfio_bdfs() == {"0000:18:00.0"} and b.vfio_ids() == {"10de:22a3"}
    assert "/etc/default/grub.d/50-cc.cfg" in b.files
    assert [p.name for p in modprobe_files(tmp_path)] == ["aa.conf", "kvm.conf"]
