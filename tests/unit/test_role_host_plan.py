"""The host stage's pure parts: rendered files (parsed back), GRUB provenance, operator
conflicts, the boot-files fact, and the verdict of the verify step."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ccfactory.config import load_node_config
from ccfactory.lab.bootconfig import grub_cmdline, parse_modprobe, parse_shell_assignments
from ccfactory.lab.rootfs import DEFAULT_GRUB
from ccfactory.roles.host.operations import host_readiness
from ccfactory.parsers.gpuhost import gpu_driver_state
from ccfactory.parsers.kernel import parse_modprobe_d
from ccfactory.roles.host.facts import LAB_KERNEL_LOG, REBOOT_MARKER, host_boot_files_command, parse_host_boot_files
from ccfactory.roles.host.grub import dropped_by, grub_files_in_order, replay
from ccfactory.roles.host.plan import DROPIN, GPU_CONF, TEE_CONF, render_dropin, render_gpu_conf, render_tee_conf, same_text
from ccfactory.roles.host.spec import known_tees, tee_spec
from test_role_host_sim import BIOS_OFF, SimNode

HEADER = "# Managed by ccfactory (host stage). Local edits are overwritten\n"
SPECS = [pytest.param(tee_spec(t, gpus=True), id=t) for t in ("snp", "tdx")]


def cfg(tee: str, gpus: bool = True):
    data = ({"gpu_count": 8, "gpu_model": "H100"} if tee == "snp" else {"gpu_count": 2, "gpu_model": "B200"}) if gpus else {}
    return load_node_config("sim", ["workers", tee] + (["gpu"] if gpus else []), data)


# ------------------------------------------------------------------ rendered files


@pytest.mark.parametrize("spec", SPECS)
def test_every_rendered_file_starts_with_the_managed_header(spec):
    for text in (render_dropin(spec), render_tee_conf(spec), render_gpu_conf(spec)):
        assert text.startswith(HEADER) and text.endswith("\n") and "\n\n\n" not in text


@pytest.mark.parametrize("spec", SPECS)
def test_dropin_is_valid_shell(spec, tmp_path):
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("bash not installed")
    f = tmp_path / "60-ccfactory.cfg"
    f.write_text(render_dropin(spec))
    r = subprocess.run([bash, "-n", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("spec", SPECS)
def test_dropin_appends_when_sourced_after_stock_grub_like_update_grub(spec, tmp_path):
    (tmp_path / "grub").write_text(DEFAULT_GRUB.replace("`lsb_release -i -s 2> /dev/null || echo Debian`", "Debian"))
    (tmp_path / "60-ccfactory.cfg").write_text(render_dropin(spec))
    out = subprocess.run(
        ["sh", "-c", f'. {tmp_path}/grub; . {tmp_path}/60-ccfactory.cfg; echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"'],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out == ["quiet", *spec.cmdline_tokens]


@pytest.mark.parametrize("spec", SPECS)
def test_the_lab_reads_the_dropin_as_update_grub_would(spec):
    env = parse_shell_assignments(render_dropin(spec), {"GRUB_CMDLINE_LINUX_DEFAULT": "quiet splash"})
    assert env["GRUB_CMDLINE_LINUX_DEFAULT"].split() == ["quiet", "splash", *spec.cmdline_tokens]
    assert grub_cmdline("BOOT_IMAGE=/vmlinuz ro", DEFAULT_GRUB, [render_dropin(spec)]).split()[3:] == list(spec.cmdline_tokens)


def test_tee_conf_parses_to_the_wanted_options():
    snp = parse_modprobe_d([(TEE_CONF, render_tee_conf(tee_spec("snp", gpus=False)))])
    assert [(o.module, o.key, o.value) for o in snp.options] == [
        ("kvm_amd", "sev", "1"), ("kvm_amd", "sev_es", "1"), ("kvm_amd", "sev_snp", "1"),
    ]  # fmt: skip
    tdx = parse_modprobe([render_tee_conf(tee_spec("tdx", gpus=False))])
    assert tdx.options == {"kvm_intel": {"tdx": "1"}}


def test_no_host_gpu_driver_conf_blocks_every_driver_for_ccfactory_and_for_the_lab():
    text = render_gpu_conf(tee_spec("snp", gpus=True))
    state = gpu_driver_state([], [(GPU_CONF, text)], "ro")
    assert state.nvidia_blocked and state.nouveau_blocked
    lab = parse_modprobe([text])
    assert {"nouveau", "nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset"} <= lab.blacklist & lab.disabled
    assert render_gpu_conf(tee_spec("snp", gpus=False)) is None


def test_snp_adds_no_invalid_amd_iommu_on_token():
    spec = tee_spec("snp", gpus=False)
    assert spec.cmdline_tokens == () and render_dropin(spec) is None
    assert "amd_iommu=on" not in tee_spec("snp", gpus=True).cmdline_tokens


def test_data_covers_both_tees():
    assert set(known_tees()) == {"snp", "tdx"}
    spec = tee_spec("snp", gpus=False)
    assert spec.forbidden_on("iommu=pt").key == "iommu"
    assert spec.forbidden_on("iommu=nopt") is None
    assert spec.forbidden_on("amd_iommu=force_isolation,pgtbl_v2").key == "amd_iommu"
    assert spec.forbidden_on("kvm-amd.sev_snp=N").key == "kvm_amd.sev_snp"
    assert spec.forbidden_on("quiet") is None


def test_same_text_ignores_trailing_whitespace_only():
    assert same_text("a\nb\n", "a\nb  \n\n")
    assert not same_text("a\nb\n", "a\nc\n")
    assert same_text(None, None) and not same_text(None, "x")


# ------------------------------------------------------------------ GRUB provenance


def test_replay_follows_references_and_names_origins():
    files = [
        ("/etc/default/grub.d/50-a.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} iommu=pt"\n'),
        ("/etc/default/grub", '# x\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nexport GRUB_CMDLINE_LINUX=\'a \\\n b\'\n'),
        ("/etc/default/grub.d/10-b.cfg", "GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT splash\" # comment\n"),
        ("/etc/default/grub.d/notes.txt", 'GRUB_CMDLINE_LINUX_DEFAULT="ignored"\n'),
    ]
    env = replay(grub_files_in_order(files))
    assert [t.token for t in env.tokens()] == ["a", "b", "quiet", "splash", "iommu=pt"]
    where = {t.token: t.origin.where for t in env.tokens()}
    assert where == {
        "a": "/etc/default/grub line 3", "b": "/etc/default/grub line 3", "quiet": "/etc/default/grub line 2",
        "splash": "/etc/default/grub.d/10-b.cfg line 1", "iommu=pt": "/etc/default/grub.d/50-a.cfg line 1",
    }  # fmt: skip


def test_a_later_file_that_resets_the_variable_is_found():
    files = [
        ("/etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'),
        (DROPIN, 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT nohibernate"\n'),
        ("/etc/default/grub.d/90-cloud.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n'),
    ]
    reset = dropped_by(replay(grub_files_in_order(files)), DROPIN)
    assert reset.origin.where == "/etc/default/grub.d/90-cloud.cfg line 1"
    # a file sorted before the drop-in may set it: ubuntu's 50-cloudimg-settings.cfg does
    files[2] = ("/etc/default/grub.d/50-cloudimg-settings.cfg", files[2][1])
    assert dropped_by(replay(grub_files_in_order(files)), DROPIN) is None


def test_override_after_the_dropin_is_refused_with_the_fix(tmp_path):
    node = SimNode(tmp_path, "tdx")
    node.write("/etc/default/grub.d/90-site.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0,115200"\n')
    plan = node.plan(cfg("tdx"))
    (problem,) = plan.problems
    assert problem.startswith("/etc/default/grub.d/90-site.cfg line 1 (GRUB_CMDLINE_LINUX_DEFAULT=\"console=ttyS0,115200\") sets")
    assert "discards intel_iommu=on kvm_intel.tdx=1 nohibernate modprobe.blacklist=nouveau" in problem
    assert 'make it append ("$GRUB_CMDLINE_LINUX_DEFAULT ...") or rename it to sort before 60-ccfactory.cfg' in problem


def test_commented_out_iommu_pt_is_not_a_problem(tmp_path):
    node = SimNode(tmp_path, "snp")
    node.write("/etc/default/grub.d/50-site.cfg", '#GRUB_CMDLINE_LINUX_DEFAULT="iommu=pt"\n')
    assert node.plan(cfg("snp")).problems == ()


def test_every_problem_is_reported_at_once(tmp_path):
    node = SimNode(tmp_path, "snp", kernel="6.8.0-1-generic", os_version="24.04")
    node.write("/etc/default/grub.d/50-site.cfg", 'GRUB_CMDLINE_LINUX="amd_iommu=off kvm_amd.sev_snp=0"\n')
    node.write("/etc/modprobe.d/site.conf", "options kvm_amd sev_es=0\nblacklist ccp\n")
    problems = node.plan(cfg("snp")).problems
    assert any(p.startswith("host_kernel>=6.11: FAIL: kernel 6.8.0-1-generic is older than 6.11") for p in problems)
    assert any(p.startswith("amd_iommu=off in /etc/default/grub.d/50-site.cfg line 1") for p in problems)
    assert any(p.startswith("kvm_amd.sev_snp=0 in /etc/default/grub.d/50-site.cfg line 1") for p in problems)
    assert any(p.startswith("options kvm_amd sev_es=0 in /etc/modprobe.d/site.conf: turns SEV-ES") for p in problems)
    assert "/etc/modprobe.d/site.conf blacklists ccp, which AMD SEV-SNP needs: remove that line, then re-run" in problems


def test_tee_that_does_not_match_the_cpu_is_an_inventory_problem(tmp_path):
    node = SimNode(tmp_path, "tdx")
    (problem,) = node.plan(cfg("snp")).problems
    assert problem == (
        "tee is snp (AMD SEV-SNP) but the CPU is GenuineIntel, not AuthenticAMD: fix tee (or the snp/tdx group) in the inventory"
    )


def test_missing_tools_and_grub_are_problems_a_missing_initramfs_is_not(tmp_path):
    node = SimNode(tmp_path, "snp", initramfs=False)
    node.remove_tool("update-initramfs")
    plan = node.plan(cfg("snp"))
    assert plan.problems == () and plan.update_initramfs is None
    assert any(n.startswith("no initramfs on this host") for n in plan.notes)
    node.write("/boot/initrd.img-6.17.0-5-generic", "")
    assert "install initramfs-tools" in node.plan(cfg("snp")).problems[0]
    node.remove_tool("update-grub")
    node.remove("/etc/default/grub")
    problems = node.plan(cfg("snp")).problems
    assert any(p.startswith("/etc/default/grub is missing") for p in problems)
    assert any(p.startswith("update-grub is missing on this ubuntu host") for p in problems)


def test_recommended_kernel_is_a_note_not_a_problem(tmp_path):
    node = SimNode(tmp_path, "snp", os_id="debian", os_version="13", kernel="6.12.38+deb13-amd64")
    plan = node.plan(cfg("snp"))
    assert plan.problems == ()
    assert any(n.startswith("host_kernel>=6.16.1: WARN") for n in plan.notes)


def test_unreadable_kernel_release_is_not_a_silent_pass(tmp_path):
    node = SimNode(tmp_path, "snp", kernel="")
    assert any("cannot read a version from kernel release" in p for p in node.plan(cfg("snp")).problems)


# ------------------------------------------------------------------ the boot-files fact


def test_boot_files_fact_reads_what_the_stage_needs(tmp_path):
    node = SimNode(tmp_path, "snp", initramfs=True)
    node.write("/etc/default/grub.d/50-x.cfg", "A=1")  # no trailing newline
    node.write("/usr/lib/modprobe.d/50-y.conf", "blacklist z\n")
    node.write(REBOOT_MARKER, "boot-7\nwhy\n")
    node.write("/etc/default/grub.d/not-a-cfg.txt", "x\n")
    files = node.boot_files("update-grub no-such-tool")
    assert [p for p, _ in files.grub] == ["/etc/default/grub", "/etc/default/grub.d/50-x.cfg"]
    assert files.grub_file("/etc/default/grub") == DEFAULT_GRUB and files.grub_file("/etc/default/grub.d/50-x.cfg") == "A=1\n"
    assert files.modprobe_file("/usr/lib/modprobe.d/50-y.conf") == "blacklist z\n"
    assert files.marker == ("boot-7", "why")
    assert files.tools == {"update-grub"} and files.has_tool("update-grub --flag") and not files.has_tool("no-such-tool")
    assert files.initramfs_images == (str(node.root / "boot/initrd.img-6.17.0-5-generic"),)
    assert files.lab_kernel == "6.16.12-amd64"  # from the rendered kernel log


def test_boot_files_fact_on_an_empty_host():
    files = parse_host_boot_files(["### ccfactory:tools", "### ccfactory:initramfs", "### ccfactory:lab-kernel"])
    assert files.grub == () and files.marker is None and files.lab_kernel is None and files.tools == frozenset()
    assert LAB_KERNEL_LOG in host_boot_files_command("update-grub")


# ------------------------------------------------------------------ the verify step's verdict


def test_active_host_is_ready(tmp_path):
    node = SimNode(tmp_path, "tdx")
    node.apply(node.plan(cfg("tdx")))
    spec = tee_spec("tdx", gpus=True)
    verdict = host_readiness(node.tee_status(), "tdx", cmdline_tokens=spec.cmdline_tokens, gpu_modules=spec.gpu_modules)
    assert verdict.ready and verdict.problems == ()


def test_bios_off_is_named_first_with_the_firmware_stage(tmp_path):
    node = SimNode(tmp_path, "tdx", BIOS_OFF)
    node.apply(node.plan(cfg("tdx")))
    node.boot()  # even after a reboot
    spec = tee_spec("tdx", gpus=True)
    verdict = host_readiness(
        node.tee_status(), "tdx", cmdline_tokens=spec.cmdline_tokens, firmware_checks=spec.firmware_checks, dropin=DROPIN
    )
    message = verdict.message(spec.name, "enable TDX in BIOS: run the firmware stage")
    assert message.startswith("Intel TDX is not active: enable TDX in BIOS: run the firmware stage:\n  - tdx_keyids: FAIL")
    assert "kernel_cmdline" not in message  # the configuration is in effect; only the BIOS is missing


def test_missing_tokens_after_a_reboot_say_what_to_look_at(tmp_path):
    node = SimNode(tmp_path, "tdx")
    verdict = host_readiness(node.tee_status(), "tdx", cmdline_tokens=("kvm_intel.tdx=1",), dropin=DROPIN)
    (cmdline,) = [p for p in verdict.problems if p.startswith("kernel_cmdline")]
    assert "lacks kvm_intel.tdx=1" in cmdline and "run update-grub and reboot" in cmdline
    assert any(p.startswith("kvm_intel_tdx: FAIL") for p in verdict.problems)  # the fact's own check and hint


def test_loaded_gpu_driver_fails_the_verify_step(tmp_path):
    from dataclasses import replace

    node = SimNode(tmp_path, "snp")
    status = node.tee_status()
    status = replace(status, inputs=replace(status.inputs, modules=status.inputs.modules | {"nouveau"}))
    verdict = host_readiness(status, "snp", gpu_modules=("nouveau", "nvidia"))
    assert any(p.startswith("host_gpu_driver: FAIL: nouveau loaded on the host") for p in verdict.problems)
    assert verdict.message("AMD SEV-SNP", "x").startswith("AMD SEV-SNP is active, but the host is not ready:\n  - host_gpu_driver")
