"""Distributions as data (``ccfactory/data/distros.toml``): the table, and the commands the host
stage plans for a Debian, an Ubuntu and a RHEL host on pyinfra's ``@fake`` connector.

Only Debian 12 runs in the lab; the Ubuntu and RHEL rows are data whose commands these tests
show (the os-release values are the ones each release ships: ``ID=ubuntu VERSION_ID="24.04"``,
``ID="rhel" VERSION_ID="9.4"``, os-release(5)).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from ccfactory.distros import DistroTableError, distro_for, distros, initramfs_step, parse_distros
from ccfactory.facts.node import NodeOs
from ccfactory.roles.host.facts import host_boot_files_command
from test_role_host import changed, failure_message, op, run_role, upload
from test_role_host_sim import SimNode

SOURCED = ("grub_dropin_dir", "update_bootloader", "update_initramfs", "package_manager")


def test_every_row_cites_a_source_for_each_distribution_specific_field():
    for d in distros():
        assert set(SOURCED) <= set(d.sources), d.id
        assert all(len(d.sources[k]) > 20 for k in SOURCED), d.id


@pytest.mark.parametrize(
    ("os_id", "version", "expected"),
    [
        ("debian", "12", ("update-grub", "update-initramfs -u -k all", "apt", "/etc/default/grub.d/60-ccfactory.cfg")),
        ("ubuntu", "24.04", ("update-grub", "update-initramfs -u -k all", "apt", "/etc/default/grub.d/60-ccfactory.cfg")),
        ("rhel", "9.4", ("grubby --update-kernel=ALL", "dracut --regenerate-all --force", "dnf", "")),
        ("rhel", "10.0", ("grubby --update-kernel=ALL", "dracut --regenerate-all --force", "dnf", "")),
    ],
)
def test_rows(os_id, version, expected):
    d = distro_for(os_id, version)
    assert (d.update_bootloader, d.update_initramfs, d.package_manager, d.grub_dropin) == expected


@pytest.mark.parametrize(("os_id", "version"), [("ubuntu", "22.10"), ("ubuntu", "24"), ("rhel", "8.10"), ("debian", "12.5"), ("rocky", "8.6"), ("almalinux", "8.9")])
def test_unknown_releases_are_not_matched(os_id, version):
    assert distro_for(os_id, version) is None


ROW = """
[[distro]]
id = "x"
versions = ["1"]
version_match = "exact"
family = "x"
cmdline_method = "grub-dropin"
grub_dropin_dir = "/etc/default/grub.d"
update_bootloader = "update-grub"
update_initramfs = "update-initramfs -u -k all"
initramfs_package = "initramfs-tools"
package_manager = "apt"
refresh_index = "apt-get update"
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("package_manager = \"apt\"", "package_manager = \"zypper\""), r"distro\[0\] \(x\): package_manager = 'zypper'; fix: one of apt, dnf"),
        (("grub_dropin_dir = \"/etc/default/grub.d\"", "grub_dropin_dir = \"\""), "grub-dropin needs grub_dropin_dir"),
        (("refresh_index = \"apt-get update\"\n", ""), "missing refresh_index"),
        (("family = \"x\"", "family = \"x\"\nflavour = 1"), r"unknown field\(s\) flavour"),
        (("cmdline_method = \"grub-dropin\"", "cmdline_method = \"grubby\""), "grubby needs bootloader_info"),
        (("refresh_index = \"apt-get update\"", "refresh_index = \"apt-get update\"\npackages = { podman = \"podman\" }"),
         "packages: unknown podman"),
    ],
)
def test_a_bad_row_is_an_error_naming_row_and_field(change, message):
    assert parse_distros(ROW)[0].id == "x"
    with pytest.raises(DistroTableError, match=message):
        parse_distros(ROW.replace(*change))


def test_initramfs_step_never_skips_silently():
    rhel = distro_for("rhel", "9.4")
    assert initramfs_step(rhel, {"dracut"}, ()).command == "dracut --regenerate-all --force"
    missing = initramfs_step(rhel, {"grubby"}, ("/boot/initramfs-5.14.0-427.el9.x86_64.img",))
    assert missing.command is None and "install dracut" in missing.problem
    none = initramfs_step(rhel, set(), ())
    assert none.command is None and none.problem is None and "nothing to regenerate" in none.note


def test_the_boot_files_fact_reads_the_distributions_dropin_directory_only():
    assert "/etc/default/grub.d/*.cfg" in host_boot_files_command("update-grub", grub_d="/etc/default/grub.d")
    rhel = host_boot_files_command("grubby dracut", grub_d="")
    assert "grub.d" not in rhel and "/etc/default/grub" in rhel


# ------------------------------------------------------------------ the host role on @fake hosts


@pytest.mark.parametrize(("os_id", "version"), [("debian", "12"), ("ubuntu", "24.04")])
def test_debian_family_host_gets_the_grub_dropin_and_its_commands(tmp_path, os_id, version):
    node = SimNode(tmp_path, "snp", os_id=os_id, os_version=version, kernel="6.17.0-5-generic")
    ops, _, _ = run_role(node, tmp_path)
    assert "Update the bootloader configuration" in changed(ops)
    assert [str(c) for c in op(ops, "Update the bootloader configuration")[2]] == ["update-grub"]
    assert [str(c) for c in op(ops, "Update the initramfs")[2]] == ["update-initramfs -u -k all"]
    dest, _ = upload(ops, "Kernel command line drop-in")
    assert dest == "/etc/default/grub.d/60-ccfactory.cfg"


def test_rhel_host_with_debians_boot_side_is_refused_with_the_reason_before_any_change(tmp_path):
    # a RHEL os-release on a node with update-grub but no grubby: the grubby row is not guessed around
    node = SimNode(tmp_path, "snp", os_id="rhel", os_version="9.4", kernel="6.17.0-5-generic")
    ops, _, _ = run_role(node, tmp_path)
    assert [o[0] for o in ops] == ["Host ready for its TEE configuration"]
    message = failure_message(ops, "Host ready for its TEE configuration")
    assert "grubby is missing on this rhel host (distros.toml: cmdline_method = grubby" in message
    assert "install dracut" in message and "nothing was changed" in message


def test_package_names_and_the_archive_containerd_are_data():
    rhel, debian, ubuntu = distro_for("rhel", "9.4"), distro_for("debian", "12"), distro_for("ubuntu", "24.04")
    assert rhel.package("containerd") == "" and rhel.package("runc") == "runc" and rhel.package("xz") == "xz"
    assert debian.package("containerd") == "containerd" and debian.package("xz") == "xz-utils"
    assert debian.archive_containerd("12") == "1.6.20" and debian.archive_containerd("13") == ""
    assert ubuntu.archive_containerd("24.04") == "" and rhel.archive_containerd("9.4") == ""
    for d in distros():
        assert {"packages", "containerd_archive"} <= set(d.sources), d.id


def test_boot_tools_fact_is_read_only_and_parses_what_it_finds():
    import subprocess

    from ccfactory.facts.node import BootTools

    command = BootTools().command("sh no-such-tool-ccfactory")
    assert not any(word in command for word in ("apt-get", "dnf", "update-initramfs -u", "dracut -"))  # looks only
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    info = BootTools().process(out)
    assert info.tools == frozenset({"sh"})
    parsed = BootTools().process(["tool=dracut", "image=/boot/initramfs-5.14.0-427.el9.x86_64.img", "noise"])
    assert parsed.tools == {"dracut"} and parsed.initramfs_images == ("/boot/initramfs-5.14.0-427.el9.x86_64.img",)


def test_docstring_examples_of_the_distro_and_templating_modules():
    import doctest

    import ccfactory.distros
    import ccfactory.templating

    for module in (ccfactory.distros, ccfactory.templating):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "distros"


def _os_release_fact(path: Path):
    """The NodeOs fact's own command (it sources /etc/os-release in sh) run on a recorded file."""
    command = NodeOs.command.replace("/etc/os-release", shlex.quote(str(path)))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    return NodeOs().process(out.splitlines())


def test_rocky_and_almalinux_are_rhel_rebuilds_by_data_read_from_their_recorded_os_release():
    alma = _os_release_fact(FIXTURES / "almalinux9-os-release.txt")
    assert (alma.os_id, alma.os_version) == ("almalinux", "9.2")
    row, rhel = distro_for(alma.os_id, alma.os_version), distro_for("rhel", "9.2")
    assert row.id == "almalinux" and row.like == "rhel" and row.family == "rhel"
    same = ("cmdline_method", "update_bootloader", "bootloader_info", "update_initramfs", "package_manager", "packages")
    assert all(getattr(row, f) == getattr(rhel, f) for f in same)
    assert row.sources["id"].startswith("AlmaLinux os-release") and row.sources["update_initramfs"] == rhel.sources["update_initramfs"]
    rocky = _os_release_fact(FIXTURES / "rocky8-os-release.txt")
    assert (rocky.os_id, rocky.os_version) == ("rocky", "8.6")
    assert distro_for(rocky.os_id, rocky.os_version) is None  # Rocky 8, like RHEL 8: not supported
    assert distro_for("rocky", "9.6").like == "rhel" and distro_for("rocky", "10.0") is not None


def test_a_like_row_must_follow_the_row_it_names():
    rebuild = '\n[[distro]]\nid = "y"\nlike = "x"\nversions = ["2"]\n'
    rows = parse_distros(ROW + rebuild)
    assert rows[1].id == "y" and rows[1].update_bootloader == "update-grub" and rows[1].versions == ("2",)
    # a table the rebuild gives is merged into its base's; a field it gives drops the base's source
    base = ROW + '[distro.packages]\nrunc = "runc"\nxz = "xz-utils"\n[distro.sources]\nupdate_initramfs = "base doc"\n'
    own = ('\n[[distro]]\nid = "y"\nlike = "x"\nversions = ["2"]\nupdate_initramfs = "mkinitrd"\n'
           '[distro.packages]\nxz = "xz"\n')
    y = parse_distros(base + own)[1]
    assert y.packages == {"runc": "runc", "xz": "xz"} and y.update_initramfs == "mkinitrd" and "update_initramfs" not in y.sources
    with pytest.raises(DistroTableError, match=r"distro\[0\] \(y\): like = 'x' names no earlier row"):
        parse_distros(rebuild + ROW)


def test_kernel_rows_and_fix_text_follow_the_family_for_rebuilds():
    from ccfactory.roles.host.kernels import check_host_kernel

    [required] = [r for r in check_host_kernel("tdx", "5.14.0-284.11.1.el9_2.x86_64", "almalinux", "9.2", "rhel")
                  if r.severity == "error"]  # fmt: skip
    assert required.failed and "RHEL 9 ships 5.14" in required.hint and "backported" in required.hint
    [debian] = [r for r in check_host_kernel("tdx", "6.1.0-18-amd64", "debian", "12", "debian") if r.severity == "error"]
    assert "RHEL" not in debian.hint


def test_a_kernel_row_names_an_os_release_id_or_a_family_never_one_for_the_other():
    from ccfactory.roles.host.kernels import KernelMinimum

    for_debian = KernelMinimum(tee="*", distro="debian", level="required", min="6.12", why="w", source="s")
    assert for_debian.applies("snp", "debian", "debian") and not for_debian.applies("snp", "ubuntu", "debian")
    for_rhels = KernelMinimum(tee="*", distro="*", level="required", min="6.12", why="w", source="s", family="rhel")
    assert for_rhels.applies("tdx", "rocky", "rhel") and for_rhels.applies("tdx", "rhel", "rhel")
    assert not for_rhels.applies("tdx", "debian", "debian") and not for_rhels.applies("tdx", "rhel", "")
