"""Attestation end to end: a confidential container gets a freshly seeded KBS resource through
its guest's confidential data hub; the KBS releases it only to a token of the node's TEE.

``attestation.end_to_end`` (stage ``attestation``; workers with a TEE and a ``kbs_url``):

1. **Seed** (controller): 32 random bytes as a new resource
   ``ccfactory-verify/attestation-smoke-<tee>[-gpu]/<node>-<random>`` on the KBS, through the
   admin API with the KBS host's admin key. ccfactory's strict resource policy releases a path
   of that type only to a token whose ``cpu0`` evidence is of ``<tee>`` and, with ``-gpu``,
   whose ``gpu0`` is affirming (``ccfactory.kbs.policy.smoke_binding_rules``). Only its SHA-256
   goes to the node.
2. **Run** (node, one shell command): a short-lived container through the node's Kata TEE
   handler (``kata-qemu-<tee>``; on GPU nodes ``kata-qemu-nvidia-gpu-<tee>`` with the first
   GPU's VFIO group): ``ctr run --null-io`` with the handler's ``runtime_type`` and
   ``ConfigPath``. **Nothing changes what is measured**: the only Kata annotation is the node's
   initdata (``cc_init_data``, measured: its digest is HOST_DATA/MRCONFIGID in the evidence);
   the kernel command line, firmware, vCPUs and memory stay the handler's
   (``measured_annotations``; tests/unit/test_attestation_check.py). The image reaches the guest
   by guest pull: the runtime stage sets ``experimental_force_guest_pull`` on the TEE shims and the
   check names the image the guest pulls (``io.kubernetes.cri.image-name``, read by Kata for
   non-CRI containers: kata-containers@4.1.0:src/runtime/virtcontainers/kata_agent.go:1935-1967;
   ``runtime_smoke_image``, by digest). docs/attestation.md says why. The shell is in
   ``roles/verify/templates/`` (``smoke.sh.j2``, ``smoke-image.sh.j2``, ``workload.sh.j2``), rendered
   with the host's site overlays (``template_overlay_dirs``) first; every value reaches it
   shell-quoted (``node_script``).
3. **Verdict** inside the guest: the workload asks its CDH
   (``GET http://127.0.0.1:8006/cdh/resource/<path>``, guest-components ``api-server-rest``
   with the agent's default ``resource`` feature) and compares the SHA-256; ccfactory's agent
   policy denies reading a container's output, so the verdict leaves the guest as the exit code
   only (``0``, or ``64 + R``; see ``RESOURCE``). No secret or hash leaves it.
4. **Clean up**: the container (``ctr run --rm``, then a sweep) and the resource (``DELETE``
   through the admin API; a KBS that refuses gets it overwritten with random bytes, and the
   result says so).

The host-side copy of the image (``ctr`` needs one to create the container; the guest never
sees it) is Debian's ``busybox-static`` (~1 MB), built on the node from its own apt sources into
an OCI archive and imported once into containerd namespace ``ccfactory-verify``.

**In the lab** there is no TEE and no guest. The container still runs through the real
containerd and the Kata handler (the kata-static stand-in's shim hands it to runc); the guest's
CDH endpoint is the lab stand-in ``ccfactory.lab.standins.cdh`` (``resource`` feature, as
upstream's default), started in the container's network namespace for this container only,
which can present ``sample`` evidence only. The lab's verdict is therefore the negative one: the
KBS must **deny** the fresh resource (PolicyDeny, read from the stand-in's log) to a token of
TEE type ``sample``. The report names each step and whether it was real or simulated
(``LAB_STEPS``); if the KBS releases the resource to sample evidence, the check fails, in the
lab too. docs/attestation.md has the design and the sources.

Import this module to register the check (``ccfactory.roles.verify`` and the shipped suite).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ccfactory.coco import spec
from ccfactory.coco.initdata import ANNOTATION
from ccfactory.kbs.policy import SMOKE_REPO, smoke_type
from ccfactory.parsers.sections import echo_marker, split_sections
from ccfactory.templating import TemplateOverlayError, render, site_overlays
from ccfactory.verify.checks import CheckContext, Outcome, check, fail, ok

CHECK_ID = "attestation.end_to_end"
NAMESPACE = "ccfactory-verify"  # containerd namespace of the smoke image and container
IMAGE_REF = "localhost/ccfactory/attestation-smoke:busybox-1"  # bump the suffix when the recipe changes
CONTAINER_PREFIX = "ccfactory-attest-"
INITDATA_JSON = "/etc/ccfactory/coco/initdata.json"
INITDATA_ANNOTATION_FILE = "/etc/ccfactory/coco/initdata.annotation"
TASK_STATE = "/run/containerd/io.containerd.runtime.v2.task"  # <ns>/<id>/shim-binary-path: the shim containerd started
IMAGE_NAME_ANNOTATION = "io.kubernetes.cri.image-name"  # the image a force-guest-pull guest pulls (kata_agent.go:1943-1967)
KATA_ANNOTATION_PREFIX = "io.katacontainers."
APPLETS = ("sh", "wget", "sha256sum", "sed", "cut", "tr", "base64", "grep", "sleep", "cat", "rm", "printf")

# The workload's verdict: exit 0, or 64 + R.
RESOURCE = {
    0: "the guest's CDH returned the fresh resource and its SHA-256 matches",
    1: "the guest's CDH endpoint (127.0.0.1:8006) never answered",
    2: "the guest's CDH answered an error for the fresh resource (the KBS denied it, or attestation failed)",
    3: "the guest's CDH returned different bytes than were seeded",
}
# GPU nodes (GPU=1): the guest's `nvidia-smi conf-compute -f -grs -e`, judged inside the guest
# with the same rules as ccfactory.parsers.nvidia.parse_conf_compute (cc_on, gpus_ready,
# production); tests/unit/test_attestation_check.py checks the two agree on the real recordings.
GPU = {
    0: "the guest's nvidia-smi conf-compute says CC status ON, GPUs ready, environment PRODUCTION",
    1: "the guest has no nvidia-smi (the agent's CDI injection of nvidia.com/gpu=all did not happen)",
    2: "nvidia-smi conf-compute failed in the guest",
    3: "the guest's nvidia-smi conf-compute says CC status is not ON",
    4: "the guest's nvidia-smi conf-compute says the GPUs are not ready (ready state not `ready`)",
    5: "the guest's nvidia-smi conf-compute says the CC environment is not PRODUCTION",
}
LAB_EXPECTED = (2, 0)  # denied to sample evidence; no GPU step in the lab (GPU=0)
# the agent injects the guest's CDI devices listed here into the container (nvidia-smi and the
# driver libraries on NVIDIA guests): kata-containers@4.1.0:src/agent/src/device/mod.rs:303-340
CDI_ENV = ("VISIBLE_CDI_DEVICES", "nvidia.com/gpu=all")

# Every step a real node runs, and what the lab did instead (the report names each one).
LAB_STEPS = (
    ("seed", "real: a fresh resource on the KBS (the lab Trustee stand-in) through its admin API"),
    ("handler", "real: containerd created the container with the Kata handler's runtime type and shim binary"),
    ("guest", "SIMULATED: no TEE, no VM: the kata-static stand-in's shim ran the container with runc "
              "(the handler's ConfigPath not passed: runc's shim refuses Kata's options)"),
    ("measurement", "SIMULATED: no launch measurement; the command line, firmware and sizing the check passes are "
                    "still checked to be the handler's (cc_init_data is the only Kata annotation)"),
    ("image", "SIMULATED: no guest pull: runc ran the node's busybox copy, not the image the guest would pull"),
    ("initdata", "SIMULATED: initdata not measured; the CDH stand-in read the KBS settings from the container's "
                 "cc_init_data annotation as a guest's CDH reads them"),
    ("cdh", "SIMULATED: the guest's api-server-rest/CDH was the lab stand-in ccfactory.lab.standins.cdh in the "
            "container's network namespace (resource feature only, as upstream's default)"),
    ("evidence", "SIMULATED: sample evidence only (no snp/tdx report); the strict policy must deny it"),
    ("gpu", "SIMULATED: no GPU passthrough and no gpu0 evidence"),
    ("cleanup", "real: container and resource removed"),
)
LAB_SIMULATED = "; ".join(f"{step}: {what}" for step, what in LAB_STEPS)

def workload(overlays: Sequence[str] = ()) -> str:
    """The in-guest workload (``roles/verify/templates/workload.sh.j2``, site overlays first): run as
    ``/bin/sh -c`` in the container; its verdict is the exit code (``RESOURCE``, ``GPU``)."""
    return render("verify/workload.sh.j2", overlays)


WORKLOAD = workload()  # the shipped workload (tests run it with busybox against a fake CDH)


def _applies(cfg) -> bool:
    return cfg.is_worker and cfg.tee in ("snp", "tdx") and bool(cfg.kbs.url)


# ------------------------------------------------------------------ verdict encoding


def encode_verdict(resource: int, gpu: int = 0) -> int:
    return 0 if (resource, gpu) == (0, 0) else 64 + resource + 4 * gpu


def decode_verdict(code: int | None) -> tuple[int, int] | None:
    """(R, G) of the workload's exit code, or None when the code is not a verdict."""
    if code == 0:
        return 0, 0
    if code is None or not 65 <= code < 64 + 4 * len(GPU):
        return None
    gpu, resource = divmod(code - 64, 4)
    return resource, gpu


# ------------------------------------------------------------------ the KBS (controller side)


@dataclass(frozen=True)
class KbsTarget:
    host: str
    url: str
    ca_cert: Path
    admin_key: Path
    lab: bool
    gpu_gated: bool  # the site's policy needs an affirming GPU for every resource


def kbs_target(ctx: CheckContext) -> KbsTarget | str:
    """The KBS this worker attests to, with the controller-side admin key; or the problem."""
    from ccfactory.kbs.errors import KbsSettingsError
    from ccfactory.kbs.settings import kbs_settings

    if ctx.fleet is None:
        return ("the check needs the inventory's KBS host (CheckContext.fleet) to seed a resource with the KBS admin "
                "key; this runner did not provide it")  # fmt: skip
    hosts = [h for h in ctx.fleet.values() if h.cfg.is_kbs]
    if not hosts:
        return "the inventory has no host in group kbs: the KBS admin key on the controller cannot be found"
    wanted = (ctx.cfg.kbs.url or "").rstrip("/")
    same = [h for h in hosts if (h.cfg.kbs.url or "").rstrip("/") == wanted]
    chosen = same[0] if len(same) == 1 else hosts[0] if len(hosts) == 1 else None
    if chosen is None:
        return f"{len(hosts)} KBS hosts in the inventory and none (or several) serve {wanted}"
    try:
        settings = kbs_settings(chosen.cfg, chosen.data)
    except KbsSettingsError as exc:
        return str(exc)
    sources = settings.sources
    gpu_workers = any(h.cfg.is_worker and h.cfg.has_gpus for h in ctx.fleet.values())
    return KbsTarget(
        host=chosen.cfg.name,
        url=settings.url,
        ca_cert=Path(sources.ca_cert).expanduser() if sources.ca_cert else settings.pki_dir / "ca.crt",
        admin_key=Path(sources.admin_key).expanduser() if sources.admin_key else settings.pki_dir / "admin.key",
        lab=settings.lab,
        gpu_gated=settings.gpu_resources is None and gpu_workers,
    )


def smoke_path(node: str, tee: str, gpu: bool) -> str:
    """A fresh resource path no workload uses, bound by the strict policy to ``tee`` (and a GPU):
    ``ccfactory-verify/attestation-smoke-<tee>[-gpu]/<node>-<random>``."""
    slug = re.sub(r"[^A-Za-z0-9_\-]", "-", node.split("/")[-1].lstrip("@")).strip("-") or "node"
    return f"{SMOKE_REPO}/{smoke_type(tee, gpu)}/{slug[:40]}-{secrets.token_hex(8)}"


def remove_resource(client, path: str) -> tuple[bool, str]:
    """Delete the smoke resource; overwrite it with random bytes if the KBS refuses DELETE."""
    from ccfactory.kbs.errors import KbsError

    try:
        client.delete_resource(path)
        return True, "resource deleted"
    except KbsError as exc:
        refused = f"{getattr(exc, 'status', '')} {getattr(exc, 'kind', '')}".strip() or type(exc).__name__
        try:
            client.set_resource(path, secrets.token_bytes(32))
        except KbsError as again:
            return False, f"resource {path} was neither deleted ({exc}) nor overwritten ({again}); delete it on the KBS"
        return True, f"the KBS refused DELETE ({refused}): resource overwritten with random bytes (left on the KBS)"


# ------------------------------------------------------------------ the node side


@dataclass(frozen=True)
class SmokePlan:
    container_id: str
    handler: str
    runtime_type: str
    config_path: str  # "" in the lab (the stand-in's runc shim refuses Kata's runtime options)
    annotations: dict[str, str]
    env: dict[str, str]
    lab: bool
    timeout: int  # seconds for the whole ctr run
    gpu: bool = False  # pass the first NVIDIA GPU's VFIO group (GPU shim; not in the lab)
    cdh_program: str = field(default="", repr=False)  # lab only: the CDH stand-in's source


def measured_annotations(plan: SmokePlan) -> dict[str, str]:
    """The Kata (``io.katacontainers.*``) annotations the smoke container passes: what can change
    the guest Kata starts. Only ``cc_init_data`` may be here (measured as initdata, bound into the
    evidence); never ``kernel_params``, firmware, vCPUs or memory."""
    return {k: v for k, v in plan.annotations.items() if k.startswith(KATA_ANNOTATION_PREFIX)}


def node_script(plan: SmokePlan, overlays: Sequence[str] = ()) -> str:
    """The one shell command run on the node (as root): image, container, verdict, cleanup.

    The shell is ``roles/verify/templates/smoke.sh.j2`` (with ``smoke-image.sh.j2`` and the workload,
    ``workload.sh.j2``), rendered with the host's site ``overlays`` first. Every value reaches
    the template already shell-quoted here (``shlex.quote``, ``echo_marker``) or as a number."""
    q = shlex.quote
    args = ["run", "--rm", "--null-io", "--runtime", plan.runtime_type]
    if plan.config_path:
        args += ["--runtime-config-path", plan.config_path]
    if plan.lab:
        args += ["--cpu-shares", "0"]  # lab nodes have no cgroup controllers (lab-recipe section 4)
    if plan.gpu and not plan.lab:
        args += ["--device", "/dev/vfio/@GROUP@"]  # replaced on the node: the first NVIDIA GPU's IOMMU group
    env_args = [a for k, v in sorted(plan.env.items()) for a in ("--env", f"{k}={v}")]
    ann_args = [a for k, v in sorted(plan.annotations.items()) for a in ("--annotation", f"{k}={v}")]
    tail = [*env_args, IMAGE_REF, plan.container_id, "/bin/sh", "-c", workload(overlays)]
    lab = {}
    if plan.lab:
        lab = {
            "cdh_program_b64": q(base64.b64encode(plan.cdh_program.encode()).decode()),
            "initdata_annotation": q(ANNOTATION),
            "initdata_annotation_file": INITDATA_ANNOTATION_FILE,
            "cdh_timeout": int(plan.timeout) + 30,
        }
    return render(
        "verify/smoke.sh.j2",
        overlays,
        ns=q(NAMESPACE),
        cid=q(plan.container_id),
        ref=q(IMAGE_REF),
        applets=" ".join(APPLETS),
        container_prefix=CONTAINER_PREFIX,
        task_state=TASK_STATE,
        gpu_lookup=plan.gpu and not plan.lab,
        run_args=[q(a).replace("@GROUP@", "$G") if "@GROUP@" in a else q(a) for a in args],
        annotation_args=[q(a) for a in ann_args],
        command_args=[q(a) for a in tail],
        timeout=int(plan.timeout),
        lab=plan.lab,
        echo_marker=echo_marker,
        **lab,
    )


@dataclass(frozen=True)
class SmokeRun:
    exit: int | None
    ctr_stderr: str
    runtime_name: str
    shim_binary: str
    info_seen: bool
    annotations_passed: bool
    image_error: str
    cdh_events: tuple[dict, ...]
    cdh_stderr: str
    initdata_source: str
    leftover: bool
    gpu_missing: bool = False


def parse_run(stdout: str) -> SmokeRun:
    sections = {s.name: s for s in split_sections(stdout.splitlines())}

    def text(name: str) -> str:
        return "\n".join(sections[name].lines).strip() if name in sections else ""

    exit_code = None
    if "exit" in sections and sections["exit"].arg.strip().lstrip("-").isdigit():
        exit_code = int(sections["exit"].arg.strip())
    runtime_name, info_seen = "", False
    try:
        info = json.loads(text("info") or "null")
        if isinstance(info, dict):
            info_seen = True
            runtime_name = str((info.get("Runtime") or {}).get("Name", ""))
    except ValueError:
        pass
    image_error = ""
    if "image-build-exit" in sections and sections["image-build-exit"].arg.strip() != "0":
        image_error = text("image-build-exit") or f"exit {sections['image-build-exit'].arg.strip()}"
    events = []
    for line in text("cdh-log").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return SmokeRun(
        exit=exit_code,
        ctr_stderr=text("ctr-stderr"),
        runtime_name=runtime_name,
        shim_binary=text("shim"),
        info_seen=info_seen,
        annotations_passed="no-annotation" not in sections,
        image_error=image_error,
        cdh_events=tuple(events),
        cdh_stderr=text("cdh-stderr"),
        initdata_source=sections["initdata-source"].arg.strip() if "initdata-source" in sections else "",
        leftover=bool(text("leftover")),
        gpu_missing="no-vfio-gpu" in sections,
    )


# ------------------------------------------------------------------ judging


def _tail(text: str, limit: int = 400) -> str:
    one = " | ".join(x.strip() for x in text.splitlines() if x.strip())
    return one[-limit:]


def judge(plan: SmokePlan, run: SmokeRun, path: str, cleanup: tuple[bool, str], target: KbsTarget, tee: str) -> Outcome:
    sim = LAB_SIMULATED if plan.lab else ""
    cleaned, cleanup_text = cleanup
    where = f"{plan.handler} ({plan.runtime_type})"
    if run.image_error:
        return fail(f"the smoke image could not be built on the node: {_tail(run.image_error)}",
                    hint="the node needs apt access to Debian/Ubuntu's busybox-static (its apt sources or your mirror)",
                    simulated=sim)  # fmt: skip
    if run.gpu_missing:
        return fail(f"{where}: no NVIDIA GPU bound to vfio-pci on the node, so the GPU guest would have no GPU",
                    hint="run the gpu stage (it binds the GPUs to vfio-pci); check gpu.vfio_bound", simulated=sim)  # fmt: skip
    if not run.info_seen:
        why = _tail(run.ctr_stderr) or "no error text"
        return fail(f"containerd never created the smoke container through {where}: {why}",
                    hint="run the runtime stage; check `journalctl -u containerd` on the node", simulated=sim)  # fmt: skip
    if run.runtime_name != plan.runtime_type:
        ran = run.runtime_name or "unknown"
        return fail(f"containerd ran the smoke container with runtime {ran}, not {plan.runtime_type}",
                    hint="run the runtime stage", simulated=sim)  # fmt: skip
    shim = f"containerd-shim-{plan.runtime_type.removeprefix('io.containerd.').removesuffix('.v2')}-v2"
    if run.shim_binary and Path(run.shim_binary).name != shim:
        return fail(f"containerd started shim {run.shim_binary} for the smoke container, not {shim}",
                    hint="run the runtime stage (it links /usr/local/bin/containerd-shim-kata-<shim>-v2)", simulated=sim)  # fmt: skip
    if run.shim_binary:
        where += f", shim {run.shim_binary}"
    if run.leftover or not cleaned:
        what = "the smoke container is still on the node" if run.leftover else cleanup_text
        return fail(f"cleanup incomplete: {what}",
                    hint=f"remove it by hand (ctr -n {NAMESPACE} containers rm <id>; the KBS resource under {SMOKE_REPO}/)",
                    simulated=sim)  # fmt: skip
    verdict = decode_verdict(run.exit)
    if verdict is None:
        why = _tail(run.ctr_stderr) or "no error text"
        detail = f"the smoke container did not complete through {where} (ctr exit {run.exit}): {why}"
        hint = ("check `journalctl -u containerd` and the TEE state (host.tee_active); the guest pulls the image itself "
                f"(experimental_force_guest_pull): check that it reaches {plan.annotations.get(IMAGE_NAME_ANNOTATION, '?')}")  # fmt: skip
        if plan.lab:
            standin = _tail(run.cdh_stderr, 300) or "no stand-in output"
            hint = f"check the lab node's containerd and the CDH stand-in: {standin}"
        return fail(detail + f"; {cleanup_text}", hint=hint, simulated=sim)
    resource, gpu = verdict
    binding = f"{tee}{' and an affirming gpu0' if plan.gpu else ''}"
    said = RESOURCE[resource] + (f"; {GPU[gpu]}" if plan.gpu and not plan.lab else "")
    if plan.lab:
        return _judge_lab(plan, run, path, where, said, verdict, cleanup_text)
    if verdict == (0, 0):
        return ok(f"{where}: {said}: the KBS released {path} to a token whose cpu0 evidence is {binding} "
                  f"(the strict policy binds the path to it); initdata was the only Kata annotation; {cleanup_text}; "
                  "smoke container removed")  # fmt: skip
    hint = "check the KBS log (journalctl -u trustee-kbs) for why"
    if resource == 0 and gpu:
        hint = {1: "the guest found no NVIDIA CDI spec to inject: check the GPU guest (NVRC) and the GPU passthrough",
                2: "nvidia-smi could not talk to the GPU inside the guest: check the GPU passthrough and the guest driver",
                }.get(gpu, "run the gpu stage (gpu_cc_mode on) and check gpu.cc_mode; the guest sets the ready state "
                           "itself (nvrc.smi.srs=1 in the GPU shim's kernel_params)")  # fmt: skip
    if resource == 1:
        hint = ("the guest's api-server-rest did not come up: check the guest's agent log and the initdata "
                "(runtime.initdata)")  # fmt: skip
    elif resource == 2:
        hint = (f"the KBS or the attestation refused the guest: the policy releases this path only to {binding} "
                "evidence; check the KBS log (journalctl -u trustee-kbs), the reference values (kbs_reference_values), "
                "and that the kbs stage ran after this ccfactory version (it uploads the policy with the binding)")  # fmt: skip
        if target.gpu_gated and not plan.gpu:
            hint += ("; this site's policy needs an affirming GPU for every resource (kbs_gpu_resources unset with GPU "
                     "workers) and this node has no GPU: list your model paths in kbs_gpu_resources")  # fmt: skip
    return fail(f"{where}: {said}; {cleanup_text}", hint=hint)


def _judge_lab(plan: SmokePlan, run: SmokeRun, path: str, where: str, said: str, verdict, cleanup_text: str) -> Outcome:
    sim = LAB_SIMULATED
    if verdict[0] in (0, 3):
        return fail(f"{where}: the KBS released the fresh resource to sample (non-TEE) evidence through the lab CDH "
                    f"stand-in ({said}); {cleanup_text}",
                    hint="the resource policy must require TEE attestation: remove kbs_lab_permissive and run the kbs stage",
                    simulated=sim)  # fmt: skip
    resources = [e for e in run.cdh_events if e.get("event") == "resource" and e.get("path") == path]
    denied = [e for e in resources if e.get("outcome") == "denied" and e.get("kbs_error") == "PolicyDeny"]
    sample_token = any(e.get("token_tees") == ["sample"] for e in denied)
    if verdict != LAB_EXPECTED or not denied or not sample_token:
        seen = "; ".join(str(e.get("detail") or e.get("outcome")) for e in resources) or "no request reached it"
        return fail(f"{where}: {said}; lab CDH stand-in: {_tail(seen, 300)}; {cleanup_text}",
                    hint="expected in the lab: the KBS denies the resource (PolicyDeny) to a token of TEE type sample; "
                         "run the kbs and runtime stages and check journalctl -u trustee-kbs on the KBS host",
                    simulated=sim)  # fmt: skip
    return ok(
        f"lab: the smoke container ran through {where} with cc_init_data as its only Kata annotation; it asked the CDH "
        f"endpoint for the fresh resource {path}, and the KBS denied it (PolicyDeny) to a token of TEE type sample, "
        f"as the strict policy requires (it releases that path only to {plan.env['TEE']} evidence); {cleanup_text}; "
        "smoke container removed",
        simulated=sim,
    )


# ------------------------------------------------------------------ the check


@check(CHECK_ID, stage="attestation", applies=_applies)
def end_to_end(ctx: CheckContext) -> Outcome:
    """A confidential container gets a fresh KBS resource through its guest's CDH, released only to the node's TEE."""
    from ccfactory.facts.containerd import ContainerdRuntimes
    from ccfactory.kbs.client import KbsClient
    from ccfactory.kbs.errors import KbsError, PkiError

    cfg = ctx.cfg
    sim = LAB_SIMULATED if cfg.lab else ""
    gpu = cfg.has_gpus
    shims, _ = spec.select_shims(cfg.tee, cfg.gpu.count, cfg.gpu.count, cfg.runtime.shims)
    shim = (spec.GPU_SHIMS if gpu else spec.TEE_SHIMS)[cfg.tee]
    if shim not in shims:
        return fail(f"the node has no handler {spec.handler_name(shim)} (runtime_shims {list(shims)})",
                    hint=f"add {shim} to runtime_shims: the smoke container runs in the node's "
                         f"{'GPU ' if gpu else ''}TEE guest", simulated=sim)  # fmt: skip
    image = cfg.runtime.smoke_image or (IMAGE_REF if cfg.lab else "")
    if not image:
        return fail("runtime_smoke_image is not set: the TEE guest pulls the smoke image itself and needs a registry "
                    "reference it can reach",
                    hint="set runtime_smoke_image = \"<registry>/<busybox image>@sha256:<digest>\" in the inventory "
                         "(a busybox image with sh, wget, sha256sum; mirrored where your guests can pull it)")  # fmt: skip
    handler = spec.handler_name(shim)
    try:  # the shell is roles/verify/templates/*.sh.j2, with the host's site overlays first
        overlays = site_overlays(cfg)
    except TemplateOverlayError as exc:
        return fail(str(exc), hint=exc.fix, simulated=sim)
    target = kbs_target(ctx)
    if isinstance(target, str):
        return fail(target, hint="run the check through deploy/verify.py or the shipped suite with the whole inventory",
                    simulated=sim)  # fmt: skip
    containerd = ctx.fact(ContainerdRuntimes)
    settings = containerd.handlers.get(handler)
    if not (containerd.installed and containerd.active) or settings is None:
        return fail(f"containerd is not running with handler {handler}", hint="run the runtime stage", simulated=sim)
    if settings.get("snapshotter") and not cfg.lab:
        return fail(f"{handler} pulls images in the guest through the snapshotter {settings['snapshotter']}, which "
                    "needs image labels only the CRI sets; this check uses ctr with experimental_force_guest_pull",
                    hint="run the check on a node without runtime_guest_pull (nydus), or check through Kubernetes")  # fmt: skip
    out = ctx.run(f"cat {INITDATA_JSON}")
    try:
        initdata = json.loads(out.stdout)["annotations"][ANNOTATION]
    except (ValueError, KeyError, TypeError):
        return fail(f"no initdata on the node ({INITDATA_JSON})", hint="run the runtime stage with kbs_url set", simulated=sim)
    try:
        client = KbsClient(target.url, ca_cert=target.ca_cert, admin_key=target.admin_key, lab=target.lab)
    except (KbsError, PkiError, OSError) as exc:
        return fail(f"KBS admin client for {target.host}: {exc}", hint="run the kbs stage (it makes the admin key on the controller)",
                    simulated=sim)  # fmt: skip
    value = secrets.token_bytes(32)
    path = smoke_path(cfg.name, cfg.tee, gpu)
    try:
        client.set_resource(path, value)
    except KbsError as exc:
        return fail(f"could not seed the smoke resource on {target.url}: {exc}",
                    hint="run the kbs stage; check the KBS (kbs.health)", simulated=sim)  # fmt: skip
    plan = SmokePlan(
        container_id=f"{CONTAINER_PREFIX}{secrets.token_hex(6)}",
        handler=handler,
        runtime_type=settings.get("runtime_type") or spec.runtime_type(shim),
        config_path="" if cfg.lab else settings.get("config_path", ""),
        annotations={ANNOTATION: initdata, IMAGE_NAME_ANNOTATION: image},
        env={"RES": path, "EXPECT": hashlib.sha256(value).hexdigest(), "TEE": cfg.tee, "WAIT": "60" if cfg.lab else "180",
             # GPU step only where a GPU guest runs (the lab's runc container has no GPU)
             **({"GPU": "1", CDI_ENV[0]: CDI_ENV[1]} if gpu and not cfg.lab else {})},
        lab=cfg.lab,
        timeout=180 if cfg.lab else (cfg.runtime.kata_gpu_timeout if gpu else cfg.runtime.kata_timeout) + 300,
        gpu=gpu,
        cdh_program=_lab_cdh_program() if cfg.lab else "",
    )
    del value
    try:
        result = ctx.run(node_script(plan, overlays))
    finally:
        cleanup = remove_resource(client, path)
    run = parse_run(result.stdout)
    if not cfg.lab and not run.annotations_passed:
        return fail("ctr on this node cannot pass OCI annotations, so the guest would get no initdata",
                    hint="use the containerd the runtime stage installs (>= 1.7 has ctr run --annotation)")  # fmt: skip
    return judge(plan, run, path, cleanup, target, cfg.tee)


def _lab_cdh_program() -> str:
    """The lab CDH stand-in's source; only ever shipped to lab hosts (``lab = true`` passed the
    lab gate, which needs the same hooks installed)."""
    from ccfactory import labhooks

    hooks = labhooks.installed()
    if hooks is None:
        raise RuntimeError("lab host without the lab's hooks installed (ccfactory.lab.hooks.install_lab_hooks)")
    return hooks.cdh_program()
