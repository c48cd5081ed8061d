"""Gather, from each SNP worker of the inventory, what the site's reference values need.

Called by the kbs stage on the KBS host at prepare time; reads facts of the *workers* (pyinfra
has every host connected before the deploy is prepared). Nothing is changed on any worker:

* ``python3 -c <snp_host.READER>`` (sudo): the SNP_PLATFORM_STATUS answer of ``/dev/sev``;
* ``/proc/cpuinfo`` (processor generation: TCB layout) and ``/sys/devices/system/cpu/smt/active``;
* per SNP shim: its configuration (``ccfactory.coco.spec.shim_config``) and every
  ``config.d/*.toml`` in name order (Kata reads them in directory order, katautils/config.go:1878-1900);
* the runtime's journal lines ``launching <qemu> with: [...]`` (``journalctl -t kata``, as Kata's
  CI reads them, k8s-confidential-attestation.bats:167-177).

The guest assets come from the kata-static artefact of the BOM on the controller
(``ccfactory.bom.fetch.artifact_for_host``), unpacked once per checksum.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from pyinfra import host
from pyinfra.api import FunctionCommand, operation

from ccfactory.kbs import refvalues as rv
from ccfactory.roles.kbs import site_values as sv
from ccfactory.roles.kbs import snp_host
KATA_ARTIFACT = "kata-static"
LOG_COMMAND = ("journalctl -t kata --no-pager -q -o cat 2>/dev/null | grep -F 'launching ' | grep -F ' with: [' "
               "| tail -n 200 || true")  # fmt: skip


def _text(lines) -> str:
    if lines is None:
        return ""
    return "\n".join(lines) if isinstance(lines, (list, tuple)) else str(lines)


def snp_shims(cfg) -> tuple[str, ...]:
    from ccfactory.coco import spec

    shims = cfg.runtime.shims or spec.shims_for(cfg.tee, cfg.has_gpus)
    return tuple(s for s in shims if spec.shim_tee(s) == "snp")


def worker_inputs(other, cfg) -> sv.SnpWorker:
    """The facts of one SNP worker (``other``: a pyinfra Host)."""
    from pyinfra.facts.files import FileContents, FindFiles
    from pyinfra.facts.server import Command

    from ccfactory.coco import spec

    sudo = {"_sudo": True}
    answer = other.get_fact(Command, command=f"python3 -c {shlex.quote(snp_host.READER)} 2>&1 || true", **sudo)
    shims = []
    log = _text(other.get_fact(Command, command=LOG_COMMAND, **sudo))
    for shim in snp_shims(cfg):
        main = spec.shim_config(shim)
        texts = []
        main_text = other.get_fact(FileContents, path=main, **sudo)
        if main_text is not None:
            texts.append(_text(main_text))
            dropins = other.get_fact(FindFiles, path=f"{main.rsplit('/', 1)[0]}/config.d", fname="*.toml", **sudo) or []
            for path in sorted(dropins):
                texts.append(_text(other.get_fact(FileContents, path=path, **sudo)))
        shims.append(sv.ShimInputs(shim, tuple(texts), log))
    return sv.SnpWorker(
        name=cfg.name, guest_policy=cfg.runtime.snp_guest_policy, platform_answer=_text(answer),
        cpuinfo=_text(other.get_fact(FileContents, path="/proc/cpuinfo")),
        smt_active=_text(other.get_fact(FileContents, path="/sys/devices/system/cpu/smt/active")),
        shims=tuple(shims),
    )  # fmt: skip


def guest_assets_for(cfg, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """(unpacked guest assets of the worker's kata-static, problem)."""
    from ccfactory.bom.fetch import artifact_for_host

    artifact, local, problem = artifact_for_host(cfg, KATA_ARTIFACT, progress=log)
    if problem or local is None:
        return None, problem or "kata-static has no file in the BOM"
    cache = Path(cfg.artifacts.cache_dir).expanduser() / "kata-guest-assets"
    try:
        return sv.guest_assets(local, artifact.sha256, cache), ""
    except (sv.AssetError, OSError) as exc:
        return None, str(exc)


def configs_of(inventory: Iterable, node_config: Callable) -> list[tuple]:
    """``(host, NodeConfig or the exception its validation raised)`` of every host, computed once
    per run and kept on the pyinfra ``Inventory`` (a no-op re-run asked for them once per caller:
    validating a lab host proves the lab from live state, with subprocesses, every time)."""
    cached = getattr(inventory, "_ccfactory_configs", None)
    if cached is not None and cached[0] is node_config:
        return cached[1]
    out: list[tuple] = []
    for other in inventory:
        try:
            out.append((other, node_config(other)))
        except Exception as exc:  # noqa: BLE001 - each caller decides what an invalid host means
            out.append((other, exc))
    try:
        inventory._ccfactory_configs = (node_config, out)  # type: ignore[attr-defined]
    except AttributeError:  # a list or other plain iterable: no cache
        pass
    return out


def snp_workers(inventory: Iterable, node_config: Callable):
    """(host, config) of every valid SNP worker of the inventory."""
    for other, cfg in configs_of(inventory, node_config):
        if isinstance(cfg, Exception):  # validation reported it already
            continue
        if cfg.is_worker and cfg.tee == "snp":
            yield other, cfg


def site_reference_values(
    inventory: Iterable, node_config: Callable, overrides: Mapping, shapes: Mapping[str, str],
    log: Callable[[str], None] = lambda _m: None, extra: Iterable[rv.Reference] = (),
) -> tuple[rv.ReferenceSet, dict]:  # fmt: skip
    """(every reference with its origin, pending reasons; the values RVPS must hold).
    ``extra``: references obtained elsewhere (TDX values pinned on first use)."""
    refs = rv.ReferenceSet(list(extra))
    assets: dict[str, tuple[Path | None, str]] = {}
    for other, cfg in snp_workers(inventory, node_config):
        key = f"{cfg.lab}:{cfg.lab_dir}:{cfg.artifacts.site_bom}"
        if key not in assets:
            assets[key] = guest_assets_for(cfg, log)
        root, problem = assets[key]
        try:
            worker = worker_inputs(other, cfg)
        except Exception as exc:  # noqa: BLE001 - an unreachable worker: its values stay pending
            refs.pending.append(f"{cfg.name}: facts not readable ({type(exc).__name__}: {exc})")
            continue
        got = sv.snp_worker_values(worker, root)
        if problem and worker.shims:
            got.pending = [p if "snp_launch_measurement" not in p else f"{p} ({problem})" for p in got.pending]
        refs.add(got.references)
        refs.pending += got.pending
    values = refs.values(shapes, overrides=overrides, strict=False)
    # a pending value the operator supplied is not pending
    refs.pending = [p for p in refs.pending if not any(f": {name}:" in p for name in overrides)]
    return refs, values


def summary(refs: rv.ReferenceSet, overrides: Mapping, values: Mapping) -> dict:
    """What the readiness report shows: each value's scope, origin and source, what RVPS holds,
    what is pending and why."""
    return {"references": refs.report(overrides), "registered": dict(sorted(values.items())),
            "pending": list(refs.pending)}  # fmt: skip


def write_summary(path: Path, refs: rv.ReferenceSet, overrides: Mapping, values: Mapping) -> bool:
    """Write :func:`summary` as JSON (0600, atomically) when it changed; True if written."""
    text = json.dumps(summary(refs, overrides, values), indent=1, sort_keys=True, default=str) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
    return True


# ------------------------------------------------------------------ values learned later in the same run
#
# On a fresh site the kbs stage runs before the runtime stage, so no guest has run yet and the
# SNP launch measurement is pending (its command line is learned from the runtime's log of the
# smoke-check VM, snp_measure.launch_from_config). deploy/site.py ends with the kbs role's
# ``register_learned`` step: when the smoke check of this run can supply a pending measurement,
# the values are collected again at execute time (after every worker's verify operation, pyinfra
# runs operations in order across hosts) and registered through the same client call.


def smoke_shim(cfg) -> str:
    """The shim whose guest the verify stage's smoke check launches on ``cfg`` (ccfactory.verify.attestation)."""
    from ccfactory.coco import spec

    return (spec.GPU_SHIMS if cfg.gpu.count > 0 else spec.TEE_SHIMS).get(cfg.tee or "", "")


def learnable_pending(summary_path: Path, inventory: Iterable, node_config: Callable) -> list[str]:
    """The pending measurements (``<worker>/<shim>``) that this run's smoke checks can supply:
    pending in the kbs stage's summary, for the shim the smoke check launches. Empty on a
    converged site (the previous run's log already gave them), so re-runs change nothing."""
    try:
        pending = json.loads(summary_path.read_text()).get("pending", [])
    except (OSError, ValueError):
        return []
    wanted = []
    for _other, cfg in snp_workers(inventory, node_config):
        scope = f"{cfg.name}/{smoke_shim(cfg)}"
        if any(str(p).startswith(f"{scope}: snp_launch_measurement:") for p in pending):
            wanted.append(scope)
    return wanted


def _register_learned(state, host, spec, recompute: Callable[[], dict], on_registered: Callable | None = None) -> bool:
    """Execute time, on the KBS host: collect the values again (the smoke checks have run) and
    register what RVPS does not hold yet, with the same client call and ledger as the kbs stage;
    then ``on_registered(state)`` (the site run refreshes its readiness report with it)."""
    from pyinfra.facts.files import FileContents

    from ccfactory.roles.kbs import operations as kbs_ops
    from ccfactory.kbs.client import Ledger
    from ccfactory.kbs.errors import KbsError

    values = recompute()
    lines = host.get_fact(FileContents, path=spec.instance_file, _sudo=True)
    instance = lines[0].strip() if lines else ""
    if not instance:
        host.log_styled(f"ccfactory: KBS reference values: {spec.instance_file} is missing", fg="red")
        return False
    try:
        client = spec.client()
        kbs_ops.wait_ready(client)
        done = client.ensure_reference_values(values, Ledger(spec.ledger, instance))
    except (KbsError, OSError) as exc:
        host.log_styled(f"ccfactory: KBS reference values: {exc}", fg="red")
        return False
    host.log(f"KBS reference values learned in this run: registered {', '.join(done) if done else 'nothing new'}")
    if on_registered is not None:
        on_registered(state)
    return True


@operation(is_idempotent=False)
def learned_reference_values(spec, recompute: Callable[[], dict], waiting: Sequence[str], on_registered: Callable | None = None):
    """Register, at execute time, the reference values this run's smoke checks made learnable.

    + spec: the kbs stage's ``AdminSpec`` (URL, keys, ledger)
    + recompute: collects the site's values again (``roles/kbs.site_reference_values``)
    + waiting: the ``<worker>/<shim>`` measurements expected from this run (for the log)
    + on_registered: called with pyinfra's state once registered (``ccfactory.deploys`` passes
      the verify stage's report refresh: this library does not know the verify stage)
    """
    host.log(f"KBS reference values: after the smoke checks, learning {', '.join(waiting)}")
    yield FunctionCommand(_register_learned, (spec, recompute, on_registered), {})
