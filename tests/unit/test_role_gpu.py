"""GPU stage: the pure planning, and the role on a pyinfra ``@fake`` host with patched facts."""

from __future__ import annotations


import pytest
from pyinfra.facts.files import FileContents, Sha1File

from ccfactory.config import GpuConfig
from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus
from ccfactory.facts.gpu_cc import GpuCcModes, GpuModes
from ccfactory.facts.node import BootId, BootTools, BootToolsInfo, NodeOs, NodeOsInfo
from ccfactory.lab import artifacts
from ccfactory import gpuadmin
from ccfactory.gpuadmin import plan_modes
from ccfactory.parsers.gpuhost import GpuDriverState, gpu_driver_state, nvidia_devices_from_lines
from ccfactory.roles.gpu.plan import VFIO_CONF, plan_stage, render_vfio_conf
from support import plan_role_on_fake_host
from lab_standin import stand_in_lab

GPUS = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
SWITCHES = ["0000:c5:00.0", "0000:c6:00.0", "0000:c7:00.0", "0000:c8:00.0"]
HOST = "@fake/node1"


def hgx(driver: str = "", gpus=GPUS, switch_driver: str | None = None, device: str = "0x2330"):
    lines = [f"{b} vendor=0x10de device={device} class=0x030200 driver={driver} iommu_group=2{i}" for i, b in enumerate(gpus)]
    sd = driver if switch_driver is None else switch_driver
    lines += [f"{b} vendor=0x10de device=0x22a3 class=0x068000 driver={sd} iommu_group=4{i}" for i, b in enumerate(SWITCHES)]
    return nvidia_devices_from_lines(lines)


# ------------------------------------------------------------------ mode planning (pure)


def test_converged_needs_no_step():
    p = plan_modes("on", GPUS, GPUS + SWITCHES, dict.fromkeys(GPUS, "on"), dict.fromkeys(GPUS + SWITCHES, "off"))
    assert p.steps == () and not p.half_switched


PCI_ORDER = sorted(GPUS + SWITCHES)  # what the tool lists: GPUs and NVSwitches by PCI address


def test_off_to_on_sets_every_gpu_then_resets_all_then_verifies_each():
    # NVIDIA k8s-cc-manager _set_cc_mode_direct: set on all (no reset), reset all, wait + verify each
    p = plan_modes("on", GPUS, GPUS + SWITCHES, dict.fromkeys(GPUS, "off"), dict.fromkeys(GPUS + SWITCHES, "off"))
    assert [s.args for s in p.steps] == [
        ("--devices", ",".join(GPUS), "--set-cc-mode", "on"),
        ("--devices", ",".join(GPUS), "--reset-with-os"),
        ("--devices", ",".join(GPUS), "--query-cc-mode"),
    ]
    assert [s.kind for s in p.steps] == ["set", "reset", "verify"]
    assert not any("--reset-after-cc-mode-switch" in s.args for s in p.steps)  # that resets one GPU at a time
    assert p.steps[0].command("/t/nvidia_gpu_tools.py") == (
        f"python3 /t/nvidia_gpu_tools.py --devices {','.join(GPUS)} --set-cc-mode on 2>&1"
    )
    assert not p.half_switched


def test_ppcie_sets_gpus_and_switches_together_then_resets_all_then_verifies_each():
    p = plan_modes("ppcie", GPUS, GPUS + SWITCHES, dict.fromkeys(GPUS, "on"), dict.fromkeys(GPUS + SWITCHES, "off"))
    # --set-ppcie-mode on also turns CC off (nvidia_gpu_tools.py:1843-1851): no CC-off reset first
    assert [s.args[2:] for s in p.steps] == [
        ("--set-ppcie-mode", "on"),
        ("--reset-with-os",),
        ("--query-cc-mode", "--query-ppcie-mode"),
    ]
    assert {s.args[1] for s in p.steps} == {",".join(PCI_ORDER)}
    assert PCI_ORDER.index("0000:c5:00.0") < PCI_ORDER.index("0000:db:00.0")  # switches c5-c8 before GPU db
    assert p.want_cc == dict.fromkeys(GPUS, "off") and p.want_ppcie == dict.fromkeys(GPUS + SWITCHES, "on")


def test_ppcie_stages_gpus_whose_cc_is_on_even_when_ppcie_is_already_on():
    p = plan_modes("ppcie", GPUS, GPUS + SWITCHES, dict.fromkeys(GPUS, "off") | {"0000:3a:00.0": "on"}, dict.fromkeys(GPUS + SWITCHES, "on"))
    # NVIDIA's order (k8s-cc-manager main.py:336-372): every device off first, then all on together
    assert [s.args for s in p.steps][0] == ("--devices", ",".join(PCI_ORDER), "--set-ppcie-mode", "off")
    assert [s.args for s in p.steps][3] == ("--devices", ",".join(PCI_ORDER), "--set-ppcie-mode", "on")


def test_leaving_ppcie_turns_it_off_before_cc():
    p = plan_modes("on", GPUS, GPUS + SWITCHES, dict.fromkeys(GPUS, "off"), dict.fromkeys(GPUS + SWITCHES, "on"))
    assert [s.args[2:] for s in p.steps] == [
        ("--set-ppcie-mode", "off"),
        ("--reset-with-os",),
        ("--query-ppcie-mode",),
        ("--set-cc-mode", "on"),
        ("--reset-with-os",),
        ("--query-cc-mode",),
    ]
    assert p.steps[0].args[1] == ",".join(PCI_ORDER) and p.steps[3].args[1] == ",".join(GPUS)


def test_half_switched_is_detected_with_its_recovery_command():
    cc = dict.fromkeys(GPUS, "on") | {"0000:3a:00.0": "off", "0000:db:00.0": "devtools"}
    p = plan_modes("on", GPUS, [], cc, {})
    assert p.half_switched
    assert p.todo == ("0000:3a:00.0 (cc off)", "0000:db:00.0 (cc devtools)")
    assert p.recovery("/opt/t.py") == (
        "python3 /opt/t.py --devices 0000:3a:00.0,0000:db:00.0 --set-cc-mode on"
        " && python3 /opt/t.py --devices 0000:3a:00.0,0000:db:00.0 --reset-with-os"
        " && python3 /opt/t.py --devices 0000:3a:00.0,0000:db:00.0 --query-cc-mode"
    )


def test_unknown_modes_plan_everything_without_calling_it_half_switched():
    p = plan_modes("devtools", GPUS, [], {}, {})
    assert len(p.steps) == 3 and not p.half_switched and len(p.todo) == 8


def test_mode_names_are_checked():
    with pytest.raises(ValueError, match="unknown GPU CC mode"):
        plan_modes("maybe", GPUS, [], {}, {})


# ------------------------------------------------------------------ stage planning (pure)

H100x8 = GpuConfig(count=8, model="H100", cc_mode="on")


def test_stage_plan_for_a_fresh_node():
    p = plan_stage(H100x8, hgx(), GpuDriverState(), None, None, "boot-1")
    assert p.problems == ()
    assert p.vfio_devices == tuple(GPUS) and p.vfio_ids == ("10de:2330",)
    assert p.ppcie_devices == tuple(GPUS + SWITCHES)
    assert "options vfio-pci ids=10de:2330\n" in p.vfio_conf
    assert "softdep nvidia pre: vfio-pci" in p.vfio_conf and "softdep nouveau pre: vfio-pci" in p.vfio_conf
    assert p.vfio_conf.startswith("# Managed by ccfactory")
    assert p.needs_reboot and p.reboot_reason.startswith("VFIO configuration changed")


def test_ppcie_binds_the_nvswitches_too():
    p = plan_stage(GpuConfig(count=8, model="H100", cc_mode="ppcie"), hgx(), GpuDriverState(), None, None, "b")
    assert p.vfio_devices == tuple(GPUS + SWITCHES) and p.vfio_ids == ("10de:22a3", "10de:2330")


def test_count_mismatch_names_what_was_found():
    p = plan_stage(H100x8, hgx(gpus=GPUS[:7]), GpuDriverState(), None, None, "b")
    (problem,) = p.problems
    assert problem.startswith("inventory says 8 H100 GPU(s) (gpu_count, gpu_model), the node has 7: 0000:18:00.0 H100,")
    assert "0000:ba:00.0 H100;" in problem and "0000:db:00.0" not in problem


def test_model_mismatch():
    p = plan_stage(GpuConfig(count=8, model="H200", cc_mode="on"), hgx(), GpuDriverState(), None, None, "b")
    assert any("every GPU is a H200 (gpu_model), but found 0000:18:00.0 H100" in x for x in p.problems)


def test_driver_holder_is_refused_by_name():
    devs = nvidia_devices_from_lines(
        [f"{b} vendor=0x10de device=0x2330 class=0x030200 driver={'nvidia' if b == GPUS[1] else ''} iommu_group=" for b in GPUS]
    )
    p = plan_stage(H100x8, devs, GpuDriverState(), None, None, "b")
    (problem,) = p.problems
    assert "nvidia holds 0000:2a:00.0" in problem and "never switches CC mode under a driver" in problem


def test_ppcie_needs_nvswitches():
    devs = nvidia_devices_from_lines([f"{b} vendor=0x10de device=0x2330 class=0x030200 driver= iommu_group=" for b in GPUS])
    p = plan_stage(GpuConfig(count=8, model="H100", cc_mode="ppcie"), devs, GpuDriverState(), None, None, "b")
    assert p.problems == ("gpu_cc_mode ppcie needs the HGX NVSwitches, but the node has none; use on",)


def test_conflicting_vfio_settings_are_problems():
    drivers = gpu_driver_state([], [("/etc/modprobe.d/vfio.conf", "options vfio-pci ids=10de:1234\nblacklist vfio_pci\n")], "ro")
    p = plan_stage(H100x8, hgx(), drivers, None, None, "b")
    assert any("vfio-pci ids are also set in /etc/modprobe.d/vfio.conf (ids=10de:1234)" in x for x in p.problems)
    assert any("vfio-pci is blacklisted" in x for x in p.problems)
    drivers = gpu_driver_state([], [], "ro vfio-pci.ids=10de:1111")
    assert any("vfio-pci.ids=10de:1111" in x for x in plan_stage(H100x8, hgx(), drivers, None, None, "b").problems)


def test_reboot_decisions():
    conf = render_vfio_conf(("10de:2330",), nvswitches=False, mode="on").rstrip("\n").split("\n")
    bound, unbound = hgx("vfio-pci"), hgx("")
    nothing = GpuDriverState()
    # configured and bound: nothing to do
    p = plan_stage(H100x8, bound, nothing, conf, None, "b2")
    assert not p.vfio_conf_changes and not p.needs_reboot
    # the file is missing but the devices are bound (e.g. by an operator's own file): write it, no reboot
    p = plan_stage(H100x8, bound, nothing, None, None, "b2")
    assert p.vfio_conf_changes and not p.needs_reboot
    # configured, not bound, a reboot recorded in this very boot: reboot (it never happened)
    p = plan_stage(H100x8, unbound, nothing, conf, ["b2", "why"], "b2")
    assert p.needs_reboot and "unfinished reboot" in p.reboot_reason
    # configured, not bound, already rebooted since: no reboot loop, the check will fail instead
    p = plan_stage(H100x8, unbound, nothing, conf, ["b1", "why"], "b2")
    assert not p.needs_reboot and p.unbound == tuple(GPUS)


# ------------------------------------------------------------------ the role on a @fake host


class Facts:
    """Answers ``host.get_fact`` from a table; records what was asked."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    def __call__(self, cls, *args, **kwargs):
        self.asked.append(cls)
        value = self.table.get(cls)
        if cls is FileContents:
            return self.table.get((FileContents, kwargs.get("path")))
        if callable(value):
            return value(**{k: v for k, v in kwargs.items() if not k.startswith("_")})
        return value


def _lab(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    stand_in_lab(lab, {"node1": HOST})  # the lab gate proves a running lab (tests/lab_standin.py)
    bom = artifacts.build(lab, url="https://artifacts.lab.invalid")
    return lab, bom


def run_role(tmp_path, facts: dict, *, mode="on", lab=True, count=8):
    lab_dir, _ = _lab(tmp_path)
    data = {
        "lab": lab,
        "lab_dir": str(lab_dir) if lab else None,
        "gpu_count": count,
        "gpu_model": "H100",
        "gpu_cc_mode": mode,
        "artifact_source": "local",
        "artifact_dir": str(lab_dir / "artifacts"),
        "artifact_cache_dir": str(tmp_path / "cache"),
        "fake_delay": 0,
        "fake_delay_jitter": 0,
    }
    from ccfactory.roles import gpu

    answers = Facts(facts)
    groups = {g: [HOST] for g in ("workers", "snp", "gpu")}
    ops, meta = plan_role_on_fake_host(HOST, data, groups, answers, gpu.apply)
    return [(name, change, commands) for name, change, commands, _ in ops], answers, meta


def _tool_sha(tmp_path):
    from ccfactory.bom import parse_bom

    text = (tmp_path / "lab" / "bom-lab.toml").read_text()
    return parse_bom(text).artifacts[0]


def converged_facts(tmp_path, *, mode="on", cc=None):
    artifacts.build(tmp_path / "lab", url="https://artifacts.lab.invalid")
    a = _tool_sha(tmp_path)
    import hashlib

    local_sha1 = hashlib.sha1((tmp_path / "lab" / "artifacts" / a.filename).read_bytes()).hexdigest()
    ppcie = dict.fromkeys(GPUS + SWITCHES, "on" if mode == "ppcie" else "off")
    cc = cc or dict.fromkeys(GPUS, "off" if mode == "ppcie" else mode)
    ids = ("10de:22a3", "10de:2330") if mode == "ppcie" else ("10de:2330",)
    conf = render_vfio_conf(ids, nvswitches=mode == "ppcie", mode=mode)
    from ccfactory.roles.gpu.plan import render_vfio_modules_conf

    return {
        NvidiaGpus: hgx("vfio-pci"),
        GpuDrivers: GpuDriverState(),
        GpuCcModes: lambda **kw: GpuModes(True, cc, ppcie),
        BootId: "boot-2",
        NodeOs: NodeOsInfo("debian", "12", "6.12.0", "AuthenticAMD", "none", "boot-2"),
        BootTools: lambda tools="", **kw: BootToolsInfo(frozenset(tools.split()), ("/boot/initrd.img-6.12.0",)),
        (FileContents, VFIO_CONF): conf.rstrip("\n").split("\n"),
        (FileContents, f"{gpuadmin.tool_dir(a.version)}/.ccfactory-sha256"): [a.sha256],
        Sha1File: lambda path, **kw: {
            VFIO_CONF: hashlib.sha1(conf.encode()).hexdigest(),
            "/etc/modules-load.d/ccfactory-vfio.conf": hashlib.sha1(render_vfio_modules_conf().encode()).hexdigest(),
        }.get(path, local_sha1),
    }


def _patch_files_facts(facts, missing=()):
    """files.put asks File/Directory/Sha1File: existing root-owned files, except ``missing``."""
    from pyinfra.facts.files import Directory, File

    from ccfactory.roles.gpu.plan import REBOOT_MARKER

    exists = {"mode": 644, "user": "root", "group": "root", "size": 1, "mtime": None}
    facts[File] = lambda path, **kw: None if path in (REBOOT_MARKER, *missing) else exists
    facts[Directory] = lambda path, **kw: {"mode": 755, "user": "root", "group": "root"} if not path.endswith((".conf", ".tar.gz", "gpu-vfio")) else None
    return facts


def test_converged_node_gets_no_change(tmp_path):
    ops, _, meta = run_role(tmp_path, _patch_files_facts(converged_facts(tmp_path)))
    changed = [name for name, change, _ in ops if change]
    assert changed == []
    assert meta.ops_change == 0
    names = [n for n, _, _ in ops]
    assert "GPU | GPUs in CC mode on" in names and not any("Reboot" in n and "done" not in n for n in names)


def test_off_to_on_plans_the_switch_the_vfio_file_and_a_reboot(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path, cc=dict.fromkeys(GPUS, "off")), missing=(VFIO_CONF,))
    facts[NvidiaGpus] = hgx("")
    facts[(FileContents, VFIO_CONF)] = None
    facts[Sha1File] = lambda path, **kw: None
    ops, _, _ = run_role(tmp_path, facts)
    by_name = {n.removeprefix("GPU | "): (change, cmds) for n, change, cmds in ops}
    change, (cmd,) = by_name["GPUs in CC mode on"]
    plan = cmd.args[0]
    assert change and [s.args[2:] for s in plan.steps] == [("--set-cc-mode", "on"), ("--reset-with-os",), ("--query-cc-mode",)]
    assert plan.steps[0].args[1] == ",".join(GPUS)
    assert by_name["vfio-pci claims the GPUs at boot"][0]
    assert by_name["Record the pending reboot"][0]
    assert by_name["Reboot to bind the GPUs to vfio-pci"][0]
    order = [n.removeprefix("GPU | ") for n, _, _ in ops]
    assert order.index("GPUs in CC mode on") < order.index("vfio-pci claims the GPUs at boot") < order.index(
        "Reboot to bind the GPUs to vfio-pci"
    ) < order.index("GPUs on vfio-pci")


def test_ppcie_role_plans_the_ordered_switch(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path, mode="ppcie"))
    facts[GpuCcModes] = lambda **kw: GpuModes(True, dict.fromkeys(GPUS, "on"), dict.fromkeys(GPUS + SWITCHES, "off"))
    ops, _, _ = run_role(tmp_path, facts, mode="ppcie")
    (_, change, (cmd,)) = next(o for o in ops if o[0].endswith("GPUs in CC mode ppcie"))
    assert change
    assert [s.args[2] for s in cmd.args[0].steps] == ["--set-ppcie-mode", "--reset-with-os", "--query-cc-mode"]


def test_driver_holder_fails_before_any_change(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path))
    facts[NvidiaGpus] = hgx("nvidia")
    ops, _, _ = run_role(tmp_path, facts)
    assert [n for n, _, _ in ops] == ["GPU | GPUs match the inventory and no host driver holds them"]
    (_, change, (cmd,)) = ops[0]
    assert change and "nvidia holds 0000:18:00.0" in cmd.args[0]


def test_count_mismatch_fails_before_any_change(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path))
    ops, _, _ = run_role(tmp_path, facts, count=4)
    assert len(ops) == 1 and "inventory says 4 H100 GPU(s)" in ops[0][2][0].args[0]


def test_site_without_the_pinned_tool_tar_fails_before_touching_the_host(tmp_path):
    """The packaged BOM pins NVIDIA's commit; an air-gapped site whose artifact directory lacks
    the tar of that commit fails before any fact is read, naming the file."""
    facts = _patch_files_facts(converged_facts(tmp_path))
    ops, answers, _ = run_role(tmp_path, facts, lab=False)
    assert answers.asked == []  # not even a fact was read
    ((name, change, (cmd,)),) = ops
    assert name == "GPU | gpu-admin-tools from the bill of materials"
    assert "gpu-admin-tools-82422cc1811c.tar: No such file" in cmd.args[0], cmd.args[0]
    assert cmd.args[0].endswith("nothing was changed")


def test_half_switched_node_is_reported_and_finished(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path))
    facts[GpuCcModes] = lambda **kw: GpuModes(True, dict.fromkeys(GPUS, "on") | {"0000:ba:00.0": "off"}, dict.fromkeys(GPUS + SWITCHES, "off"))
    ops, _, _ = run_role(tmp_path, facts)
    (_, change, (cmd,)) = next(o for o in ops if o[0].endswith("GPUs in CC mode on"))
    plan = cmd.args[0]
    assert change and plan.half_switched and plan.todo == ("0000:ba:00.0 (cc off, ppcie off)",)
    assert plan.steps[0].args[1] == "0000:ba:00.0"


# ------------------------------------------------------------------ distributions (distros.toml)

OS_ROWS = {  # os-release ID, VERSION_ID -> the initramfs command the role must run (distros.toml)
    ("debian", "12"): "update-initramfs -u -k all",
    ("ubuntu", "24.04"): "update-initramfs -u -k all",
    ("rhel", "9.4"): "dracut --regenerate-all --force",
}


@pytest.mark.parametrize(("os_id", "version"), list(OS_ROWS))
def test_initramfs_command_per_distribution_is_data(tmp_path, os_id, version):
    facts = _patch_files_facts(converged_facts(tmp_path), missing=(VFIO_CONF,))
    facts[NodeOs] = NodeOsInfo(os_id, version, "6.12.0", "AuthenticAMD", "none", "boot-2")
    facts[NvidiaGpus] = hgx("")
    facts[(FileContents, VFIO_CONF)] = None
    facts[Sha1File] = lambda path, **kw: None
    ops, answers, _ = run_role(tmp_path, facts)
    by_name = {n.removeprefix("GPU | "): (change, cmds) for n, change, cmds in ops}
    change, cmds = by_name["Refresh the initramfs (module options)"]
    assert change and [str(c) for c in cmds] == [OS_ROWS[(os_id, version)]]
    assert BootTools in answers.asked


def test_initramfs_tool_missing_with_an_initramfs_fails_before_any_change(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path))
    facts[NodeOs] = NodeOsInfo("rhel", "10.0", "6.12.0", "GenuineIntel", "none", "boot-2")
    facts[BootTools] = lambda **kw: BootToolsInfo(frozenset({"grubby"}), ("/boot/initramfs-6.12.0.el10.x86_64.img",))
    ops, _, _ = run_role(tmp_path, facts)
    assert [n for n, _, _ in ops] == ["GPU | GPUs match the inventory and no host driver holds them"]
    message = ops[0][2][0].args[0]
    assert "dracut is missing but the host boots with an initramfs (/boot/initramfs-6.12.0.el10.x86_64.img)" in message
    assert "install dracut" in message


def test_no_initramfs_at_all_runs_no_refresh_and_says_why(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path), missing=(VFIO_CONF,))
    facts[BootTools] = lambda **kw: BootToolsInfo()
    facts[(FileContents, VFIO_CONF)] = None
    facts[Sha1File] = lambda path, **kw: None
    ops, _, _ = run_role(tmp_path, facts)
    names = [n for n, _, _ in ops]
    assert "GPU | vfio-pci claims the GPUs at boot" in names
    assert "GPU | Refresh the initramfs (module options)" not in names


def test_unknown_distribution_fails_before_any_change(tmp_path):
    facts = _patch_files_facts(converged_facts(tmp_path))
    facts[NodeOs] = NodeOsInfo("centos", "7", "3.10.0", "AuthenticAMD", "none", "boot-2")
    ops, _, _ = run_role(tmp_path, facts)
    assert [n for n, _, _ in ops] == ["GPU | GPUs match the inventory and no host driver holds them"]
    assert "centos 7 is not a supported distribution" in ops[0][2][0].args[0]
