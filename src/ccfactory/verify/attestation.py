"""Attestation end to end: a confidential container gets a freshly seeded KBS resource through
its guest's confidential data hub, and the attestation token is of the node's TEE type.

``attestation.end_to_end`` (stage ``attestation``; workers with a TEE and a ``kbs_url``):

1. **Seed** (controller): 32 random bytes as a new resource
   ``ccfactory-verify/attestation-smoke/<node>-<random>`` on the KBS, through the admin API
   with the KBS host's admin key (found through ``CheckContext.fleet``: the inventory's
   ``kbs`` host whose ``kbs_url`` the worker uses). Only its SHA-256 goes to the node.
2. **Run** (node, one shell command): a short-lived container through the node's Kata TEE
   handler (``kata-qemu-snp`` / ``kata-qemu-tdx``, ``ccfactory.coco.spec``): ``ctr run`` with
   the handler's ``runtime_type`` and ``ConfigPath`` as containerd's effective config has
   them, the node's initdata (``io.katacontainers.config.hypervisor.cc_init_data``) and
   ``agent.guest_components_rest_api=all`` (so the guest's ``/aa/token`` answers too). The
   workload does what CoCo workloads do: ``GET http://127.0.0.1:8006/cdh/resource/<path>``
   (guest-components ``api-server-rest``), hashes what it got, reads
   ``/aa/token?token_type=kbs`` and looks at the token's evidence types.
3. **Compare and check the TEE type** inside the guest: ccfactory's default Kata agent
   policy denies reading a container's output (``ReadStreamRequest``), so the verdict
   leaves the guest as the exit code only (``0``, or ``64 + 8*R + T``; see ``RESOURCE`` and
   ``TOKEN``); no secret, hash or token leaves it.
4. **Clean up**: the container (``ctr run --rm``, then a sweep) and the resource
   (``DELETE`` through the admin API; a KBS that refuses gets it overwritten with random
   bytes, and the result says so).

The image is tiny (Debian's ``busybox-static``, ~1 MB): built on the node from the node's own
apt sources (the lab's apt proxy in the lab) into an OCI archive and imported once into
containerd namespace ``ccfactory-verify`` (``localhost/ccfactory/attestation-smoke:busybox-1``),
which is its cache. Nothing else stays on the node.

**In the lab** there is no TEE and no guest. The container still runs through the real
containerd and the Kata handler (the kata-static stand-in's shim hands it to runc); the
guest's CDH/AA endpoint is the lab stand-in ``ccfactory.lab.standins.cdh``, started in the
container's network namespace for this container only, which can present ``sample``
evidence only. The lab's verdict is therefore the negative one: the KBS must **deny** the
fresh resource to that evidence (403 PolicyDeny, read from the stand-in's log) and the
token must be recognised as ``sample``. Then the check passes with ``simulated`` saying
exactly what was not exercised; if the KBS releases the resource to sample evidence, it
fails, in the lab too. docs/attestation.md has the design and the sources.

Import this module to register the check (``ccfactory.roles.verify`` and the shipped suite).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ccfactory.coco import spec
from ccfactory.coco.initdata import ANNOTATION, KERNEL_PARAMS_ANNOTATION
from ccfactory.parsers.sections import echo_marker, split_sections
from ccfactory.verify.checks import CheckContext, Outcome, check, fail, ok

CHECK_ID = "attestation.end_to_end"
NAMESPACE = "ccfactory-verify"  # containerd namespace of the smoke image and container
IMAGE_REF = "localhost/ccfactory/attestation-smoke:busybox-1"  # bump the suffix when the recipe changes
CONTAINER_PREFIX = "ccfactory-attest-"
SMOKE_REPO, SMOKE_TYPE = "ccfactory-verify", "attestation-smoke"
INITDATA_JSON = "/etc/ccfactory/coco/initdata.json"
INITDATA_ANNOTATION_FILE = "/etc/ccfactory/coco/initdata.annotation"
TASK_STATE = "/run/containerd/io.containerd.runtime.v2.task"  # <ns>/<id>/shim-binary-path: the shim containerd started
REST_API_ALL = "agent.guest_components_rest_api=all"  # /aa/token needs the attestation feature
APPLETS = ("sh", "wget", "sha256sum", "sed", "cut", "tr", "base64", "grep", "sleep", "cat", "rm", "printf")

# The workload's verdict: exit 0, or 64 + 8 * R + T.
RESOURCE = {
    0: "the guest's CDH returned the fresh resource and its SHA-256 matches",
    1: "the guest's CDH endpoint (127.0.0.1:8006) never answered",
    2: "the guest's CDH answered an error for the fresh resource (the KBS denied it, or attestation failed)",
    3: "the guest's CDH returned different bytes than were seeded",
}
TOKEN = {
    0: "the attestation agent's KBS token carries {tee} evidence and no sample evidence",
    1: "the attestation agent's token endpoint (/aa/token?token_type=kbs) did not answer a token",
    2: "the attestation agent's token is not a readable JWT",
    3: "the attestation agent's token carries sample (non-TEE) evidence",
    4: "the attestation agent's token carries no {tee} evidence",
}
LAB_EXPECTED = (2, 3)  # denied to sample evidence; token of type sample

LAB_SIMULATED = (
    "no TEE and no Kata guest in the lab: containerd and the Kata handler's runtime type and shim binary are real, "
    "but the lab's kata-static stand-in shim ran the container with runc (no VM, initdata not measured, the "
    "handler's ConfigPath not passed: runc's shim refuses Kata's runtime options); the guest's CDH/AA endpoint "
    "(127.0.0.1:8006) was the lab stand-in ccfactory.lab.standins.cdh in the container's network namespace, which "
    "has no TEE evidence and attests with sample evidence only; the KBS is the lab Trustee stand-in. Not "
    "exercised: snp/tdx evidence, a token of TEE type snp/tdx, the release of the resource to a TEE guest"
)

WORKLOAD = r"""R=1; T=1; n=0
get() {
  while :; do
    if err=$(wget -q -O "$2" "$1" 2>&1); then return 0; fi
    case "$err" in *"can't connect"*|*"onnection refused"*) ;; *) return 2 ;; esac
    n=$((n + 1)); [ "$n" -ge "$WAIT" ] && return 1
    sleep 1
  done
}
E=${CDH:-http://127.0.0.1:8006}
get "$E/cdh/resource/$RES" /tmp/r; rc=$?
if [ "$rc" -eq 0 ]; then
  if [ "$(sha256sum /tmp/r | cut -d' ' -f1)" = "$EXPECT" ]; then R=0; else R=3; fi
else R=$rc; fi
rm -f /tmp/r
get "$E/aa/token?token_type=kbs" /tmp/t; rc=$?
if [ "$rc" -eq 0 ]; then
  jwt=$(sed -n 's/.*"token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' /tmp/t)
  case "$jwt" in *?.*?.*?) p=$(printf '%s' "$jwt" | cut -d. -f2 | tr '_-' '/+') ;; *) p='' ;; esac
  case $((${#p} % 4)) in 2) p="$p==" ;; 3) p="$p=" ;; esac
  c=$(printf '%s' "$p" | base64 -d 2>/dev/null)
  case "$c" in "{"*) ;; *) c='' ;; esac
  if [ -z "$c" ]; then T=2
  elif printf '%s' "$c" | grep -q '"sample"[[:space:]]*:'; then T=3
  elif printf '%s' "$c" | grep -q "\"$TEE\"[[:space:]]*:"; then T=0
  else T=4; fi
fi
rm -f /tmp/t
[ "$R" -eq 0 ] && [ "$T" -eq 0 ] && exit 0
exit $((64 + R * 8 + T))
"""


def _applies(cfg) -> bool:
    return cfg.is_worker and cfg.tee in ("snp", "tdx") and bool(cfg.kbs.url)


# ------------------------------------------------------------------ verdict encoding


def encode_verdict(resource: int, token: int) -> int:
    return 0 if (resource, token) == (0, 0) else 64 + 8 * resource + token


def decode_verdict(code: int | None) -> tuple[int, int] | None:
    """(R, T) of the workload's exit code, or None when the code is not a verdict."""
    if code == 0:
        return 0, 0
    if code is None or not 64 <= code < 64 + 8 * len(RESOURCE):
        return None
    resource, token = divmod(code - 64, 8)
    return (resource, token) if token in TOKEN else None


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
    gpu_workers = any(h.cfg.is_worker and h.cfg.gpu.count > 0 for h in ctx.fleet.values())
    return KbsTarget(
        host=chosen.cfg.name,
        url=settings.url,
        ca_cert=Path(sources.ca_cert).expanduser() if sources.ca_cert else settings.pki_dir / "ca.crt",
        admin_key=Path(sources.admin_key).expanduser() if sources.admin_key else settings.pki_dir / "admin.key",
        lab=settings.lab,
        gpu_gated=settings.gpu_resources is None and gpu_workers,
    )


def smoke_path(node: str) -> str:
    """A fresh resource path no workload uses: ``ccfactory-verify/attestation-smoke/<node>-<random>``."""
    slug = re.sub(r"[^A-Za-z0-9_\-]", "-", node.split("/")[-1].lstrip("@")).strip("-") or "node"
    return f"{SMOKE_REPO}/{SMOKE_TYPE}/{slug[:40]}-{secrets.token_hex(8)}"


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
    cdh_program: str = field(default="", repr=False)  # lab only: the CDH stand-in's source


def _image_script() -> str:
    q = shlex.quote
    ns, ref = q(NAMESPACE), q(IMAGE_REF)
    applets = " ".join(APPLETS)
    index = (
        '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        '"digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},'
        '"annotations":{"io.containerd.image.name":"%s"}}]}'
    )
    return f"""
if ! ctr -n {ns} images ls -q 2>/dev/null | grep -qxF {ref}; then
  {echo_marker("image-build")}
  B=$(mktemp -d /var/tmp/ccfactory-smoke-image.XXXXXX)
  (
    set -e
    cd "$B"
    if ! apt-get download busybox-static >apt.log 2>&1; then
      echo "apt-get download busybox-static failed: $(tail -n 2 apt.log | tr '\\n' ' ')"; exit 1
    fi
    dpkg-deb -x busybox-static_*.deb deb
    mkdir -p layer/bin layer/tmp layer/proc layer/sys layer/dev layer/etc layer/run oci/blobs/sha256
    chmod 1777 layer/tmp
    cp deb/bin/busybox layer/bin/busybox
    for a in {applets}; do ln -s busybox "layer/bin/$a"; done
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C layer -cf layer.tar .
    L=$(sha256sum layer.tar | cut -d' ' -f1); LS=$(stat -c %s layer.tar); mv layer.tar "oci/blobs/sha256/$L"
    A=$(dpkg --print-architecture); case "$A" in ppc64el) A=ppc64le ;; armhf) A=arm ;; esac
    printf '{{"architecture":"%s","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:%s"]}}}}' "$A" "$L" > config.json
    C=$(sha256sum config.json | cut -d' ' -f1); CS=$(stat -c %s config.json); mv config.json "oci/blobs/sha256/$C"
    printf '{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}}]}}' "$C" "$CS" "$L" "$LS" > manifest.json
    M=$(sha256sum manifest.json | cut -d' ' -f1); MS=$(stat -c %s manifest.json); mv manifest.json "oci/blobs/sha256/$M"
    printf {q(index)} "$M" "$MS" "$A" {ref} > oci/index.json
    printf '{{"imageLayoutVersion":"1.0.0"}}' > oci/oci-layout
    tar -C oci -cf image.tar oci-layout index.json blobs
    ctr -n {ns} images import image.tar >/dev/null
  ) > "$W/image.out" 2>&1
  rc=$?
  rm -rf "$B"
  {echo_marker("image-build-exit", "$rc")}
  tail -c 1500 "$W/image.out"
fi"""


def node_script(plan: SmokePlan) -> str:
    """The one shell command run on the node (as root): image, container, verdict, cleanup."""
    q = shlex.quote
    ns, cid = q(NAMESPACE), q(plan.container_id)
    args = ["run", "--rm", "--null-io", "--runtime", plan.runtime_type]
    if plan.config_path:
        args += ["--runtime-config-path", plan.config_path]
    if plan.lab:
        args += ["--cpu-shares", "0"]  # lab nodes have no cgroup controllers (lab-recipe section 4)
    env_args = [a for k, v in sorted(plan.env.items()) for a in ("--env", f"{k}={v}")]
    ann_args = [a for k, v in sorted(plan.annotations.items()) for a in ("--annotation", f"{k}={v}")]
    tail = [*env_args, IMAGE_REF, plan.container_id, "/bin/sh", "-c", WORKLOAD]
    lines = [
        "set -u",
        f"NS={ns}; ID={cid}; H=''",
        'W=$(mktemp -d /run/ccfactory-attest.XXXXXX)',
        f"""sweep() {{
  for c in $(ctr -n "$NS" containers ls -q 2>/dev/null | grep '^{CONTAINER_PREFIX}'); do
    if [ "$c" = "$ID" ] || ! ctr -n "$NS" tasks ls 2>/dev/null | awk -v id="$c" '$1 == id && $3 != "STOPPED" {{f=1}} END {{exit !f}}'; then
      ctr -n "$NS" tasks kill -s SIGKILL "$c" >/dev/null 2>&1; sleep 0.2
      ctr -n "$NS" tasks rm -f "$c" >/dev/null 2>&1; ctr -n "$NS" containers rm "$c" >/dev/null 2>&1
    fi
  done
}}""",
        'cleanup() { [ -n "$H" ] && kill "$H" 2>/dev/null; sweep; rm -rf "$W"; }',
        "trap cleanup EXIT HUP INT TERM",
        "sweep",  # leftovers of an earlier, interrupted run (never a live one: only stopped or task-less)
        _image_script(),
        f"set -- {' '.join(q(a) for a in args)}",
        f"if ctr run --help 2>&1 | grep -q -e '--annotation'; then set -- \"$@\" {' '.join(q(a) for a in ann_args)}; "
        f"else {echo_marker('no-annotation')}; fi",
        f"set -- \"$@\" {' '.join(q(a) for a in tail)}",
        f'timeout {int(plan.timeout)} ctr -n "$NS" "$@" 2>"$W/ctr.err" &',
        "C=$!; PID=''; i=0",
        # the container record (what containerd ran it with) and, in the lab, the task's pid
        f"""LAB={1 if plan.lab else 0}
while [ "$i" -lt 600 ]; do
  [ -s "$W/info.json" ] || ctr -n "$NS" containers info "$ID" > "$W/info.json" 2>/dev/null || rm -f "$W/info.json"
  [ -n "$PID" ] || PID=$(ctr -n "$NS" tasks ls 2>/dev/null | awk -v id="$ID" '$1 == id && $3 == "RUNNING" {{print $2}}')
  [ -s "$W/shim" ] || cat "{TASK_STATE}/$NS/$ID/shim-binary-path" > "$W/shim" 2>/dev/null || rm -f "$W/shim"
  if [ -s "$W/info.json" ] && [ -s "$W/shim" ] && {{ [ "$LAB" = 0 ] || [ -n "$PID" ]; }}; then break; fi
  kill -0 "$C" 2>/dev/null || break
  i=$((i + 1)); sleep 0.1
done""",
    ]
    if plan.lab:
        program = base64.b64encode(plan.cdh_program.encode()).decode()
        lines += [
            f"printf '%s' {q(program)} | base64 -d > \"$W/cdh.py\"",
            f"""python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Spec"]["annotations"][sys.argv[2]])' \
"$W/info.json" {q(ANNOTATION)} > "$W/initdata" 2>/dev/null && {echo_marker("initdata-source", "container-annotation")} \
|| {{ cp {INITDATA_ANNOTATION_FILE} "$W/initdata" && {echo_marker("initdata-source", "node-file")}; }}""",
            """if [ -n "$PID" ]; then
  python3 "$W/cdh.py" --initdata-file "$W/initdata" --netns-pid "$PID" --log "$W/cdh.log" --ready-file "$W/ready" \\
    --timeout %d > "$W/cdh.err" 2>&1 &
  H=$!
fi""" % (int(plan.timeout) + 30),
        ]
    lines += [
        'wait "$C"; RC=$?',
        echo_marker("exit", "$RC"),
        echo_marker("ctr-stderr"),
        'tail -c 2000 "$W/ctr.err"; echo',
        echo_marker("info"),
        'cat "$W/info.json" 2>/dev/null; echo',
        echo_marker("shim"),
        'cat "$W/shim" 2>/dev/null; echo',
    ]
    if plan.lab:
        lines += [
            'if [ -n "$H" ]; then kill "$H" 2>/dev/null; wait "$H" 2>/dev/null; fi; H=""',
            echo_marker("cdh-log"),
            'cat "$W/cdh.log" 2>/dev/null',
            echo_marker("cdh-stderr"),
            'tail -c 1500 "$W/cdh.err" 2>/dev/null; echo',
        ]
    lines += [
        "cleanup; trap - EXIT HUP INT TERM",
        echo_marker("leftover"),
        'ctr -n "$NS" containers ls -q 2>/dev/null | grep -xF "$ID" || true',
        "true",
    ]
    return "\n".join(lines) + "\n"


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
        hint = ("check `journalctl -u containerd` and the TEE state (host.tee_active); Kata TEE shims share no filesystem "
                "with the guest (shared_fs = none), so the image may need guest pull (runtime_guest_pull)")  # fmt: skip
        if plan.lab:
            standin = _tail(run.cdh_stderr, 300) or "no stand-in output"
            hint = f"check the lab node's containerd and the CDH stand-in: {standin}"
        return fail(detail + f"; {cleanup_text}", hint=hint, simulated=sim)
    resource, token = verdict
    said = f"{RESOURCE[resource]}; {TOKEN[token].format(tee=tee)}"
    if plan.lab:
        return _judge_lab(plan, run, path, where, said, verdict, cleanup_text)
    if verdict == (0, 0):
        return ok(f"{where}: {said}; {cleanup_text}; smoke container removed")
    hint = "check the KBS log (journalctl -u trustee-kbs) for why"
    if resource == 1:
        hint = ("the guest's api-server-rest did not come up: check the agent's guest_components_rest_api / "
                "guest_components_procs kernel parameters and the initdata (runtime.initdata)")  # fmt: skip
    elif resource == 2:
        hint = ("the KBS or the attestation refused the guest: check the KBS log (journalctl -u trustee-kbs), the reference "
                "values (kbs_reference_values)")  # fmt: skip
        if target.gpu_gated:
            hint += ("; this site's policy needs an affirming GPU for every resource (kbs_gpu_resources unset with GPU "
                     "workers) and the smoke guest has no GPU: list your model paths in kbs_gpu_resources")  # fmt: skip
    elif token in (1, 2):
        hint = "the guest's attestation agent did not serve /aa/token: check the agent's guest_components_rest_api and initdata"
    elif token in (3, 4):
        hint = "the guest attested without the node's TEE: check the host stage (host.tee_active) and the Kata shim's config"
    return fail(f"{where}: {said}; {cleanup_text}", hint=hint)


def _judge_lab(plan: SmokePlan, run: SmokeRun, path: str, where: str, said: str, verdict, cleanup_text: str) -> Outcome:
    sim = LAB_SIMULATED
    if verdict[0] in (0, 3):
        return fail(f"{where}: the KBS released the fresh resource to sample (non-TEE) evidence through the lab CDH "
                    f"stand-in ({said}); {cleanup_text}",
                    hint="the resource policy must require TEE attestation: remove kbs_lab_permissive and run the kbs stage",
                    simulated=sim)  # fmt: skip
    resources = [e for e in run.cdh_events if e.get("event") == "resource" and e.get("path") == path]
    tokens = [e for e in run.cdh_events if e.get("event") == "token"]
    denied = any(e.get("outcome") == "denied" and e.get("kbs_status") == 403 and e.get("kbs_error") == "PolicyDeny"
                 for e in resources)  # fmt: skip
    sample_token = any(e.get("outcome") == "issued" and e.get("token_tees") == ["sample"] for e in tokens)
    if verdict != LAB_EXPECTED or not denied or not sample_token:
        seen = "; ".join(str(e.get("detail") or e.get("outcome")) for e in (*resources, *tokens)) or "no request reached it"
        return fail(f"{where}: {said}; lab CDH stand-in: {_tail(seen, 300)}; {cleanup_text}",
                    hint="expected in the lab: the KBS denies sample evidence (403 PolicyDeny) and the token is of type "
                         "sample; run the kbs and runtime stages and check journalctl -u trustee-kbs on the KBS host",
                    simulated=sim)  # fmt: skip
    return ok(
        f"lab: the smoke container ran through {where}; it asked the CDH endpoint for the fresh resource {path}, the KBS "
        f"denied it to sample evidence (403 PolicyDeny) as the strict policy requires, and the container rejected the "
        f"token's TEE type sample (not {plan.env['TEE']}); {cleanup_text}; smoke container removed",
        simulated=sim,
    )


# ------------------------------------------------------------------ the check


@check(CHECK_ID, stage="attestation", applies=_applies)
def end_to_end(ctx: CheckContext) -> Outcome:
    """A confidential container gets a fresh KBS resource through its guest's CDH, attested with the node's TEE."""
    from ccfactory.facts.containerd import ContainerdRuntimes
    from ccfactory.kbs.client import KbsClient
    from ccfactory.kbs.errors import KbsError, PkiError

    cfg = ctx.cfg
    sim = LAB_SIMULATED if cfg.lab else ""
    shims, _ = spec.select_shims(cfg.tee, cfg.gpu.count, cfg.gpu.count, cfg.runtime.shims)
    shim = spec.TEE_SHIMS[cfg.tee]
    if shim not in shims:
        return fail(f"the node has no CPU TEE handler {spec.handler_name(shim)} (runtime_shims {list(shims)})",
                    hint=f"add {shim} to runtime_shims: the smoke container needs a TEE guest without a GPU", simulated=sim)  # fmt: skip
    handler = spec.handler_name(shim)
    target = kbs_target(ctx)
    if isinstance(target, str):
        return fail(target, hint="run the check through deploy/verify.py or the shipped suite with the whole inventory",
                    simulated=sim)  # fmt: skip
    containerd = ctx.fact(ContainerdRuntimes)
    settings = containerd.handlers.get(handler)
    if not (containerd.installed and containerd.active) or settings is None:
        return fail(f"containerd is not running with handler {handler}", hint="run the runtime stage", simulated=sim)
    if settings.get("snapshotter") and not cfg.lab:
        return fail(f"{handler} pulls images in the guest (snapshotter {settings['snapshotter']}); the smoke image is built "
                    "on the node and no registry the guest can reach holds it",
                    hint="not supported by this check yet (follow-up: a smoke image reference guests can pull)")  # fmt: skip
    out = ctx.run(f"cat {INITDATA_JSON}")
    try:
        annotations = json.loads(out.stdout)["annotations"]
        initdata = annotations[ANNOTATION]
    except (ValueError, KeyError, TypeError):
        return fail(f"no initdata on the node ({INITDATA_JSON})", hint="run the runtime stage with kbs_url set", simulated=sim)
    kernel_params = " ".join([annotations.get(KERNEL_PARAMS_ANNOTATION, ""), REST_API_ALL]).strip()
    try:
        client = KbsClient(target.url, ca_cert=target.ca_cert, admin_key=target.admin_key, lab=target.lab)
    except (KbsError, PkiError, OSError) as exc:
        return fail(f"KBS admin client for {target.host}: {exc}", hint="run the kbs stage (it makes the admin key on the controller)",
                    simulated=sim)  # fmt: skip
    value = secrets.token_bytes(32)
    path = smoke_path(cfg.name)
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
        annotations={ANNOTATION: initdata, KERNEL_PARAMS_ANNOTATION: kernel_params},
        env={"RES": path, "EXPECT": hashlib.sha256(value).hexdigest(), "TEE": cfg.tee, "WAIT": "60" if cfg.lab else "180"},
        lab=cfg.lab,
        timeout=180 if cfg.lab else cfg.runtime.kata_timeout + 300,
        cdh_program=_lab_cdh_program() if cfg.lab else "",
    )
    del value
    try:
        result = ctx.run(node_script(plan))
    finally:
        cleanup = remove_resource(client, path)
    run = parse_run(result.stdout)
    if not cfg.lab and not run.annotations_passed:
        return fail("ctr on this node cannot pass OCI annotations, so the guest would get no initdata",
                    hint="use the containerd the runtime stage installs (>= 1.7 has ctr run --annotation)")  # fmt: skip
    return judge(plan, run, path, cleanup, target, cfg.tee)


def _lab_cdh_program() -> str:
    """The lab CDH stand-in's source; only ever shipped to lab hosts."""
    from ccfactory.lab.standins import cdh

    return cdh.program_source()
