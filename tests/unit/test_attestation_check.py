"""attestation.end_to_end with a fake node (runner) and a fake KBS admin client, and its
in-guest workload run by Debian's busybox against a fake CDH endpoint.

What the node answers is built from the same section markers the real script prints; the
script itself is checked for shell syntax and for what it must (not) contain.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from busybox_helpers import busybox_bin

from ccfactory.coco import spec
from ccfactory.coco.initdata import ANNOTATION, KERNEL_PARAMS_ANNOTATION
from ccfactory.config import load_node_config
from ccfactory.facts.containerd import ContainerdState
from ccfactory.kbs.errors import KbsHttpError, KbsUnreachable
from ccfactory.kbs.settings import RESOURCE_PATH
from ccfactory.parsers.sections import MARKER
from ccfactory.verify import attestation as att
from ccfactory.verify.checks import REGISTRY, CheckContext, CommandOutput, FleetHost, run_check
from lab_standin import stand_in_lab

SNP_HANDLER = {"runtime_type": "io.containerd.kata-qemu-snp.v2", "runtime_path": "/opt/kata/bin/containerd-shim-kata-v2",
               "config_path": "/opt/kata/share/defaults/kata-containers/runtimes/qemu-snp/configuration-qemu-snp.toml",
               "pod_annotations": ["io.katacontainers.*"], "snapshotter": ""}  # fmt: skip
FACT_KEY = "fact:ccfactory.facts.containerd.ContainerdRuntimes"
GPU_HANDLER = {**SNP_HANDLER, "runtime_type": "io.containerd.kata-qemu-nvidia-gpu-snp.v2",
               "config_path": SNP_HANDLER["config_path"].replace("qemu-snp", "qemu-nvidia-gpu-snp")}  # fmt: skip
INITDATA = {"annotations": {ANNOTATION: "H4sIAAAAAAAC/2Zvbw=="}}
SMOKE_IMAGE = "registry.example/library/busybox@sha256:" + "ab" * 32
LAB_EXIT = att.encode_verdict(*att.LAB_EXPECTED)


# ------------------------------------------------------------------ fakes


class FakeKbs:
    """Stands in for ccfactory.kbs.client.KbsClient: remembers what was seeded, deleted, overwritten."""

    instances: list[FakeKbs] = []
    refuse_delete = False
    refuse_set_after_seed = False
    unreachable = False

    def __init__(self, url, *, ca_cert=None, admin_key=None, lab=False, **_):
        self.url, self.ca_cert, self.admin_key, self.lab = url, ca_cert, admin_key, lab
        self.resources: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        FakeKbs.instances.append(self)

    def set_resource(self, path, data):
        if self.unreachable:
            raise KbsUnreachable(f"{self.url}: no answer from the KBS (ConnectionRefusedError)")
        if self.refuse_set_after_seed and self.resources:
            raise KbsHttpError("upload: KBS answered 401", 401, "PluginInternalError", "x")
        assert RESOURCE_PATH.match(path)
        self.resources[path] = data
        self.log.append(("set", path))

    def delete_resource(self, path):
        if self.refuse_delete:
            raise KbsHttpError("delete: KBS answered 404 InvalidRequestPath", 404, "InvalidRequestPath", "")
        del self.resources[path]
        self.log.append(("delete", path))


@pytest.fixture(autouse=True)
def fake_kbs(monkeypatch):
    import ccfactory.kbs.client as client

    FakeKbs.instances, FakeKbs.refuse_delete, FakeKbs.refuse_set_after_seed, FakeKbs.unreachable = [], False, False, False
    monkeypatch.setattr(client, "KbsClient", FakeKbs)
    return FakeKbs


class Node:
    """A worker's answers: initdata, then the smoke script's sections (from a scenario)."""

    def __init__(self, exit_code=LAB_EXIT, runtime="io.containerd.kata-qemu-snp.v2", shim="/usr/local/bin/containerd-shim-kata-qemu-snp-v2",
                 cdh_events=None, image_error="", leftover="", stderr="", info=True, initdata=INITDATA, no_annotation=False,
                 raises=None, no_gpu=False):  # fmt: skip
        self.exit_code, self.runtime, self.shim, self.cdh_events = exit_code, runtime, shim, cdh_events
        self.image_error, self.leftover, self.stderr, self.info = image_error, leftover, stderr, info
        self.initdata, self.no_annotation, self.raises, self.no_gpu = initdata, no_annotation, raises, no_gpu
        self.scripts: list[str] = []

    def __call__(self, command: str) -> CommandOutput:
        if command.startswith("cat /etc/ccfactory/coco/initdata.json"):
            return CommandOutput(0 if self.initdata else 1, json.dumps(self.initdata) if self.initdata else "")
        assert command.startswith("set -u"), command[:200]
        self.scripts.append(command)
        if self.raises:
            raise self.raises
        path = re.search(r"--env RES=(\S+)", command)[1]
        out = []
        if self.image_error:
            out += [f"{MARKER}image-build", f"{MARKER}image-build-exit 1", self.image_error]
        if self.no_annotation:
            out += [f"{MARKER}no-annotation"]
        if self.no_gpu:
            out += [f"{MARKER}no-vfio-gpu"]
        out += [f"{MARKER}exit {self.exit_code}", f"{MARKER}ctr-stderr", self.stderr, f"{MARKER}info"]
        if self.info:
            out += [json.dumps({"ID": "x", "Runtime": {"Name": self.runtime, "Options": None}}, indent=4)]
        out += [f"{MARKER}shim", self.shim]
        if "--netns-pid" in command:
            events = self.cdh_events if self.cdh_events is not None else lab_events(path)
            out += [f"{MARKER}cdh-log", *(json.dumps(e) for e in events), f"{MARKER}cdh-stderr", ""]
        out += [f"{MARKER}leftover", self.leftover]
        return CommandOutput(0, "\n".join(out) + "\n")


def lab_events(path, outcome="denied", status=401, kind="PolicyDeny", tees=("sample",)):
    return [
        {"event": "start", "outcome": "listening", "feature": "resource"},
        {"event": "resource", "path": path, "outcome": outcome, "kbs_status": status, "kbs_error": kind, "evidence": "sample",
         "token_tees": list(tees)},
    ]


def fleet(tmp_path, *, lab=False, gpu_resources=None, gpu_workers=False, gpu_node=False, kbs_hosts=1, smoke_image=SMOKE_IMAGE):
    pki = tmp_path / "pki"
    pki.mkdir(exist_ok=True)
    common = {"lab": lab, "lab_dir": str(tmp_path)} if lab else {}
    if lab:  # config accepts `lab` only for nodes of a running lab: stand one in (tests/lab_standin.py)
        stand_in_lab(tmp_path, {n: n for n in ("w1", "kbs1", "kbs2")})
    gpus = {"gpu_count": 8, "gpu_model": "H100"}
    image = {"runtime_smoke_image": smoke_image} if smoke_image and not lab else {}
    worker = load_node_config("w1", ("workers", "snp"), {"kbs_url": "https://kbs1:8443", **common, **image,
                              **(gpus if gpu_node else {})}, check_files=False)  # fmt: skip
    hosts = {"w1": FleetHost(worker, {"kbs_url": "https://kbs1:8443"})}
    if gpu_workers:  # another worker of the site has GPUs
        other = load_node_config("w2", ("workers", "snp"), {"kbs_url": "https://kbs1:8443", **common, **gpus}, check_files=False)
        hosts["w2"] = FleetHost(other, {"kbs_url": "https://kbs1:8443"})
    for i in range(1, kbs_hosts + 1):
        data = {"kbs_url": f"https://kbs{i}:8443", "kbs_pki_dir": str(pki), **common}
        if gpu_resources is not None:
            data["kbs_gpu_resources"] = gpu_resources
        cfg = load_node_config(f"kbs{i}", ("kbs",), data, check_files=False)
        hosts[f"kbs{i}"] = FleetHost(cfg, data)
    return worker, hosts


def context(tmp_path, node: Node, *, handlers=None, with_fleet=True, **fleet_kw) -> CheckContext:
    worker, hosts = fleet(tmp_path, **fleet_kw)
    ctx = CheckContext(cfg=worker, run=node, data={}, fleet=hosts if with_fleet else None)
    if handlers is None:
        handlers = {"kata-qemu-snp": SNP_HANDLER, "kata-qemu-nvidia-gpu-snp": GPU_HANDLER}
    ctx.cache[FACT_KEY] = ContainerdState(installed=True, active=True, version="2.3.5", handlers=handlers)
    return ctx


def check(ctx):
    return run_check(REGISTRY[att.CHECK_ID], ctx)


# ------------------------------------------------------------------ registration, verdicts, paths


def test_registered_for_tee_workers_with_a_kbs():
    item = REGISTRY[att.CHECK_ID]
    assert item.stage == "attestation" and item.description.startswith("A confidential container")
    worker = load_node_config("w", ("workers", "tdx"), {"kbs_url": "https://k:8443"}, check_files=False)
    assert item.applies(worker)
    assert not item.applies(load_node_config("w", ("workers", "tdx"), {}, check_files=False))
    assert not item.applies(load_node_config("k", ("kbs",), {"kbs_url": "https://k:8443"}, check_files=False))


@pytest.mark.parametrize("resource", sorted(att.RESOURCE))
@pytest.mark.parametrize("gpu", sorted(att.GPU))
def test_verdicts_round_trip_outside_shell_and_signal_codes(resource, gpu):
    code = att.encode_verdict(resource, gpu)
    assert att.decode_verdict(code) == (resource, gpu)
    assert code == 0 or 64 < code < 124  # 1/2: ctr's own errors, 124: timeout, 126+: shell and signals
    assert att.LAB_EXPECTED == (2, 0) and LAB_EXIT == 66


@pytest.mark.parametrize("code", [None, 1, 2, 63, 64, 88, 96, 124, 137])
def test_other_exit_codes_are_not_verdicts(code):
    assert att.decode_verdict(code) is None


def test_smoke_paths_follow_the_kbs_rule_never_repeat_and_name_the_tee():
    paths = {att.smoke_path("10.199.0.11", "snp", False) for _ in range(50)} | {att.smoke_path("@ssh/gpu-01.example", "snp", False)}
    assert len(paths) == 51
    assert all(RESOURCE_PATH.match(p) and p.startswith("ccfactory-verify/attestation-smoke-snp/") for p in paths)
    assert att.smoke_path("n", "tdx", True).startswith("ccfactory-verify/attestation-smoke-tdx-gpu/n-")


@pytest.mark.parametrize("gpu_paths", [(), ("*",)])
def test_the_strict_policy_releases_a_smoke_path_only_to_its_tee_and_gpu(gpu_paths):
    """Evaluated by regorus, as Trustee's KBS evaluates it (ccfactory.kbs.rego)."""
    from ccfactory.kbs.policy import PolicySpec, render_resource_policy
    from ccfactory.kbs.rego import allows, ear_claims, request_data

    text = render_resource_policy(PolicySpec("strict", cpu_tees=("snp", "tdx"), gpu_paths=gpu_paths))

    def released(path, **submods):
        return allows(text, ear_claims(submods), request_data(f"resource/{path}"))

    cpu, gpu = att.smoke_path("w1", "snp", False), att.smoke_path("w1", "snp", True)
    assert released(cpu, cpu0=("affirming", "snp")) is (gpu_paths == ())  # every resource needs a GPU with ("*",)
    assert not released(cpu, cpu0=("affirming", "tdx"))  # another TEE's token
    assert not released(cpu, cpu0=("affirming", "sample"))
    assert not released(gpu, cpu0=("affirming", "snp"))  # no gpu0
    assert not released(gpu, cpu0=("affirming", "snp"), gpu0=("contraindicated", "nvidia"))
    assert released(gpu, cpu0=("affirming", "snp"), gpu0=("affirming", "nvidia"))
    assert not released(gpu, cpu0=("affirming", "tdx"), gpu0=("affirming", "nvidia"))
    assert not released("ccfactory-verify/attestation-smoke/w1-00", cpu0=("affirming", "snp"))  # unbound type


# ------------------------------------------------------------------ the node script


def plan(lab: bool) -> att.SmokePlan:
    from ccfactory.lab.standins import cdh

    return att.SmokePlan(
        container_id="ccfactory-attest-0123456789ab", handler="kata-qemu-snp", runtime_type=SNP_HANDLER["runtime_type"],
        config_path="" if lab else SNP_HANDLER["config_path"],
        annotations={**INITDATA["annotations"], att.IMAGE_NAME_ANNOTATION: SMOKE_IMAGE},
        env={"RES": "ccfactory-verify/attestation-smoke-snp/w1-00", "EXPECT": "ab" * 32, "TEE": "snp", "WAIT": "60"},
        lab=lab, timeout=180, cdh_program=cdh.program_source() if lab else "",
    )  # fmt: skip


@pytest.mark.parametrize("lab", [False, True])
def test_node_script_is_valid_shell_and_carries_what_it_must(lab):
    script = att.node_script(plan(lab))
    assert subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True).returncode == 0
    assert len(script.encode()) < 100_000  # one argument of `sh -c` (MAX_ARG_STRLEN is 128 KiB)
    assert "--runtime io.containerd.kata-qemu-snp.v2" in script and "--null-io" in script
    assert f"--annotation {ANNOTATION}=" in script and f"--annotation {att.IMAGE_NAME_ANNOTATION}={SMOKE_IMAGE}" in script
    assert "kernel_params" not in script and "agent." not in script and "/aa/" not in script
    assert "trap cleanup EXIT HUP INT TERM" in script and "images import" in script
    if lab:
        assert "--runtime-config-path" not in script and "--cpu-shares 0" in script and "--netns-pid" in script
    else:
        assert f"--runtime-config-path {SNP_HANDLER['config_path']}" in script
        assert "--cpu-shares" not in script and "cdh.py" not in script and "netns" not in script


def _annotations(script: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in re.findall(r"--annotation ([^\s;]+)", script))


@pytest.mark.parametrize("lab", [False, True])
@pytest.mark.parametrize("gpu_node", [False, True])
def test_the_smoke_check_never_changes_what_is_measured(tmp_path, lab, gpu_node):
    """The only Kata annotation the smoke container passes is the node's initdata (measured, bound
    into the evidence); no kernel_params (SNP measures the command line: qemu.go:443), firmware,
    vCPUs or memory. The shim's kernel_params stay exactly upstream's."""
    from ccfactory.roles.runtime.kata import render_shim_dropin

    node = Node(exit_code=LAB_EXIT if lab else 0)
    check(context(tmp_path, node, lab=lab, gpu_node=gpu_node))
    script = node.scripts[0]
    kata = {k: v for k, v in _annotations(script).items() if k.startswith("io.katacontainers.")}
    assert kata == {ANNOTATION: INITDATA["annotations"][ANNOTATION]}
    assert att.measured_annotations(att.SmokePlan("c", "h", "t", "", {**kata, att.IMAGE_NAME_ANNOTATION: "i"}, {}, lab, 1)) == kata
    for word in ("kernel_params", "kernel_verity_params", "default_vcpus", "default_memory", "firmware", "agent.", KERNEL_PARAMS_ANNOTATION):
        assert word not in script, word
    upstream = "cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
    for shim in spec.KNOWN_SHIMS:
        import tomllib

        dropin = tomllib.loads(render_shim_dropin(spec.shim_settings(shim, spec.KataDefaults(), force_guest_pull=True), upstream))
        assert dropin["hypervisor"]["qemu"]["kernel_params"] == upstream
        assert dropin["runtime"]["experimental_force_guest_pull"] is True


def test_the_check_sends_only_the_hash_and_names_the_image_the_guest_pulls(tmp_path):
    node = Node(exit_code=0)
    assert check(context(tmp_path, node)).status == "pass"
    script = node.scripts[0]
    seeded = FakeKbs.instances[0].log[0][1]
    assert f"--env RES={seeded}" in script and seeded.startswith("ccfactory-verify/attestation-smoke-snp/")
    expect = re.search(r"--env EXPECT=([0-9a-f]{64})", script)[1]
    assert "--env TEE=snp" in script and _annotations(script)[att.IMAGE_NAME_ANNOTATION] == SMOKE_IMAGE
    # the value itself never reaches the node: only its SHA-256 (compared inside the guest)
    assert expect not in json.dumps(FakeKbs.instances[0].log)


# ------------------------------------------------------------------ outcomes on hardware


def test_pass_on_hardware_and_both_leftovers_removed(tmp_path):
    result = check(context(tmp_path, Node(exit_code=0)))
    assert result.status == "pass" and not result.simulated
    assert result.detail.startswith("kata-qemu-snp (io.containerd.kata-qemu-snp.v2), shim /usr/local/bin/containerd-shim-kata-qemu-snp-v2:")
    assert "SHA-256 matches" in result.detail and "to a token whose cpu0 evidence is snp" in result.detail
    assert "resource deleted; smoke container removed" in result.detail
    kbs = FakeKbs.instances[0]
    assert kbs.resources == {} and [op for op, _ in kbs.log] == ["set", "delete"]
    assert (kbs.url, kbs.lab) == ("https://kbs1:8443", False)
    assert kbs.admin_key == tmp_path / "pki" / "admin.key" and kbs.ca_cert == tmp_path / "pki" / "ca.crt"


@pytest.mark.parametrize(
    ("verdict", "says", "hint"),
    [
        (2, "answered an error for the fresh resource", "only to snp evidence"),
        (3, "different bytes than were seeded", "journalctl -u trustee-kbs"),
        (1, "never answered", "api-server-rest did not come up"),
    ],
)
def test_failures_on_hardware_say_what_the_guest_saw(tmp_path, verdict, says, hint):
    result = check(context(tmp_path, Node(exit_code=att.encode_verdict(verdict))))
    assert result.status == "fail" and says in result.detail and hint in result.hint
    assert not result.simulated and "resource deleted" in result.detail
    assert FakeKbs.instances[0].resources == {}


def test_a_denial_on_a_gpu_gated_site_names_kbs_gpu_resources(tmp_path):
    result = check(context(tmp_path, Node(exit_code=att.encode_verdict(2)), gpu_workers=True))
    assert result.status == "fail" and "kbs_gpu_resources" in result.hint
    listed = check(context(tmp_path, Node(exit_code=att.encode_verdict(2)), gpu_workers=True, gpu_resources=["m/a/b"]))
    assert "kbs_gpu_resources" not in listed.hint


def test_a_gpu_node_runs_its_gpu_guest_with_the_first_vfio_gpu(tmp_path):
    node = Node(exit_code=0, runtime=GPU_HANDLER["runtime_type"], shim="/usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2")
    result = check(context(tmp_path, node, gpu_node=True))
    assert result.status == "pass", result
    assert "and an affirming gpu0" in result.detail
    script = node.scripts[0]
    assert f"--runtime {GPU_HANDLER['runtime_type']}" in script and "--device /dev/vfio/$G" in script
    assert "--env GPU=1" in script and "--env VISIBLE_CDI_DEVICES=nvidia.com/gpu=all" in script
    assert "nvidia-smi conf-compute says CC status ON, GPUs ready, environment PRODUCTION" in result.detail
    assert "/sys/bus/pci/drivers/vfio-pci/" in script and FakeKbs.instances[0].log[0][1].startswith(
        "ccfactory-verify/attestation-smoke-snp-gpu/")
    missing = check(context(tmp_path, Node(exit_code=0, no_gpu=True, runtime=GPU_HANDLER["runtime_type"]), gpu_node=True))
    assert missing.status == "fail" and "no NVIDIA GPU bound to vfio-pci" in missing.detail and "gpu stage" in missing.hint


@pytest.mark.parametrize("gpu", [1, 2, 3, 4, 5])
def test_a_gpu_guest_that_is_not_cc_ready_fails_with_what_nvidia_smi_said(tmp_path, gpu):
    node = Node(exit_code=att.encode_verdict(0, gpu), runtime=GPU_HANDLER["runtime_type"],
                shim="/usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2")
    result = check(context(tmp_path, node, gpu_node=True))
    assert result.status == "fail" and att.GPU[gpu] in result.detail and result.hint


def test_no_gpu_step_on_cpu_nodes_nor_in_the_lab(tmp_path):
    node = Node(exit_code=0)
    check(context(tmp_path, node))
    assert "--env GPU=1" not in node.scripts[0] and "VISIBLE_CDI_DEVICES" not in node.scripts[0]
    lab = Node(exit_code=LAB_EXIT)
    check(context(tmp_path, lab, lab=True, gpu_node=True))
    assert "--env GPU=1" not in lab.scripts[0]


def test_outside_the_lab_the_guest_image_must_be_named(tmp_path):
    result = check(context(tmp_path, Node(exit_code=0), smoke_image=None))
    assert result.status == "fail" and "runtime_smoke_image is not set" in result.detail and FakeKbs.instances == []


def test_a_container_that_never_completes(tmp_path):
    node = Node(exit_code=1, stderr="ctr: failed to create shim task: failed to mount rootfs: ENOENT")
    result = check(context(tmp_path, node))
    assert result.status == "fail" and "did not complete" in result.detail and "ENOENT" in result.detail
    assert "experimental_force_guest_pull" in result.hint and SMOKE_IMAGE in result.hint
    assert FakeKbs.instances[0].resources == {}


@pytest.mark.parametrize(
    ("node", "says"),
    [
        (Node(exit_code=0, info=False, stderr="ctr: no runtime"), "never created the smoke container"),
        (Node(exit_code=0, runtime="io.containerd.runc.v2"), "with runtime io.containerd.runc.v2, not io.containerd.kata-qemu-snp.v2"),
        (Node(exit_code=0, shim="/usr/bin/containerd-shim-runc-v2"), "started shim /usr/bin/containerd-shim-runc-v2"),
        (Node(exit_code=0, leftover="ccfactory-attest-0123456789ab"), "the smoke container is still on the node"),
        (Node(exit_code=0, image_error="apt-get download busybox-static failed: E: Unable to locate package"), "could not be built"),
        (Node(exit_code=0, no_annotation=True), "cannot pass OCI annotations"),
    ],
)
def test_what_the_node_reports_is_checked(tmp_path, node, says):
    result = check(context(tmp_path, node))
    assert result.status == "fail" and says in result.detail, result
    assert FakeKbs.instances[0].resources == {}


def test_resource_is_removed_even_when_the_node_run_breaks(tmp_path):
    result = check(context(tmp_path, Node(raises=ConnectionResetError("SSH dropped"))))
    assert result.status == "error" and "SSH dropped" in result.detail
    assert FakeKbs.instances[0].resources == {} and FakeKbs.instances[0].log[-1][0] == "delete"


def test_a_kbs_without_delete_gets_the_resource_overwritten(tmp_path, fake_kbs):
    fake_kbs.refuse_delete = True
    result = check(context(tmp_path, Node(exit_code=0)))
    assert result.status == "pass"
    assert "refused DELETE (404 InvalidRequestPath): resource overwritten with random bytes" in result.detail
    kbs = fake_kbs.instances[0]
    (path, junk), = kbs.resources.items()
    assert [op for op, _ in kbs.log] == ["set", "set"] and len(junk) == 32


def test_a_resource_that_can_be_neither_deleted_nor_overwritten_fails(tmp_path, fake_kbs):
    fake_kbs.refuse_delete = fake_kbs.refuse_set_after_seed = True
    result = check(context(tmp_path, Node(exit_code=0)))
    assert result.status == "fail" and "cleanup incomplete" in result.detail and "neither deleted" in result.detail


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"with_fleet": False}, "CheckContext.fleet"),
        ({"kbs_hosts": 0}, "no host in group kbs"),
        ({"kbs_hosts": 2}, None),  # the one serving the worker's kbs_url is chosen
        ({"handlers": {}}, "not running with handler kata-qemu-snp"),
        ({"handlers": {"kata-qemu-snp": {**SNP_HANDLER, "snapshotter": "nydus-for-kata-tee"}}}, "through the snapshotter"),
    ],
)
def test_preconditions(tmp_path, kw, says):
    result = check(context(tmp_path, Node(exit_code=0), **kw))
    if says is None:
        assert result.status == "pass" and FakeKbs.instances[0].url == "https://kbs1:8443"
    else:
        assert result.status == "fail" and says in result.detail and FakeKbs.instances == []


def test_no_initdata_and_an_unreachable_kbs(tmp_path, fake_kbs):
    result = check(context(tmp_path, Node(initdata=None)))
    assert result.status == "fail" and "no initdata" in result.detail and "kbs_url" in result.hint
    fake_kbs.unreachable = True
    result = check(context(tmp_path, Node(exit_code=0)))
    assert result.status == "fail" and "could not seed" in result.detail and "kbs.health" in result.hint


# ------------------------------------------------------------------ outcomes in the lab


def test_lab_pass_is_the_denial_with_each_simulated_step_named(tmp_path):
    node = Node(exit_code=LAB_EXIT)
    result = check(context(tmp_path, node, lab=True))
    assert result.status == "pass", result
    assert result.simulated == att.LAB_SIMULATED
    path = FakeKbs.instances[0].log[0][1]
    assert result.detail == (
        "lab: the smoke container ran through kata-qemu-snp (io.containerd.kata-qemu-snp.v2), shim "
        "/usr/local/bin/containerd-shim-kata-qemu-snp-v2 with cc_init_data as its only Kata annotation; it asked the "
        f"CDH endpoint for the fresh resource {path}, and the KBS denied it (PolicyDeny) to a token of TEE type sample, "
        "as the strict policy requires (it releases that path only to snp evidence); resource deleted; smoke container removed"
    )
    assert FakeKbs.instances[0].lab is True and FakeKbs.instances[0].resources == {}
    assert "--netns-pid" in node.scripts[0] and "--runtime-config-path" not in node.scripts[0]
    steps = dict(att.LAB_STEPS)
    assert set(steps) == {"seed", "handler", "guest", "measurement", "image", "initdata", "cdh", "evidence", "gpu", "cleanup"}
    for step, what in steps.items():
        assert f"{step}: {what}" in result.simulated
        assert what.startswith(("real:", "SIMULATED:")), step
    assert [s for s, w in att.LAB_STEPS if w.startswith("real:")] == ["seed", "handler", "cleanup"]


def test_lab_release_to_sample_evidence_fails(tmp_path):
    result = check(context(tmp_path, Node(exit_code=att.encode_verdict(0, 0)), lab=True))
    assert result.status == "fail" and "released the fresh resource to sample (non-TEE) evidence" in result.detail
    assert "remove kbs_lab_permissive" in result.hint and result.simulated == att.LAB_SIMULATED


@pytest.mark.parametrize(
    "events",
    [
        lambda p: lab_events(p, outcome="error", status=401, kind="TokenVerifierError"),  # not a policy decision
        lambda p: lab_events("ccfactory-verify/attestation-smoke-snp/other-00", outcome="denied"),  # another resource
        lambda p: lab_events(p, tees=()),  # no token's TEE recorded
        lambda p: [],  # the stand-in never got a request
    ],
)
def test_lab_denial_must_be_a_policy_denial_of_this_resource(tmp_path, events):
    class Lab(Node):
        def __call__(self, command):
            if command.startswith("set -u"):
                self.cdh_events = events(re.search(r"--env RES=(\S+)", command)[1])
            return super().__call__(command)

    result = check(context(tmp_path, Lab(exit_code=LAB_EXIT), lab=True))
    assert result.status == "fail" and "lab CDH stand-in" in result.detail and result.simulated == att.LAB_SIMULATED


# ------------------------------------------------------------------ the workload, run by busybox


@pytest.fixture(scope="session")
def busybox(tmp_path_factory) -> Path:
    """Debian's busybox-static (what the smoke image holds)."""
    return busybox_bin(tmp_path_factory.mktemp("busybox"))


class FakeCdh:
    """127.0.0.1:<port> answering like a guest's api-server-rest, from a table of answers."""

    def __init__(self, answers: dict[str, tuple[int, bytes]]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                status, body = answers.get(self.path.split("?")[0], (404, b""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def workload(busybox: Path, cdh_url: str, expect: bytes, tee: str = "snp", wait: int = 2) -> int:
    env = {"PATH": str(busybox), "RES": "ccfactory-verify/attestation-smoke-snp/w1-00", "EXPECT": hashlib.sha256(expect).hexdigest(),
           "TEE": tee, "WAIT": str(wait), "CDH": cdh_url}  # fmt: skip
    r = subprocess.run([str(busybox / "sh"), "-c", att.WORKLOAD], env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout == "", "the workload prints nothing (the host may not read a confidential container's output)"
    return r.returncode


RES = "/cdh/resource/ccfactory-verify/attestation-smoke-snp/w1-00"


@pytest.mark.parametrize(
    ("answers", "verdict"),
    [
        ({RES: (200, b"v" * 32)}, 0),
        ({RES: (200, b"w" * 32)}, 3),
        ({RES: (500, b"denied")}, 2),
        ({RES: (404, b"Resource Feature Not Enabled")}, 2),
    ],
)
def test_workload_verdicts(busybox, answers, verdict):
    cdh = FakeCdh(answers)
    try:
        assert att.decode_verdict(workload(busybox, cdh.url, b"v" * 32)) == (verdict, 0)
    finally:
        cdh.close()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _recorded_conf_compute() -> list[tuple[str, str]]:
    """(name, text) of each recorded `nvidia-smi conf-compute -f/-grs/-e` answer (driver 580.159.04),
    and every combination of their values, written the way the recordings print them."""
    from ccfactory.parsers.nvidia import parse_conf_compute

    out = []
    for gpu in ("nvidia-h100-real", "nvidia-h200-real"):
        text = (FIXTURES / gpu / "conf-compute.txt").read_text()
        blocks = re.findall(r"^\$ nvidia-smi conf-compute (-f|-grs|-e)\n(.*?)^\[rc=", text, re.M | re.S)
        recorded = "".join(body for _, body in blocks)
        status = parse_conf_compute(recorded)
        assert status.cc_status and status.ready_state and status.environment, gpu
        out.append((f"{gpu} as recorded", recorded))
        for cc in ("ON", "OFF"):
            for ready in ("ready", "not-ready"):
                for env in ("PRODUCTION", "UNAVAILABLE"):
                    variant = (recorded.replace(f"CC status: {status.cc_status}", f"CC status: {cc}")
                               .replace(f"Ready state: {status.ready_state}", f"Ready state: {ready}")
                               .replace(f"CC Environment: {status.environment}", f"CC Environment: {env}"))  # fmt: skip
                    out.append((f"{gpu} {cc}/{ready}/{env}", variant))
    return out


@pytest.mark.parametrize(("name", "text"), _recorded_conf_compute(), ids=lambda v: v if " " in str(v)[:40] else "")
def test_the_in_guest_gpu_verdict_agrees_with_the_parser(busybox, tmp_path, name, text):
    """The guest judges `nvidia-smi conf-compute` in shell (its output may not leave the guest);
    ccfactory.parsers.nvidia.parse_conf_compute, correct on the real recordings, is the oracle."""
    from ccfactory.parsers.nvidia import parse_conf_compute

    status = parse_conf_compute(text)
    want = 0 if (status.cc_on and status.gpus_ready and status.production) else (
        3 if not status.cc_on else 4 if not status.gpus_ready else 5)  # fmt: skip
    (tmp_path / "cc").write_text(text)
    r = subprocess.run([str(busybox / "sh"), "-c", att.WORKLOAD], env={"PATH": str(busybox), "CC_FILE": str(tmp_path / "cc")},
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == want, (name, r.stderr)


def test_workload_asks_only_for_the_resource():
    assert "/cdh/resource/$RES" in att.WORKLOAD and "/aa/" not in att.WORKLOAD


def test_workload_waits_for_the_endpoint_then_gives_up(busybox):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert att.decode_verdict(workload(busybox, f"http://127.0.0.1:{port}", b"v", wait=2)) == (1, 0)


# ------------------------------------------------------------------ the fleet for CheckContext


class _Host:
    def __init__(self, name, groups, data):
        self.name, self.groups, self._data = name, groups, data
        self.data = type("D", (), {"dict": lambda s: dict(data), "get": lambda s, k, d=None: data.get(k, d)})()


class _Inventory(list):
    """Like pyinfra's Inventory for fleet_of: iterable, takes attributes."""


def test_fleet_of_builds_validated_hosts_once_per_inventory():
    from ccfactory.verify.collect import fleet_of

    hosts = _Inventory([
        _Host("w1", ("site", "workers", "snp"), {"kbs_url": "https://k1:8443"}),
        _Host("k1", ("site", "kbs"), {"kbs_url": "https://k1:8443", "kbs_pki_dir": "/x"}),
        _Host("bad", ("site", "workers"), {}),  # a worker without a TEE does not validate: left out
    ])  # fmt: skip
    fleet = fleet_of(hosts)
    assert set(fleet) == {"w1", "k1"} and fleet["k1"].cfg.is_kbs and fleet["k1"].data["kbs_pki_dir"] == "/x"
    assert fleet_of(hosts) is fleet  # cached on the inventory object
    assert fleet_of(list(hosts)) is not fleet  # plain lists are not cached
    assert CheckContext(cfg=fleet["w1"].cfg, run=lambda c: None).fleet is None  # old callers: unchanged
