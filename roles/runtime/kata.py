"""Kata operations: the BOM's kata-static in ``/opt/kata``, and ccfactory's per-shim drop-ins.

``installed`` unpacks the verified tarball into a staging directory, checks its layout,
then swaps it in for ``/opt/kata`` in one rename; the tree it replaces is kept as
``/opt/kata.ccfactory-prev`` (files that running shims still use stay on disk). It refuses
to replace a Kata that has running sandboxes unless the operator says the node is drained.

``shims_configured`` keeps the upstream configuration files untouched: each shim gets a
byte-identical copy under ``share/defaults/kata-containers/runtimes/<shim>/`` (kata-deploy's
layout) with ``config.d/50-ccfactory.toml`` beside it (the Go runtime reads ``config.d/``
next to the file it was given: katautils ``decodeDropIns``).
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation

from ccfactory.templating import render
from ccfactory.facts.kata import KataInstall, KataState, parse_probe, probe_command
from ccfactory.coco import spec
from ccfactory.coco.spec import ShimSettings

logger = logging.getLogger("pyinfra")

PREVIOUS = f"{spec.KATA_PREFIX}.ccfactory-prev"
STAGING = f"{spec.KATA_PREFIX}.ccfactory-new"
SOURCE = "runtime stage"


class _HostCallback(FunctionCommand):
    def execute(self, state, host, connector_arguments):  # noqa: ARG002
        return self.function(state, host, connector_arguments, *self.args, **self.kwargs)


def _fail(state, host, problem: str) -> bool:  # noqa: ARG001
    host.log_styled(f"ccfactory: {problem}", fg="red", log_func=logger.error)
    return False


def refusal(kata: KataState, version: str) -> str:
    return (
        f"not replacing Kata {kata.version or 'unknown'} with {version}: {len(kata.running)} workload(s) run on it "
        f"({', '.join(kata.running[:5])}). Replacing /opt/kata under running sandboxes breaks them (their shim, "
        "QEMU and guest assets live there). Drain the node (kubectl drain, or stop the sandboxes), then re-run; "
        "or re-run with drain=True (HostData runtime_drain) once the workloads may be interrupted"
    )


@operation()
def installed(archive: str, sha256: str, version: str, drain: bool = False):
    """kata-static ``version`` from ``archive`` (already on the host) in ``/opt/kata``.

    + archive: tarball path on the host (``.tar.zst``, ``.tar.xz`` or ``.tar.gz``; members ``opt/kata/...``)
    + sha256: the BOM's checksum, checked again on the host before anything is unpacked
    + version: the BOM version (recorded in ``/opt/kata/.ccfactory-install.json``)
    + drain: replace an installed Kata even while sandboxes run on it
    """
    kata = host.get_fact(KataInstall)
    if kata.present and kata.installed_sha256 == sha256:
        host.noop(f"kata-static {version} installed")
        return
    if kata.present and kata.running and not drain:
        yield FunctionCommand(_fail, (refusal(kata, version),), {})
        return
    marker = json.dumps({"version": version, "sha256": sha256, "archive": archive.rsplit("/", 1)[-1]})
    a, stage = shlex.quote(archive), shlex.quote(STAGING)
    yield StringCommand(
        " && ".join(
            [
                f"echo {shlex.quote(f'{sha256}  {archive}')} | sha256sum -c --quiet -",
                f"rm -rf {stage}",
                f"mkdir -p {stage}",
                f"tar -xf {a} -C {stage} --no-same-owner",
                f"test -x {stage}/opt/kata/bin/containerd-shim-kata-v2",
                f"test -x {stage}/opt/kata/bin/kata-runtime",
                f"{stage}/opt/kata/bin/kata-runtime --version >/dev/null",
                f"echo {shlex.quote(marker)} > {stage}/opt/kata/.ccfactory-install.json",
                f"rm -rf {shlex.quote(PREVIOUS)}",
                f"if [ -d {spec.KATA_PREFIX} ]; then mv {spec.KATA_PREFIX} {shlex.quote(PREVIOUS)}; fi",
                f"mv {stage}/opt/kata {spec.KATA_PREFIX}",
                f"rm -rf {stage}",
            ]
        )
    )


def render_shim_dropin(settings: ShimSettings, upstream_kernel_params: str, overlays: Sequence[str] = ()) -> str:
    """``config.d/50-ccfactory.toml`` for one shim (template ``runtime/kata-50-ccfactory.toml.j2``)."""
    return render(
        "runtime/kata-50-ccfactory.toml.j2",
        overlays,
        shim=settings.shim,
        handler=spec.handler_name(settings.shim),
        config_path=spec.shim_config(settings.shim),
        firmware=settings.firmware,
        confidential=settings.tee in ("snp", "tdx"),
        tee=settings.tee,
        snp_guest_policy=settings.snp_guest_policy,
        tdx_qgs_port=settings.tdx_qgs_port,
        gpu=settings.gpu,
        default_memory=settings.default_memory,
        default_vcpus=settings.default_vcpus,
        enable_annotations=list(settings.enable_annotations),
        kernel_params=spec.merged_kernel_params(upstream_kernel_params, settings.extra_kernel_params),
        dial_timeout=settings.dial_timeout,
        create_container_timeout=settings.create_container_timeout,
        force_guest_pull=settings.force_guest_pull,
        ccfactory_source=SOURCE,
    )


def plan_shims(kata: KataState, shims: Sequence[ShimSettings], overlays: Sequence[str]) -> tuple[list[str], list[str]]:
    """(shell commands, problems) taking the node's per-shim copies and drop-ins to the wanted
    ones; no commands when they are already in place."""
    commands, problems = [], []
    wanted = {s.shim for s in shims}
    for s in shims:
        up = kata.upstream.get(s.shim)
        if not up or up.get("kernel_params") is None:
            problems.append(f"kata-static has no usable {spec.upstream_config(s.shim)}: {(up or {}).get('error', 'missing')}")
            continue
        text = render_shim_dropin(s, up["kernel_params"], overlays)
        if kata.copies.get(s.shim) != up["sha256"]:
            copy = spec.shim_config(s.shim)
            commands.append(
                f"mkdir -p {shlex.quote(copy.rsplit('/', 1)[0])}/config.d && "
                f"cp {shlex.quote(spec.upstream_config(s.shim))} {shlex.quote(copy)}"
            )
        current = kata.dropins.get(s.shim, {})
        if current.get(spec.DROPIN_NAME, "").rstrip("\n") != text.rstrip("\n"):
            data = base64.b64encode(text.encode()).decode()
            path = shlex.quote(spec.shim_dropin(s.shim))
            commands.append(f"mkdir -p $(dirname {path}) && echo {data} | base64 -d > {path}.tmp && mv {path}.tmp {path}")
    for shim, files in kata.dropins.items():
        if shim not in wanted and spec.DROPIN_NAME in files:
            # a shim ccfactory configured earlier and no longer wants: its directory is ccfactory's
            commands.append(f"rm -rf {shlex.quote(spec.RUNTIMES_DIR + '/' + shim)}")
    return commands, problems


def _configure(state, host, args, shims, overlays) -> bool:
    ok, output = host.run_shell_command(StringCommand(probe_command()), print_output=False, **args)
    kata = parse_probe(output.output_lines)
    commands, problems = plan_shims(kata, shims, overlays)
    if problems:
        return _fail(state, host, "; ".join(problems))
    if not commands:
        return True
    ok, output = host.run_shell_command(StringCommand(" && ".join(commands)), print_output=state.print_output, **args)
    if not ok:
        return _fail(state, host, f"could not write the Kata drop-ins: {' | '.join(output.output_lines[-3:])}")
    return True


@operation()
def shims_configured(shims: list[ShimSettings], overlays: Sequence[str] = (), pending_install: bool = False):
    """Per-shim configuration copies with ccfactory's drop-in, for exactly ``shims``.

    + shims: ``ShimSettings`` per shim (firmware, TEE settings, sizing, timeouts, annotations,
      extra kernel parameters)
    + overlays: site template directories searched first
    + pending_install: Kata is (re)installed earlier in this run: decide at execute time
    """
    if not pending_install:
        kata = host.get_fact(KataInstall)
        commands, problems = plan_shims(kata, shims, overlays)
        if not commands and not problems:
            host.noop(f"Kata drop-ins in place for {', '.join(s.shim for s in shims)}")
            return
    yield _HostCallback(_configure, (list(shims), tuple(overlays)), {})
