"""The runtime stage's checks: containerd's Kata handlers, the pinned kata-static with its drop-ins, the CoCo initdata.

Registered on import; the verify stage loads this module (``ccfactory.verify.node_checks``).
"""

from __future__ import annotations

from ccfactory.facts.containerd import ContainerdRuntimes
from ccfactory.facts.kata import KataInstall
from ccfactory.verify.checks import CheckContext, Outcome, check, fail, lab_note, ok


LAB_KATA = "Kata is the lab's kata-static stand-in (its shim runs containers with runc, no VM); containerd is real"


def _runtime_node(cfg) -> bool:
    return cfg.is_worker and cfg.tee in ("snp", "tdx")


def _wanted_handlers(cfg) -> tuple[str, ...]:
    from ccfactory.coco.spec import handler_name, select_shims

    shims, _ = select_shims(cfg.tee, cfg.gpu.count, cfg.gpu.count, cfg.runtime.shims)
    return tuple(sorted(handler_name(s) for s in shims))


@check("runtime.containerd_handlers", stage="runtime", applies=_runtime_node, facts=(ContainerdRuntimes,))
def containerd_handlers(ctx: CheckContext) -> Outcome:
    """containerd runs and its effective config lists exactly ccfactory's Kata handlers."""
    state = ctx.fact(ContainerdRuntimes)
    if not (state.installed and state.active):
        return fail("containerd is not installed and running", hint="run the runtime stage")
    if not state.dump_ok:
        return fail(f"`containerd config dump` failed: {state.dump_error}", hint="run the runtime stage (it validates and rolls back)")
    kata = sorted(h for h in state.handlers if h.startswith("kata"))
    wanted = list(_wanted_handlers(ctx.cfg))
    if kata != wanted:
        return fail(f"Kata handlers {kata or 'none'}, wanted {wanted}", hint="run the runtime stage")
    return ok(f"containerd {state.version}: {', '.join(kata)}", simulated=lab_note(ctx, LAB_KATA))


@check("runtime.kata_installed", stage="runtime", applies=_runtime_node, facts=(KataInstall,))
def kata_installed(ctx: CheckContext) -> Outcome:
    """/opt/kata holds the BOM's kata-static, with ccfactory's drop-ins for every shim."""
    from ccfactory.bom import bom_for

    kata = ctx.fact(KataInstall)
    try:
        pinned = bom_for(ctx.cfg.lab, ctx.cfg.lab_dir).artifact("kata-static").version
    except KeyError as exc:
        return fail(str(exc).strip("'\""), hint="pin kata-static in the BOM")
    if not kata.present:
        return fail("/opt/kata is missing", hint="run the runtime stage")
    if kata.installed_version != pinned:
        return fail(f"kata-static {kata.installed_version or kata.version or 'unknown'} installed, BOM pins {pinned}",
                    hint="run the runtime stage (refuses under running sandboxes unless runtime_drain)")
    missing = [h for h in _wanted_handlers(ctx.cfg) if not kata.dropins.get(h.removeprefix("kata-"))]
    if missing:
        return fail(f"no ccfactory drop-in for {', '.join(missing)}", hint="run the runtime stage")
    return ok(f"kata-static {pinned} with drop-ins", simulated=lab_note(ctx, LAB_KATA))


INITDATA_DIR = "/etc/ccfactory/coco"
_INITDATA_READS = (
    f"cat {INITDATA_DIR}/initdata.json 2>/dev/null",
    f"cat {INITDATA_DIR}/initdata.toml 2>/dev/null",
    f"cat {INITDATA_DIR}/initdata.annotation 2>/dev/null",
)


def _initdata_digest_command(algorithm: str) -> str:
    return f"{algorithm}sum {INITDATA_DIR}/initdata.toml"


def _initdata_reads(ctx: CheckContext) -> list[str]:
    """The files, and the digest in the algorithm the runtime stage writes for this TEE
    (``ccfactory.coco.initdata.ALGORITHM_FOR_TEE``; another one recorded runs on its own)."""
    from ccfactory.coco.initdata import ALGORITHM_FOR_TEE

    return [*_INITDATA_READS, _initdata_digest_command(ALGORITHM_FOR_TEE.get(ctx.cfg.tee or "", "sha256"))]


@check("runtime.initdata", stage="runtime", applies=lambda cfg: _runtime_node(cfg) and bool(cfg.kbs.url),
       commands=_initdata_reads)
def initdata_in_place(ctx: CheckContext) -> Outcome:
    """The CoCo initdata for this site's KBS is on the node; its digest and annotation match the document."""
    import json as _json

    from ccfactory.coco.initdata import decode_annotation

    base = INITDATA_DIR
    summary_text = ctx.run(_INITDATA_READS[0]).stdout
    document = ctx.run(_INITDATA_READS[1]).stdout
    annotation = ctx.run(_INITDATA_READS[2]).stdout.strip()
    if not summary_text.strip() or not document:
        return fail(f"no initdata in {base}", hint="run the runtime stage with kbs_url set")
    try:
        summary = _json.loads(summary_text)
    except ValueError:
        return fail(f"{base}/initdata.json is not JSON", hint="run the runtime stage")
    algorithm = summary.get("algorithm", "sha256")
    if algorithm not in ("sha256", "sha384", "sha512"):
        return fail(f"initdata digest algorithm {algorithm!r} is not one ccfactory writes", hint="run the runtime stage")
    # hash the file's exact bytes on the node (command output loses trailing newlines)
    digest = ctx.run(_initdata_digest_command(algorithm)).stdout.split()[0] if document else ""
    if digest != summary.get("digest"):
        return fail(f"initdata.toml {algorithm} {digest[:16]}... differs from the recorded digest", hint="run the runtime stage")
    if decode_annotation(annotation).rstrip("\n") != document.rstrip("\n"):
        return fail("initdata.annotation does not decode to initdata.toml", hint="run the runtime stage")
    if ctx.cfg.kbs.url not in document:
        return fail(f"initdata does not point at {ctx.cfg.kbs.url}", hint="run the runtime stage")
    return ok(f"initdata for {ctx.cfg.kbs.url}, {algorithm} {digest[:16]}...")
