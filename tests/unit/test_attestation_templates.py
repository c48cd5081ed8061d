"""The smoke check's shell lives in templates (``roles/verify/templates/*.sh.j2``), not Python strings.

``CASES`` are smoke plans covering every branch ``attestation.node_script`` takes (lab and
hardware, snp and tdx, with and without a GPU, with and without the handler's ConfigPath,
timeouts, empty and hostile values that only quoting keeps in place). The golden files under
``tests/fixtures/attestation-golden/`` were written by the code *before* the shell moved into
templates (see the README there); the rendering must equal them byte for byte. A site overlay
of each template replaces it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from ccfactory.coco.initdata import ANNOTATION
from ccfactory.verify import attestation as att

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/fixtures/attestation-golden"
TEMPLATES = ROOT / "roles" / "verify" / "templates"

SNP_CONFIG = "/opt/kata/share/defaults/kata-containers/runtimes/qemu-snp/configuration-qemu-snp.toml"
INITDATA = "H4sIAAAAAAAC/2Zvbw=="
IMAGE = "registry.example/library/busybox@sha256:" + "ab" * 32
# a stand-in for the lab CDH program: quotes, a backslash, a newline, non-ASCII (shipped base64)
CDH = 'import sys\nprint("it\'s a \\"stand-in\\" — $HOME `x`")\nsys.exit(0)\n'
HOSTILE = "it's \"q\" $(touch /tmp/pwn) `x` ; & | \\ \n\tnext ünï"


def _plan(tee="snp", *, gpu=False, lab=False, timeout=None, config_path=None, env=None, annotations=None,
          container_id="ccfactory-attest-0123456789ab", runtime_type=None, cdh_program=None) -> att.SmokePlan:
    """What ``end_to_end`` builds for a node of this kind (deterministic ids and hashes)."""
    shim = f"qemu-nvidia-gpu-{tee}" if gpu else f"qemu-{tee}"
    if env is None:
        env = {"RES": f"ccfactory-verify/attestation-smoke-{tee}{'-gpu' if gpu else ''}/w1-0011223344556677",
               "EXPECT": "cd" * 32, "TEE": tee, "WAIT": "60" if lab else "180",
               **({"GPU": "1", att.CDI_ENV[0]: att.CDI_ENV[1]} if gpu and not lab else {})}  # fmt: skip
    return att.SmokePlan(
        container_id=container_id,
        handler=f"kata-{shim}",
        runtime_type=runtime_type or f"io.containerd.kata-{shim}.v2",
        config_path=("" if lab else SNP_CONFIG.replace("qemu-snp", shim)) if config_path is None else config_path,
        annotations={ANNOTATION: INITDATA, att.IMAGE_NAME_ANNOTATION: IMAGE}
        if annotations is None else annotations,
        env=env,
        lab=lab,
        timeout=(180 if lab else 1500 if gpu else 600) if timeout is None else timeout,
        gpu=gpu,
        cdh_program=(CDH if lab else "") if cdh_program is None else cdh_program,
    )


CASES = {
    "hw-snp": _plan("snp"),
    "hw-snp-gpu": _plan("snp", gpu=True),
    "hw-tdx": _plan("tdx"),
    "hw-tdx-gpu": _plan("tdx", gpu=True),
    "hw-snp-no-config-path": _plan("snp", config_path=""),
    "hw-snp-gpu-timeout-odd": _plan("snp", gpu=True, timeout=7),
    "hw-tdx-timeout-float": _plan("tdx", timeout=90.7),
    "hw-empty-env-and-annotations": _plan("snp", env={}, annotations={}),
    "hw-hostile-values": _plan(
        "snp", gpu=True, container_id="ccfactory-attest-" + HOSTILE, runtime_type="io.containerd.kata " + HOSTILE,
        config_path="/opt/my kata/" + HOSTILE + ".toml",
        env={"RES": "a b", "EXPECT": HOSTILE, "TEE": "snp", "X=Y": "=", "GPU": "1"},
        annotations={ANNOTATION: HOSTILE, att.IMAGE_NAME_ANNOTATION: "@GROUP@ x"},
    ),
    "lab-snp": _plan("snp", lab=True),
    "lab-tdx": _plan("tdx", lab=True),
    "lab-snp-gpu": _plan("snp", gpu=True, lab=True),  # a GPU node in the lab: no VFIO lookup, no --device
    "lab-no-cdh-program": _plan("snp", lab=True, cdh_program=""),
    "lab-timeout-float": _plan("snp", lab=True, timeout=90.7),
    "lab-with-config-path": _plan("tdx", lab=True, config_path=SNP_CONFIG, timeout=3600),
    "lab-hostile-values": _plan(
        "snp", lab=True, container_id="ccfactory-attest-" + HOSTILE, cdh_program=CDH + HOSTILE,
        env={"RES": HOSTILE, "EXPECT": "", "TEE": "snp", "WAIT": "60"},
        annotations={ANNOTATION: HOSTILE},
    ),
}


def outputs(overlays=None) -> dict[str, str]:
    """Every golden file's expected content: ``WORKLOAD`` and ``node_script`` of each case."""
    kw = {} if overlays is None else {"overlays": overlays}
    out = {"workload.sh": att.WORKLOAD}
    out.update({f"node-script-{name}.sh": att.node_script(plan, **kw) for name, plan in CASES.items()})
    return out


def write_golden() -> None:
    """Used once, with the code from before the templates, to write the golden files."""
    for name, text in outputs().items():
        (GOLDEN / name).write_bytes(text.encode())


@pytest.mark.parametrize("name", sorted(outputs()))
def test_the_rendering_is_byte_identical_to_the_golden_file(name):
    assert outputs()[name].encode() == (GOLDEN / name).read_bytes()


def test_every_golden_file_is_checked():
    assert sorted(p.name for p in GOLDEN.glob("*.sh")) == sorted(outputs())


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rendered_script_is_valid_shell(name):
    script = att.node_script(CASES[name])
    assert subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True).returncode == 0


def test_values_reach_the_shell_only_quoted():
    script = att.node_script(CASES["hw-hostile-values"])
    plan = CASES["hw-hostile-values"]
    assert f"ID={shlex.quote(plan.container_id)};" in script
    assert shlex.quote("--env") + " " + shlex.quote(f"EXPECT={HOSTILE}") in script
    assert shlex.quote(plan.config_path) in script and "/dev/vfio/$G" in script
    assert shlex.quote(f"{att.IMAGE_NAME_ANNOTATION}=@GROUP@ x") in script  # only the --device word gets $G
    assert shlex.quote(att.WORKLOAD) in script


VERIFY_TEMPLATES = ("verify/smoke.sh.j2", "verify/smoke-image.sh.j2", "verify/workload.sh.j2")


def test_the_verify_templates_are_shipped():
    from ccfactory.templating import packaged_templates

    assert set(VERIFY_TEMPLATES) <= set(packaged_templates())


@pytest.mark.parametrize("name", VERIFY_TEMPLATES)
def test_a_site_overlay_of_each_verify_template_replaces_it(name, tmp_path):
    marker = f"# site overlay of {name}"
    target = tmp_path / name
    target.parent.mkdir(parents=True)
    target.write_text((TEMPLATES / name.removeprefix("verify/")).read_text().rstrip("\n") + f"\n{marker}\n")
    for plan_name in ("hw-snp-gpu", "lab-snp"):
        plan = CASES[plan_name]
        assert marker not in att.node_script(plan)
        script = att.node_script(plan, overlays=(str(tmp_path),))
        assert marker in script
        assert subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True).returncode == 0
    if name == "verify/workload.sh.j2":
        assert att.workload((str(tmp_path),)).endswith(f"{marker}\n") and marker not in att.WORKLOAD


def test_an_overlay_replaces_the_whole_command(tmp_path):
    (tmp_path / "verify").mkdir()
    (tmp_path / "verify/smoke.sh.j2").write_text("echo site {{ ns }} {{ cid }} {{ timeout }}\n")
    assert att.node_script(CASES["hw-snp"], overlays=(str(tmp_path),)) == "echo site ccfactory-verify ccfactory-attest-0123456789ab 600\n"


def _context(tmp_path, monkeypatch, overlay: Path, node):
    """A hardware snp worker whose ``template_overlay_dirs`` is ``[overlay]``, for
    ``attestation.end_to_end`` with test_attestation_check's fake node and KBS."""
    import ccfactory.kbs.client as client
    from test_attestation_check import FACT_KEY, GPU_HANDLER, SNP_HANDLER, FakeKbs, fleet

    from ccfactory.config import load_node_config
    from ccfactory.facts.containerd import ContainerdState
    from ccfactory.verify.checks import CheckContext, FleetHost

    for name, value in (("instances", []), ("refuse_delete", False), ("refuse_set_after_seed", False), ("unreachable", False)):
        monkeypatch.setattr(FakeKbs, name, value)
    monkeypatch.setattr(client, "KbsClient", FakeKbs)
    _, hosts = fleet(tmp_path)
    data = {"kbs_url": "https://kbs1:8443", "runtime_smoke_image": IMAGE, "template_overlay_dirs": [str(overlay)]}
    hosts["w1"] = FleetHost(load_node_config("w1", ("workers", "snp"), data, check_files=False), data)
    ctx = CheckContext(cfg=hosts["w1"].cfg, run=node, data={}, fleet=hosts)
    ctx.cache[FACT_KEY] = ContainerdState(installed=True, active=True, version="2.3.5",
                                          handlers={"kata-qemu-snp": SNP_HANDLER, "kata-qemu-nvidia-gpu-snp": GPU_HANDLER})  # fmt: skip
    return ctx


def test_the_check_renders_with_the_hosts_overlays(tmp_path, monkeypatch):
    """``end_to_end`` renders the command with the host's ``template_overlay_dirs``."""
    from test_attestation_check import FakeKbs, Node, check

    overlay = tmp_path / "site"
    (overlay / "verify").mkdir(parents=True)
    (overlay / "verify/workload.sh.j2").write_text("# site workload\nexit 0\n")
    node = Node(exit_code=0)
    assert check(_context(tmp_path, monkeypatch, overlay, node)).status == "pass"
    assert shlex.quote("# site workload\nexit 0\n") in node.scripts[0]
    assert shlex.quote(att.WORKLOAD) not in node.scripts[0] and "cc_verdict" not in node.scripts[0]
    assert [op for op, _ in FakeKbs.instances[0].log] == ["set", "delete"]


def test_a_missing_overlay_directory_fails_the_check_before_anything_is_seeded(tmp_path, monkeypatch):
    from test_attestation_check import FakeKbs, Node, check

    overlay = tmp_path / "site"
    overlay.mkdir()
    node = Node(exit_code=0)
    ctx = _context(tmp_path, monkeypatch, overlay, node)
    overlay.rmdir()  # removed after the inventory was validated, before the check ran
    result = check(ctx)
    assert result.status == "fail"
    assert result.detail == (f"w1: template_overlay_dirs[0]: {overlay} is not a directory on this controller; "
                             "fix: create it or remove it from template_overlay_dirs")  # fmt: skip
    assert result.hint == "create it or remove it from template_overlay_dirs"
    assert FakeKbs.instances == [] and node.scripts == []


if __name__ == "__main__":  # pragma: no cover - the one-off that wrote the golden files
    write_golden()
