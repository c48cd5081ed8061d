"""Kernel command line, /proc/modules, modprobe.d, sysfs values, kernel versions and minimums."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccfactory.roles.host.kernels import check_host_kernel, kernel_minimums
from ccfactory.parsers.checks import failed
from ccfactory.parsers.kernel import (
    kernel_version,
    parse_cmdline,
    parse_modprobe_d,
    parse_param_bool,
    parse_path_values,
    parse_proc_modules,
)

# ------------------------------------------------------------------ /proc/cmdline


def test_cmdline_tokens_values_and_init_args():
    # shape of a real /proc/cmdline (this build host's, shortened): init arguments after "--"
    cl = parse_cmdline(
        "mitigations=auto,no_guest_host console=ttyS0 quiet nomodule rdinit=/process_api"
        " -- --firecracker-init --addr 0.0.0.0:2024\n"
    )
    assert cl.tokens == ("mitigations=auto,no_guest_host", "console=ttyS0", "quiet", "nomodule", "rdinit=/process_api")
    assert cl.init_args == ("--firecracker-init", "--addr", "0.0.0.0:2024")
    assert cl.value("console") == "ttyS0" and cl.has("quiet") and cl.value("quiet") is None
    assert not cl.has("--addr")


def test_cmdline_module_params_dash_underscore_and_last_wins():
    cl = parse_cmdline("kvm-amd.sev_snp=0 iommu=pt kvm_amd.sev-snp=1 iommu=nopt")
    assert cl.module_param("kvm_amd", "sev_snp") == "1"
    assert cl.values("iommu") == ("pt", "nopt") and cl.value("iommu") == "nopt"
    assert cl.has_token("iommu=pt") and not cl.has_token("iommu=off")


def test_cmdline_quotes_and_blacklist():
    cl = parse_cmdline('BOOT_IMAGE=/boot/vmlinuz ro "dyndbg=file drivers/x.c +p" modprobe.blacklist=nouveau,nvidia_drm')
    assert cl.value("dyndbg") == "file drivers/x.c +p"
    assert cl.modprobe_blacklist == frozenset({"nouveau", "nvidia_drm"})


@given(st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,8}(=[a-zA-Z0-9,./:]{0,8})?", fullmatch=True), max_size=12))
def test_cmdline_roundtrip_of_plain_tokens(tokens):
    assert parse_cmdline(" ".join(tokens)).tokens == tuple(tokens)


# ------------------------------------------------------------------ /proc/modules, modprobe.d, sysfs


def test_proc_modules():
    mods = parse_proc_modules(
        [
            "kvm_amd 217088 0 - Live 0x0000000000000000",
            "kvm 1400832 1 kvm_amd, Live 0x0000000000000000",
            "vfio_pci 16384 0 - Live 0x0000000000000000",
            "nvidia 1234 2 nvidia_uvm,nvidia_modeset, Live 0x0000000000000000 (POE)",
            "garbage",
        ]
    )
    assert [m.name for m in mods] == ["kvm_amd", "kvm", "vfio_pci", "nvidia"]
    assert mods[1].used_by == ("kvm_amd",) and mods[3].used_by == ("nvidia_uvm", "nvidia_modeset")
    assert mods[0].state == "Live" and mods[0].size == 217088


def test_modprobe_d_directives_continuations_and_overrides():
    files = [
        ("/lib/modprobe.d/nvidia.conf", "blacklist nvidia\n"),
        ("/etc/modprobe.d/nvidia.conf", "# same name in /etc replaces /lib\noptions nvidia NVreg_X=1\n"),
        (
            "/etc/modprobe.d/vfio.conf",
            "options vfio-pci ids=10de:2330,10de:22a3 \\\n   disable_vga=1\nsoftdep nouveau pre: vfio-pci\n"
            "softdep nvidia pre: vfio-pci\nblacklist nouveau\ninstall nvidia_drm /bin/false\n",
        ),
    ]
    cfg = parse_modprobe_d(files)
    assert cfg.files == ("/etc/modprobe.d/nvidia.conf", "/etc/modprobe.d/vfio.conf")
    assert not cfg.is_blacklisted("nvidia") and cfg.is_blacklisted("nouveau")
    assert cfg.option("vfio-pci", "ids") == "10de:2330,10de:22a3" and cfg.option("vfio_pci", "disable_vga") == "1"
    assert cfg.option("nvidia", "NVreg_X") == "1"
    assert ("nouveau", "pre: vfio-pci") in cfg.softdeps
    assert cfg.install_command("nvidia-drm") == "/bin/false"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("Y", True), ("N", False), ("1", True), ("0", False), ("y\n", True), ("", None), (None, None), ("maybe", None)],
)
def test_param_bool(raw, value):
    assert parse_param_bool(raw) is value


def test_path_values():
    assert parse_path_values(["/sys/module/kvm_amd/parameters/sev_snp=Y", "junk", "x=1"]) == {
        "/sys/module/kvm_amd/parameters/sev_snp": "Y"
    }


# ------------------------------------------------------------------ versions and minimums


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.8.0-45-generic", (6, 8, 0)),
        ("6.17.0-5-generic", (6, 17, 0)),
        ("6.18.44-fc-v657-gpu", (6, 18, 44)),  # the H100 recording's kernel
        ("6.16.12-amd64", (6, 16, 12)),
        ("6.16", (6, 16, 0)),
        ("not-a-kernel", None),
    ],
)
def test_kernel_version(release, version):
    assert kernel_version(release) == version


def test_every_minimum_row_has_a_source_and_a_valid_version():
    rows = kernel_minimums()
    assert {r.tee for r in rows} >= {"snp", "tdx"}
    for r in rows:
        assert r.source and r.why and r.level in ("required", "recommended") and r.version


def test_snp_kernel_too_old_fails_with_fix():
    results = check_host_kernel("snp", "6.8.0-45-generic", "ubuntu", "24.04")
    [blocking] = failed(results)
    assert blocking.name == "host_kernel>=6.11"
    assert "6.8.0-45-generic is older than 6.11" in blocking.detail and "snphost" in blocking.detail
    assert "Ubuntu 25.10 and 26.04" in blocking.hint
    assert {r.name for r in results if r.warned} == {"host_kernel>=6.16.1", "host_kernel>=6.17"}


def test_tdx_needs_6_16():
    assert failed(check_host_kernel("tdx", "6.14.0-37-generic", "ubuntu", "24.04"))[0].name == "host_kernel>=6.16"
    results = check_host_kernel("tdx", "6.17.0-5-generic", "ubuntu", "25.10")
    assert all(r.ok for r in results) and len(results) == 2


def test_kernel_fix_for_other_distros_is_generic():
    [blocking] = failed(check_host_kernel("snp", "6.1.0-28-amd64", "debian", "12"))
    assert blocking.hint.startswith("install a kernel >= 6.11")


def test_unreadable_release_is_unknown_not_failed():
    results = check_host_kernel("snp", "weird")
    assert results and all(r.ok is None for r in results) and not failed(results)
