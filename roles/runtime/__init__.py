"""Role ``runtime``: containerd with one Kata handler per shim the node needs, Kata from the BOM
with ccfactory's per-shim drop-ins, CoCo guest-component settings (initdata), and the
Kubernetes objects for the handlers.

For workers with a TEE (others: nothing to do), from the config and one read of the facts
(``ContainerdRuntimes``, ``KataInstall``, ``NvidiaGpus``):

1. **Shims**: ``qemu-snp`` or ``qemu-tdx``, plus ``qemu-nvidia-gpu-snp``/``-tdx`` with GPUs
   (``spec.py``). A requested GPU shim on a node without GPUs fails the host.
2. **Artifacts**: kata-static (and, when needed, containerd) from the BOM, fetched once on the
   controller, sha256-checked, cached, pushed; a checksum mismatch installs nothing.
3. **containerd**: the installed one if it meets the pinned Kata's minimum
   (``kata.toml``, or the tarball's own metadata), else the distribution's, else the BOM's
   static release; then enabled and running. Packages through the distribution's package
   manager (``distros.toml``: apt, or dnf on RHEL) under its own package names; a release
   without a containerd package (RHEL: ``packages.containerd = ""``) gets the BOM's release.
   The fact reads the package index without refreshing it; on a node that never downloaded
   one, the release's ``containerd_archive`` version (``distros.toml``) stands in, and the
   install operation refreshes the index first (apt ``update=True``; dnf refreshes expired
   metadata itself); with no such version the stage fails naming ``refresh_index``.
4. **Kata**: ``/opt/kata`` from the tarball (``roles/runtime/kata.py``: refuses to replace a Kata
   with running sandboxes unless ``drain``); ``/usr/local/bin/containerd-shim-kata-<shim>-v2``
   links (containerd 1.6 ignores ``runtime_path``); per-shim copies with
   ``config.d/50-ccfactory.toml`` drop-ins.
5. **containerd handlers** through ``roles/runtime/containerd.py`` (validate with the node's
   containerd, keep the previous file, restart, health-check, roll back).
6. **Initdata** for the site's KBS (``ccfactory.coco.initdata``) in ``/etc/ccfactory/coco/``
   and in the controller-side report.
7. **Kubernetes**: RuntimeClass per handler and the node's labels, rendered on the
   controller; applied with kubectl only when a kubeconfig is given.

Every setting comes from the inventory (``runtime_*`` keys); an OEM's code may pass keyword
arguments to ``apply`` instead, and a given argument wins (``guest_pull=False`` included; None
means "the inventory's"). A converged node gets no change and no restart.

Example (deploy file)::

    from ccfactory.roles import runtime
    runtime.apply()
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

from pyinfra import host
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.facts.server import Which
from pyinfra.operations import apt, dnf, files, systemd

from ccfactory.bom import BomError, bom_for
from ccfactory.bom.fetch import artifact_for_host
from ccfactory.coco.initdata import CocoSettings, InitdataError, credentials_from, render_initdata
from ccfactory import config  # config imports this stage's options: no name is taken from it at import time
from ccfactory.validate import safe_path_component
from ccfactory.distros import distro_for, supported_list
from ccfactory.facts.node import NodeOs
from ccfactory.facts.containerd import ContainerdRuntimes
from ccfactory.facts.gpu import NvidiaGpus
from ccfactory.facts.kata import KataInstall
from ccfactory.operations.checks import requirement
from ccfactory.roles.runtime import containerd as containerd_ops
from ccfactory.roles.runtime import kata as kata_ops
from ccfactory.templating import check_overlays, render
from ccfactory.coco import spec
from ccfactory.roles.runtime import k8s
from ccfactory.coco import containerd_config as containerd_cc
from ccfactory.coco.containerd_config import Handler

SUDO = {"_sudo": True}
ARTIFACT_DIR = "/opt/ccfactory/artifacts"
COCO_DIR = "/etc/ccfactory/coco"
STANDIN_METADATA = ("opt/kata/share/kata-containers/ccfactory-lab-standin.toml",)

logger = logging.getLogger("pyinfra")


def _fetch(cfg, name: str):
    """(artifact, local path, problem)"""
    return artifact_for_host(cfg, name, progress=lambda m: host.log(m, log_func=logger.info))


def tarball_requires(path: str | None) -> dict | None:
    """``[requires]`` of a kata-static tarball's own metadata (the lab stand-in has one), or None.
    Only .tar.gz/.tar.xz are read here (Python cannot read zstd before 3.14)."""
    if not path or not path.endswith((".tar.gz", ".tgz", ".tar.xz", ".txz")):
        return None
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.lstrip("./") in STANDIN_METADATA:
                    handle = tar.extractfile(member)
                    return tomllib.loads(handle.read().decode()).get("requires", {}) if handle else None
    except (OSError, tarfile.TarError, tomllib.TOMLDecodeError):
        return None
    return None


def _decompressor(filename: str) -> tuple[str, str] | None:
    """(command, package role in distros.toml [distro.packages])"""
    if filename.endswith(".zst"):
        return "zstd", "zstd"
    if filename.endswith((".xz", ".txz")):
        return "xz", "xz"
    return None


@operation()
def _kubectl_applied(kubeconfig: str, paths: list[str]):
    """The manifests applied with ``kubectl apply --server-side`` unless ``kubectl diff`` is clean."""
    differs, message = k8s.pending(kubeconfig, [Path(p) for p in paths])
    if not differs:
        host.noop("RuntimeClasses and node labels already applied")
        return

    def _apply(state, host):  # noqa: ARG001
        args = ["apply", "--server-side", "--field-manager=ccfactory"]
        for p in paths:
            args += ["-f", p]
        r = k8s.kubectl(kubeconfig, *args)
        if r.returncode != 0:
            host.log_styled(f"ccfactory: kubectl apply failed: {(r.stderr or r.stdout).strip()[-800:]}", fg="red",
                            log_func=logger.error)
            return False
        return True

    yield FunctionCommand(_apply, (), {})


def _given(argument, inventory_value):
    """``argument`` unless it is None (not given): then the inventory's value."""
    return inventory_value if argument is None else argument


@deploy("Runtime")
def apply(
    *,
    shims: Sequence[str] | None = None,
    guest_pull: bool | None = None,
    drain: bool | None = None,
    kubeconfig: str | None = None,
    output_dir: str | None = None,
    template_dirs: Sequence[str] | None = None,
    kata_defaults: spec.KataDefaults | None = None,
    coco_resources: Sequence[str] | None = None,
    health_timeout: float | None = None,
) -> None:
    cfg = config.node_config(host)
    if not cfg.is_worker or cfg.tee not in ("snp", "tdx"):
        host.noop("no Kata runtime for this host (not a worker with a TEE)")
        return
    # an argument an OEM's code passes wins, False and () included; None: the inventory's setting
    rt = cfg.runtime
    shims = _given(shims, rt.shims)
    guest_pull = _given(guest_pull, rt.guest_pull)
    drain = _given(drain, rt.drain)
    kubeconfig = _given(kubeconfig, rt.kubeconfig)
    output_dir = _given(output_dir, rt.output_dir)
    template_dirs = tuple(_given(template_dirs, rt.template_overlay_dirs))
    kata_defaults = _given(kata_defaults, spec.KataDefaults(
        memory=rt.kata_memory, vcpus=rt.kata_vcpus, gpu_memory=rt.kata_gpu_memory, gpu_vcpus=rt.kata_gpu_vcpus,
        timeout=rt.kata_timeout, gpu_timeout=rt.kata_gpu_timeout, snp_guest_policy=rt.snp_guest_policy,
        tdx_qgs_port=rt.tdx_qgs_port,
    ))  # fmt: skip
    coco_resources = tuple(_given(coco_resources, rt.coco_resource_uris))
    health_timeout = _given(health_timeout, rt.health_timeout)
    overlays = check_overlays(template_dirs, host=cfg.name)
    defaults = kata_defaults or spec.KataDefaults()

    # --- what this node needs
    gpus_found = len(getattr(host.get_fact(NvidiaGpus), "gpus", ()) or ()) if cfg.has_gpus or shims else 0
    selected, problems = spec.select_shims(cfg.tee, cfg.gpu.count, gpus_found, tuple(shims) if shims is not None else None)
    if guest_pull:
        try:
            bom_for(cfg.lab, cfg.lab_dir).artifact("nydus-snapshotter")
        except (KeyError, BomError) as exc:
            problems.append(f"guest pull needs the nydus snapshotter: {exc.args[0] if exc.args else exc}")
    kata_artifact, kata_local, problem = (None, None, "") if problems else _fetch(cfg, "kata-static")
    if problem:
        problems.append(f"kata-static: {problem}")
    info = host.get_fact(NodeOs)
    distro = distro_for(info.os_id, info.os_version)
    if distro is None:
        problems.append(f"{info.os_id or 'unknown OS'} {info.os_version} is not a supported distribution (supported: "
                        f"{supported_list()}); the runtime stage needs its package manager (ccfactory/data/distros.toml)")
        containerd = host.get_fact(ContainerdRuntimes, **SUDO)
    else:
        containerd = host.get_fact(ContainerdRuntimes, package_manager=distro.package_manager,
                                   package=distro.package("containerd"), **SUDO)
    kata = host.get_fact(KataInstall, **SUDO)

    choice = None
    if not problems and kata_artifact is not None:
        need = spec.kata_requirement(kata_artifact.version, tarball_requires(kata_local))
        label = f"kata-static {kata_artifact.version}"
        bom_ctr, bom_local, bom_problem = None, None, ""
        candidate = containerd.candidate
        installed_ok = containerd.installed and spec.at_least(containerd.version, need.min_containerd)
        if not candidate and containerd.index_missing and not installed_ok:
            candidate = distro.archive_containerd(info.os_version)
            if candidate:
                host.log(f"no package index on this node (facts never refresh it): {distro.id} {info.os_version}'s "
                         f"archive offers containerd {candidate} (distros.toml containerd_archive); the install "
                         "refreshes the index first", log_func=logger.info)
            else:
                problems.append(
                    f"containerd: this node has no {distro.package_manager} package index, so what {distro.id} "
                    f"{info.os_version} offers is unknown (ccfactory's facts are read-only) and distros.toml records "
                    f"no containerd_archive version for it: run `{distro.refresh_index}` on the node (or install "
                    "containerd), then re-run"
                )
        if not problems and not installed_ok:
            if not (candidate and spec.at_least(candidate, need.min_containerd)):
                bom_ctr, bom_local, bom_problem = _fetch(cfg, "containerd")
                bom_problem = f"the BOM's containerd could not be fetched: {bom_problem}" if bom_problem else ""
        choice = None if problems else spec.choose_containerd(
            containerd.version if containerd.installed else None,
            candidate or None,
            bom_ctr.version if bom_ctr else None,
            bom_problem,
            need.min_containerd,
            f"{label} (minimum from {need.source})",
        )
        problems += list(choice.problems) if choice else []
        if choice and not choice.problems and containerd.installed:
            root = containerd_cc.root_config_problem(containerd.main_config, choice.drop_in, choice.config_version)
            if root:
                problems.append(f"containerd: {root}")
    requirement(
        name="Runtime stage inputs",
        satisfied=not problems,
        problem="runtime stage: nothing was changed:\n  - " + "\n  - ".join(problems),
    )
    if problems or choice is None or kata_artifact is None or distro is None:
        return
    # the drop-in follows the root config's version (containerd 2.x refuses a newer drop-in)
    config_version = (containerd_cc.root_version(containerd.main_config, choice.config_version)
                      if choice.drop_in else choice.config_version)
    host.log(f"containerd: {choice.reason}; {'drop-in' if choice.drop_in else 'main config'} mode, config version {config_version}",
             log_func=logger.info)

    # --- containerd installed, enabled, running
    packages = []
    dec = _decompressor(kata_artifact.filename)
    install_kata = not (kata.present and kata.installed_sha256 == kata_artifact.sha256)
    if install_kata and dec and not host.get_fact(Which, command=dec[0]):
        packages.append(distro.package(dec[1]))
    if choice.action == "distro":
        packages.append(distro.package("containerd"))
    if choice.action == "bom" and not host.get_fact(Which, command="runc"):
        packages.append(distro.package("runc"))
    if packages and distro.package_manager == "dnf":
        # no update=True: pyinfra's dnf `update` runs `dnf update` (every package); dnf install
        # refreshes expired repository metadata itself (dnf.conf(5) metadata_expire)
        dnf.packages(name="Runtime packages", packages=packages, **SUDO)
    elif packages:
        apt.packages(name="Runtime packages", packages=packages, update=True, **SUDO)
    if choice.action == "bom":
        bom_ctr = bom_for(cfg.lab, cfg.lab_dir).artifact("containerd")
        archive = f"{ARTIFACT_DIR}/{bom_ctr.filename}"
        files.put(name="Push the containerd release", src=bom_local, dest=archive, mode="0644", **SUDO)
        containerd_ops.release_installed(name=f"containerd {bom_ctr.version} in /usr/local", archive=archive,
                                         sha256=bom_ctr.sha256, version=bom_ctr.version, **SUDO)
        files.put(name="containerd systemd unit", dest="/etc/systemd/system/containerd.service", mode="0644",
                  src=io.StringIO(render("runtime/containerd.service.j2", overlays, ccfactory_source="runtime stage")), **SUDO)
    systemd.service(name="containerd enabled and running", service="containerd", running=True, enabled=True,
                    daemon_reload=choice.action == "bom", **SUDO)

    # --- Kata
    archive = f"{ARTIFACT_DIR}/{kata_artifact.filename}"
    if install_kata:
        files.put(name="Push kata-static", src=kata_local, dest=archive, mode="0644", **SUDO)
        kata_ops.installed(name=f"kata-static {kata_artifact.version} in /opt/kata", archive=archive,
                           sha256=kata_artifact.sha256, version=kata_artifact.version, drain=drain, **SUDO)
    # also when Kata is in place already: a run cut off after the install (the node finished it,
    # the controller never heard) leaves the pushed tarball behind
    files.file(name="Remove the pushed kata-static tarball", path=archive, present=False, **SUDO)
    for shim in selected:
        files.link(name=f"Shim link for {spec.handler_name(shim)}", path=spec.shim_link(shim), target=spec.SHIM_BINARY, **SUDO)
    for link in containerd.shim_links:
        if link not in {spec.shim_link(s).rsplit("/", 1)[1] for s in selected}:
            files.link(name=f"Remove shim link {link}", path=f"{spec.SHIM_LINK_DIR}/{link}", present=False, **SUDO)

    initdata = _initdata(cfg, overlays, coco_resources)
    # the guest kernel command line stays upstream's: SNP measures it (kernel-hashes) and TDX's
    # default policy checks it; the guest's KBS settings reach it through initdata only
    settings = [spec.shim_settings(s, defaults, force_guest_pull=not guest_pull) for s in selected]
    kata_ops.shims_configured(name="Kata per-shim drop-ins", shims=settings, overlays=overlays,
                              pending_install=install_kata, **SUDO)

    # --- containerd handlers (validated, restarted, health-checked, rolled back)
    snapshotter = spec.NYDUS_SNAPSHOTTER if guest_pull else ""
    handlers = [Handler.for_shim(s, snapshotter) for s in selected]
    containerd_ops.runtimes_configured(
        name=f"containerd handlers {', '.join(h.name for h in handlers)}",
        handlers=handlers,
        drop_in=choice.drop_in,
        config_version=choice.config_version,
        guest_pull=guest_pull,
        overlays=overlays,
        health_timeout=health_timeout,
        **SUDO,
    )

    # --- CoCo settings on the node and in the report
    if initdata:
        for name, text in (
            ("initdata.toml", initdata.document),
            ("initdata.annotation", initdata.annotation + "\n"),
            ("initdata.json", initdata.summary_json()),
        ):
            files.put(name=f"CoCo {name}", src=io.StringIO(text), dest=f"{COCO_DIR}/{name}", mode="0644", **SUDO)
        # written by earlier ccfactory versions (agent kernel parameters, no longer used)
        files.file(name="CoCo kernel-params removed", path=f"{COCO_DIR}/kernel-params", present=False, **SUDO)
    else:
        host.log("no kbs_url: CoCo initdata not rendered (guests would not know their KBS)", log_func=logger.warning)

    out = Path(output_dir).expanduser()
    manifests = k8s.write_manifests(out / "k8s", host.name, selected)
    report = {
        "host": host.name,
        "tee": cfg.tee,
        "handlers": [h.name for h in handlers],
        "kata": {"version": kata_artifact.version, "sha256": kata_artifact.sha256},
        "containerd": {"action": choice.action, "version": choice.version, "config_version": config_version,
                       "mode": "drop-in" if choice.drop_in else "main config"},
        "initdata": initdata.summary() if initdata else None,
        "initdata_document": initdata.document if initdata else None,
        "node_files": {"initdata": f"{COCO_DIR}/initdata.toml", "summary": f"{COCO_DIR}/initdata.json"},
        "manifests": [str(p) for p in manifests],
    }
    report_name = f"{safe_path_component(host.name)}.json"  # a host name never walks out of the directory
    k8s.write_if_changed(out / "reports" / report_name, json.dumps(report, indent=2, sort_keys=True) + "\n")
    if kubeconfig:
        _kubectl_applied(name="RuntimeClasses and node labels", kubeconfig=str(Path(kubeconfig).expanduser()),
                         paths=[str(p) for p in manifests])


def _initdata(cfg, overlays, resources):
    if not cfg.kbs.url:
        return None
    cert = ""
    if cfg.kbs.ca_cert:
        ca = Path(cfg.kbs.ca_cert).expanduser()
        if not ca.is_file():
            requirement(
                name="KBS CA certificate",
                satisfied=False,
                problem=f"kbs_ca_cert {ca} does not exist on the controller; run the kbs stage first "
                "(it creates the site CA) or point kbs_ca_cert at your CA",
            )
            return None
        cert = ca.read_text()
    try:
        return render_initdata(
            CocoSettings(kbs_url=cfg.kbs.url, kbs_cert=cert, credentials=credentials_from(resources), overlays=overlays),
            tee=cfg.tee,
        )
    except InitdataError as exc:
        requirement(name="CoCo initdata", satisfied=False, problem=f"initdata: {exc}")
        return None
