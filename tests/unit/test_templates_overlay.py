"""Every template ccfactory ships can be replaced by a site overlay (``template_overlay_dirs``).

The test lists every ``*.j2`` file under ``roles/<stage>/templates/`` (as ``<stage>/<file>``) and
``templates/`` (``packaged_templates``) and, for each,
renders it through the producer a stage really calls (the host and gpu plans, the kbs
renderers, initdata, the containerd and Kata drop-ins, the runtime role's containerd unit, the
attestation check's node command) with an overlay directory holding a marked copy of that one
template. The marked text must come out. ``PRODUCERS`` must name every shipped template: a new template without a producer
here fails, so a template cannot silently ignore the overlay. A second test proves no module
builds a Jinja environment or reads ccfactory's templates other than through
``ccfactory.templating``.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path

import pytest

from ccfactory.config import load_node_config
from ccfactory.templating import TemplateOverlayError, check_overlays, packaged_templates, render, site_overlays

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"  # the shared ones; a stage's are in roles/<stage>/templates


def _source(name: str) -> Path:
    """The file in the clone that template ``name`` (``<stage>/<file>`` or shared) is."""
    stage, _, rest = name.partition("/")
    return ROOT / "roles" / stage / "templates" / rest if rest else TEMPLATES / name
IMAGE = "registry.example/trustee@sha256:" + "0" * 64


def _host_plan(overlays):
    """The host role's real planning path: NodeConfig with template_overlay_dirs -> plan_host."""
    from ccfactory.distros import distro_for
    from test_role_host_sim import SimNode

    from ccfactory.roles.host.plan import plan_host

    base = Path(tempfile.mkdtemp(prefix="ccf-overlay-node-"))
    try:
        node = SimNode(base, "snp")
        cfg = load_node_config("sim", ["workers", "snp", "gpu"],
                               {"gpu_count": 8, "gpu_model": "H100", "template_overlay_dirs": list(overlays)})  # fmt: skip
        info = node.info()
        plan = plan_host(cfg, info, node.tee_status(), node.boot_files(), distro_for(info.os_id, info.os_version))
    finally:
        shutil.rmtree(base)
    assert not plan.problems, plan.problems
    return {f.path: f.wanted for f in plan.files}


def _gpu_plan(overlays):
    from ccfactory.config import GpuConfig
    from ccfactory.parsers.gpuhost import GpuDriverState
    from ccfactory.roles.gpu.plan import plan_stage
    from test_role_gpu import hgx

    p = plan_stage(GpuConfig(count=8, model="H100", cc_mode="on"), hgx(""), GpuDriverState(), None, None, "b", overlays)
    return p.vfio_conf + p.vfio_modules_conf


def _initdata(overlays):
    from ccfactory.coco.initdata import CocoSettings, render_parts

    return "".join(render_parts(CocoSettings(kbs_url="https://kbs.example:8443", overlays=overlays)).values())


def _containerd_dropin(overlays):
    from ccfactory.coco import containerd_config as cc

    return cc.render_dropin([cc.Handler.for_shim("qemu-snp")], 3, overlays=overlays)


def _kata_dropin(overlays):
    from ccfactory.coco import spec
    from ccfactory.roles.runtime.kata import render_shim_dropin

    return render_shim_dropin(spec.shim_settings("qemu-snp", spec.KataDefaults()), "console=hvc0", overlays)


def _kbs_config(overlays):
    from ccfactory.roles.kbs.render import render_kbs_config

    return render_kbs_config(socket="0.0.0.0:8080", insecure_http=False, nvidia_verifier=None, overlays=overlays)


def _kbs_unit(overlays):
    from ccfactory.roles.kbs.render import render_unit

    return render_unit(port=8080, flavour="trustee", image=IMAGE, overlays=overlays)


def _containerd_unit(overlays):
    # the runtime role renders it with exactly this call (roles/runtime/__init__.py); asserted below
    return render("runtime/containerd.service.j2", overlays, ccfactory_source="runtime stage")


def _smoke_command(overlays):
    # what attestation.end_to_end runs on a GPU worker (node_script with the host's overlays):
    # verify/smoke.sh.j2, its include verify/smoke-image.sh.j2 and, quoted, verify/workload.sh.j2
    from ccfactory.verify import attestation as att

    plan = att.SmokePlan(container_id="ccfactory-attest-0", handler="kata-qemu-nvidia-gpu-snp",
                         runtime_type="io.containerd.kata-qemu-nvidia-gpu-snp.v2", config_path="/opt/kata/c.toml",
                         annotations={}, env={"RES": "r"}, lab=False, timeout=600, gpu=True)  # fmt: skip
    return att.node_script(plan, overlays)


PRODUCERS = {
    "_managed_header.j2": lambda o: "\n".join(v or "" for v in _host_plan(o).values()),
    "host/60-ccfactory.cfg.j2": lambda o: _host_plan(o)["/etc/default/grub.d/60-ccfactory.cfg"],
    "host/ccfactory-tee.conf.j2": lambda o: _host_plan(o)["/etc/modprobe.d/ccfactory-tee.conf"],
    "host/ccfactory-no-host-gpu-driver.conf.j2": lambda o: _host_plan(o)["/etc/modprobe.d/ccfactory-no-host-gpu-driver.conf"],
    "gpu/ccfactory-vfio.conf.j2": _gpu_plan,
    "gpu/ccfactory-vfio-modules.conf.j2": _gpu_plan,
    "kbs/kbs-config.toml.j2": _kbs_config,
    "kbs/trustee-kbs.service.j2": _kbs_unit,
    "runtime/aa.toml.j2": _initdata,
    "runtime/cdh.toml.j2": _initdata,
    "runtime/policy.rego.j2": _initdata,
    "runtime/containerd-kata.toml.j2": _containerd_dropin,
    "runtime/kata-50-ccfactory.toml.j2": _kata_dropin,
    "runtime/containerd.service.j2": _containerd_unit,
    "verify/smoke.sh.j2": _smoke_command,
    "verify/smoke-image.sh.j2": _smoke_command,
    "verify/workload.sh.j2": _smoke_command,
}


def test_every_shipped_template_has_a_producer_here():
    on_disk = sorted([p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.j2")]
                     + [f"{p.parent.parent.name}/{p.name}" for p in (ROOT / "roles").glob("*/templates/*.j2")])
    assert list(packaged_templates()) == on_disk  # the resolver sees exactly the shipped files
    assert sorted(PRODUCERS) == on_disk, "a new template needs a producer in PRODUCERS (and must honour overlays)"


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_an_overlay_copy_of_each_template_wins(name, tmp_path):
    overlay = tmp_path / "site-templates"
    target = overlay / name
    target.parent.mkdir(parents=True)
    marker = f"# site overlay of {name}"
    original = _source(name).read_text()
    # the marker as a comment line every format here accepts (shell, TOML, Rego, systemd, modprobe)
    target.write_text(original.rstrip("\n") + f"\n{marker}\n" if name != "_managed_header.j2" else original + f"{marker}\n")
    before = PRODUCERS[name](())
    after = PRODUCERS[name]((str(overlay),))
    assert marker not in before
    assert marker in after


def test_the_runtime_role_renders_containerd_service_through_the_resolver():
    source = (ROOT / "roles/runtime/__init__.py").read_text()
    assert 'render("runtime/containerd.service.j2", overlays' in source
    assert "files.template(" not in source


def _calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            names.append(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names += [f"import {module or a.name}" for a in node.names]
    return names


def test_only_the_templating_module_builds_a_jinja_environment():
    offenders = []
    for path in [*(ROOT / "src/ccfactory").rglob("*.py"), *(ROOT / "roles").rglob("*.py")]:
        if path.name == "templating.py" and path.parent.name == "ccfactory":
            continue
        bad = {c for c in _calls(path) if c in ("Environment", "FileSystemLoader", "get_template", "template")
               or c.startswith("import jinja2")}  # fmt: skip
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_a_missing_overlay_directory_names_host_field_and_fix(tmp_path):
    missing = str(tmp_path / "nope")
    cfg = load_node_config("node7", ["workers", "snp"], {"template_overlay_dirs": [str(tmp_path)]})
    assert site_overlays(cfg) == (str(tmp_path),)
    with pytest.raises(TemplateOverlayError) as e:
        check_overlays([str(tmp_path), missing], host="node7")
    assert str(e.value) == (
        f"node7: template_overlay_dirs[1]: {missing} is not a directory on this controller; "
        "fix: create it or remove it from template_overlay_dirs"
    )
    with pytest.raises(TemplateOverlayError, match="is not a directory"):
        render("runtime/policy.rego.j2", [missing])


def test_an_overlay_file_that_shadows_no_template_is_an_error(tmp_path):
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "60-ccfactroy.cfg.j2").write_text("typo\n")
    with pytest.raises(TemplateOverlayError) as e:
        check_overlays([str(tmp_path)], host="node7")
    assert "node7: template_overlay_dirs[0]" in str(e.value)
    assert "host/60-ccfactroy.cfg.j2, which shadow no ccfactory template" in str(e.value)
    assert "fix: rename them" in str(e.value)


def test_the_host_plan_reports_a_bad_overlay_as_a_problem_not_a_crash(tmp_path):
    from ccfactory.distros import distro_for
    from ccfactory.roles.host.plan import plan_host
    from test_role_host_sim import SimNode

    overlay = tmp_path / "overlay"
    overlay.mkdir()
    cfg = load_node_config("node7", ["workers", "snp"], {"template_overlay_dirs": [str(overlay)]})
    shutil.rmtree(overlay)  # removed after validation, before the stage ran
    node = SimNode(tmp_path, "snp")
    info = node.info()
    plan = plan_host(cfg, info, node.tee_status(), node.boot_files(), distro_for(info.os_id, info.os_version))
    assert plan.problems == (
        f"node7: template_overlay_dirs[0]: {overlay} is not a directory on this controller; "
        "fix: create it or remove it from template_overlay_dirs",
    )


def test_validation_refuses_a_stray_overlay_file_before_any_host_is_touched(tmp_path):
    from ccfactory.config import InventoryError

    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "aa.tom.j2").write_text("x\n")
    with pytest.raises(InventoryError) as e:
        load_node_config("node7", ["workers", "snp"], {"template_overlay_dirs": [str(tmp_path)]})
    assert f"node7: template_overlay_dirs[0]: {tmp_path} has runtime/aa.tom.j2, which shadow no ccfactory template" in str(e.value)
    assert "fix: rename them to the template's relative path or remove them" in str(e.value)
