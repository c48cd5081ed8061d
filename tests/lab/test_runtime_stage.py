"""The runtime stage in the lab: real Debian containerd (1.6.x, inside nspawn nodes) with the
kata-static stand-in from the lab artifact server.

node1 (SNP + 8 H100) converges to exactly kata-qemu-snp and kata-qemu-nvidia-gpu-snp, as
containerd itself reports them (``containerd config dump`` and the CRI plugin's own start-up
log line); /opt/kata has the pinned (stand-in) version, the per-shim drop-ins and initdata are
in place; a second run changes nothing and does not restart containerd. Faults: a config
containerd rejects (nothing swapped), a config that kills the daemon (rolled back, still
serving), a handler no longer wanted (removed), a bad checksum (nothing installed), a Kata
that needs a newer containerd, a GPU shim on a node without GPUs, an upgrade under running
sandboxes (refused without drain).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from ccfactory.bom import LAB_BOM, bom_for
from ccfactory.coco.initdata import decode_annotation
from ccfactory.lab import artifacts
from ccfactory.lab.standins import kata_static

pytestmark = pytest.mark.lab

NODE = "node1"
WANTED = {"kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"}

DEPLOY = """\
import json, os
from ccfactory import deploys

deploys.STAGES.setdefault("runtime", "ccfactory.roles.runtime")  # until registered in ccfactory.deploys
deploys.run_stages(["preflight"])
from ccfactory.roles import runtime

runtime.apply(**json.loads(os.environ.get("CCF_RUNTIME_ARGS", "{}")))
"""

INVENTORY = """\
import runpy as _runpy

_ns = _runpy.run_path({inventory!r})
_overrides = {overrides!r}
for _addr, _data in _overrides.items():
    _ns["_hosts"][_addr].update(_data)
_drop_gpu = {drop_gpu!r}
workers, kbs, snp, tdx = (_ns[g] for g in ("workers", "kbs", "snp", "tdx"))
gpu = [h for h in _ns["gpu"] if h[0] not in _drop_gpu]
"""


def _ca_pem(path: Path) -> Path:
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ccfactory lab KBS CA")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class Site:
    def __init__(self, lab, tmp: Path):
        self.lab = lab
        self.tmp = tmp
        self.deploy = tmp / "runtime.py"
        self.deploy.write_text(DEPLOY)
        self.ca = _ca_pem(tmp / "kbs-ca.pem")
        self.out = tmp / "out"
        self.kbs_url = "https://10.199.0.13:8443"

    def addr(self, node: str) -> str:
        return self.lab.nodes[node]["address"]

    def inventory(self, overrides: dict | None = None, drop_gpu: tuple = ()) -> Path:
        base = {self.addr(NODE): {"kbs_url": self.kbs_url, "kbs_ca_cert": str(self.ca)}}
        for node, data in (overrides or {}).items():
            base.setdefault(self.addr(node), {}).update(data)
        path = self.tmp / f"inv-{hashlib.sha1(repr((base, drop_gpu)).encode()).hexdigest()[:8]}" / "lab.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(INVENTORY.format(inventory=str(self.lab.inventory), overrides=base,
                                         drop_gpu=[self.addr(n) for n in drop_gpu]))
        return path

    def run(self, node: str = NODE, inventory: Path | None = None, **args) -> tuple[int, dict | None, str]:
        args.setdefault("output_dir", str(self.out))
        pyinfra = str(Path(sys.executable).with_name("pyinfra"))
        t0 = time.monotonic()
        r = subprocess.run(
            [pyinfra, "-y", "--json", "--limit", self.addr(node), str(inventory or self.inventory()), str(self.deploy)],
            capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYINFRA_PROGRESS": "off", "CCF_RUNTIME_ARGS": json.dumps(args)},
        )  # fmt: skip
        print(f"runtime stage on {node} {args}: {time.monotonic() - t0:.1f} s, rc {r.returncode}")
        try:
            result = json.loads(r.stdout)
        except ValueError:
            result = None
        return r.returncode, result, r.stdout + r.stderr

    def ssh(self, command: str, node: str = NODE, check: bool = True):
        return self.lab.ssh(node, command, check=check)

    def dump(self, node: str = NODE) -> dict:
        return tomllib.loads(self.ssh("containerd config dump", node).stdout)

    def kata_handlers(self, node: str = NODE) -> set[str]:
        runtimes = self.dump(node)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
        return {n for n in runtimes if n.startswith("kata-")}

    def cri_log_handlers(self, node: str = NODE) -> str:
        """The live CRI plugin's own start-up line (its loaded config) since containerd last started."""
        since = self.ssh("systemctl show -p ActiveEnterTimestamp --value containerd", node).stdout.strip()
        log = self.ssh(f"journalctl -u containerd --since '{since}' --no-pager -o cat | grep 'Start cri plugin with config' | tail -1",
                       node, check=False).stdout
        return log

    def main_pid(self, node: str = NODE) -> str:
        return self.ssh("systemctl show -p MainPID --value containerd", node).stdout.strip()


def changed_ops(result: dict) -> list[str]:
    return [op["name"] for op in result["results"]["operations"] if op["success"]]


def fresh_node(site: Site, node: str = NODE) -> None:
    site.ssh(
        "systemctl stop containerd 2>/dev/null; rm -rf /run/vc/sbs; "
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q containerd runc >/dev/null 2>&1; "
        "rm -rf /etc/containerd /opt/kata /opt/kata.ccfactory-prev /opt/kata.ccfactory-new /etc/ccfactory "
        "/opt/ccfactory/artifacts /usr/local/bin/containerd-shim-kata-*; true",
        node,
    )


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    started = artifacts.status(lab.dir) is None
    artifacts.start(lab.dir)
    try:
        assert bom_for(True, str(lab.dir)).artifact("kata-static").version == kata_static.VERSION
        s = Site(lab, tmp_path_factory.mktemp("runtime"))
        fresh_node(s)
        yield s
    finally:
        if started:
            artifacts.stop(lab.dir)


def test_first_run_installs_and_registers_exactly_the_handlers(site):
    rc, result, out = site.run()
    assert rc == 0, out[-5000:]
    assert site.kata_handlers() == WANTED
    assert site.ssh("ctr plugins ls | awk '$2 == \"cri\" {print $NF}'").stdout.strip() == "ok"
    live = site.cri_log_handlers()
    assert all(f"{h}:{{Type:io.containerd.{h}.v2" in live for h in WANTED), live[-2000:]
    assert site.ssh("systemctl is-enabled containerd").stdout.strip() == "enabled"
    version = site.ssh("/opt/kata/bin/kata-runtime --version").stdout
    assert version.splitlines()[0] == f"kata-runtime  : {kata_static.VERSION}"
    # upstream files untouched, per-shim copies identical, drop-ins in place
    for shim in ("qemu-snp", "qemu-nvidia-gpu-snp"):
        d = "/opt/kata/share/defaults/kata-containers"
        same = site.ssh(f"cmp {d}/configuration-{shim}.toml {d}/runtimes/{shim}/configuration-{shim}.toml && echo same")
        assert same.stdout.strip() == "same"
        env = json.loads(site.ssh(f"/opt/kata/bin/kata-runtime --config {d}/runtimes/{shim}/configuration-{shim}.toml env --json").stdout)
        assert env["Runtime"]["Config"]["DropIns"] == [f"{d}/runtimes/{shim}/config.d/50-ccfactory.toml"]
        assert env["Hypervisor"]["ConfidentialGuest"] is True and env["Hypervisor"]["SevSnpGuest"] is True
        assert env["Hypervisor"]["Firmware"] == "/opt/kata/share/ovmf/AMDSEV.fd"
        # the guest command line stays upstream's (SNP measures it); the KBS reaches guests through initdata
        upstream = tomllib.loads(site.ssh(f"cat {d}/configuration-{shim}.toml").stdout)["hypervisor"]["qemu"]["kernel_params"]
        assert env["Kernel"]["Parameters"] == upstream and "agent." not in upstream
        assert env["Hypervisor"]["ColdPlugVFIO"] == ("root-port" if "gpu" in shim else "no-port")
    # initdata on the node, matching the controller's report
    report = json.loads((site.out / "reports" / f"{site.addr(NODE)}.json").read_text())
    node_doc = site.ssh("cat /etc/ccfactory/coco/initdata.toml").stdout
    assert node_doc == report["initdata_document"]
    assert hashlib.sha256(node_doc.encode()).hexdigest() == report["initdata"]["digest"]
    annotation = site.ssh("cat /etc/ccfactory/coco/initdata.annotation").stdout.strip()
    assert decode_annotation(annotation) == node_doc
    assert "BEGIN CERTIFICATE" in tomllib.loads(node_doc)["data"]["aa.toml"]
    rc_files = sorted(p.name for p in (site.out / "k8s").iterdir())
    assert "runtimeclass-kata-qemu-nvidia-gpu-snp.yaml" in rc_files and "runtimeclass-kata-qemu-snp.yaml" in rc_files


def test_second_run_changes_nothing_and_restarts_nothing(site):
    pid = site.main_pid()
    rc, result, out = site.run()
    assert rc == 0, out[-5000:]
    assert changed_ops(result) == [], changed_ops(result)
    assert site.main_pid() == pid


OPERATOR_ROOT_V2 = """\
# an operator's own version 2 root config
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
"""


def test_debians_containerd_parses_what_ccfactory_writes_for_the_roots_version(site):
    """Debian's real containerd (1.6.x) parses the config ccfactory renders for an operator's
    version 2 root: handlers, the operator's settings and runc side by side. The former
    always-version-3 drop-in imported under that root gives the CRI plugin no Kata handler at all
    (1.6 does not know the version 3 plugin ids), which is why ids follow the root's version."""
    from ccfactory.coco import containerd_config as cc
    from ccfactory.coco.containerd_config import Handler

    handlers = [Handler.for_shim("qemu-snp"), Handler.for_shim("qemu-nvidia-gpu-snp")]
    d = "/run/ccfactory-version-test"
    default = site.ssh("containerd config default").stdout
    main = cc.desired_files(drop_in=False, main_current=OPERATOR_ROOT_V2, dropin_current=None, default_config=default,
                            handlers=handlers, config_version=2).files[cc.MAIN_CONFIG]
    old_dropin = cc.render_dropin(handlers, 3)
    root_importing = cc.main_config_importing(OPERATOR_ROOT_V2, f"{d}/kata.toml")
    site.ssh(f"mkdir -p {d} && printf %s {shlex.quote(main)} > {d}/main.toml && printf %s {shlex.quote(old_dropin)} > {d}/kata.toml"
             f" && printf %s {shlex.quote(root_importing)} > {d}/root.toml")
    try:
        dump = tomllib.loads(site.ssh(f"containerd --config {d}/main.toml config dump").stdout)
        cri = dump["plugins"]["io.containerd.grpc.v1.cri"]
        assert WANTED <= set(cri["containerd"]["runtimes"]) and "runc" in cri["containerd"]["runtimes"]
        assert cri["sandbox_image"] == "registry.k8s.io/pause:3.9" and dump["version"] == 2
        old = tomllib.loads(site.ssh(f"containerd --config {d}/root.toml config dump").stdout)
        old_runtimes = old["plugins"].get("io.containerd.grpc.v1.cri", {}).get("containerd", {}).get("runtimes", {})
        assert not WANTED & set(old_runtimes), sorted(old_runtimes)
    finally:
        site.ssh(f"rm -rf {d}", check=False)


def test_config_containerd_rejects_is_not_put_in_place(site):
    overlay = site.tmp / "overlay-reject" / "runtime"
    overlay.mkdir(parents=True)
    (overlay / "containerd-kata.toml.j2").write_text(
        'version = {{ config_version }}\n[plugins."{{ runtime_plugin }}".containerd.runtimes.kata-qemu-snp]\nruntime_type = 5\n'
    )
    before = site.ssh("cat /etc/containerd/config.toml").stdout
    pid = site.main_pid()
    rc, _, out = site.run(template_dirs=[str(overlay.parent)])
    assert rc != 0
    assert "containerd rejected the new configuration" in out and "containerd said:" in out
    assert site.ssh("cat /etc/containerd/config.toml").stdout == before
    assert site.main_pid() == pid and site.kata_handlers() == WANTED


def test_config_that_breaks_containerd_is_rolled_back(site):
    overlay = site.tmp / "overlay-break" / "runtime"
    overlay.mkdir(parents=True)
    # containerd parses this, then cannot start: its state directory cannot be created
    # a top-level key, before the template's first table
    (overlay / "containerd-kata.toml.j2").write_text(
        'state = "/proc/ccfactory-no-such-dir/containerd"\n'
        + (Path(__file__).resolve().parents[2] / "roles" / "runtime" / "templates" / "containerd-kata.toml.j2").read_text()
    )
    before = site.ssh("cat /etc/containerd/config.toml").stdout
    rc, _, out = site.run(template_dirs=[str(overlay.parent)], health_timeout=15)
    assert rc != 0
    assert "rolled back: containerd is running again on the previous configuration" in out, out[-3000:]
    assert site.ssh("cat /etc/containerd/config.toml").stdout == before
    assert site.ssh("systemctl is-active containerd").stdout.strip() == "active"
    assert site.ssh("ctr version >/dev/null && echo answers").stdout.strip() == "answers"
    assert site.kata_handlers() == WANTED


def test_handler_no_longer_wanted_is_removed(site):
    rc, _, out = site.run(shims=["qemu-snp"])
    assert rc == 0, out[-4000:]
    assert site.kata_handlers() == {"kata-qemu-snp"}
    assert "kata-qemu-nvidia-gpu-snp" not in site.cri_log_handlers()
    gone = site.ssh("ls /usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2 "
                    "/opt/kata/share/defaults/kata-containers/runtimes/qemu-nvidia-gpu-snp", check=False)
    assert gone.returncode != 0
    rc, _, out = site.run()
    assert rc == 0 and site.kata_handlers() == WANTED, out[-4000:]


def _overlay_bom(site: Site, **changes) -> bytes:
    path = site.lab.dir / LAB_BOM
    original = path.read_bytes()
    text = original.decode()
    doc = tomllib.loads(text)
    for entry in doc["artifact"]:
        if entry["name"] == "kata-static":
            entry.update(changes)
    from ccfactory.lab.artifacts import bom_overlay

    path.write_text(bom_overlay(doc["artifact"]))
    return original


def _variant_tarball(site: Site, version: str, min_containerd: str) -> dict:
    """A kata-static stand-in with another version and requirement, served by the lab server."""
    from dataclasses import replace

    base = kata_static.standin()
    files = dict(base.files())
    files[kata_static.METADATA] = files[kata_static.METADATA].replace(
        f'containerd = "{kata_static.MIN_CONTAINERD}"'.encode(), f'containerd = "{min_containerd}"'.encode()
    )
    files["kata/bin/kata-runtime"] = files["kata/bin/kata-runtime"].replace(kata_static.VERSION.encode(), version.encode())
    variant = replace(base, version=version, filename=f"kata-static-{version}-amd64.tar.xz", files=lambda: files)
    data = artifacts.tarball_bytes(variant)
    (artifacts.artifacts_dir(site.lab.dir) / variant.filename).write_bytes(data)
    url = artifacts.status(site.lab.dir)["url"]
    return {"version": version, "filename": variant.filename, "url": f"{url}/{variant.filename}",
            "sha256": hashlib.sha256(data).hexdigest()}


def test_wrong_checksum_installs_nothing(site):
    marker = site.ssh("cat /opt/kata/.ccfactory-install.json").stdout
    variant = _variant_tarball(site, "4.1.0-ccfactory-lab.9", "1.6")
    wrong = "0" * 64
    original = _overlay_bom(site, **{**variant, "sha256": wrong})
    try:
        rc, _, out = site.run()
    finally:
        (site.lab.dir / LAB_BOM).write_bytes(original)
    assert rc != 0 and "does not match the BOM's" in out and "nothing was changed" in out
    assert site.ssh("cat /opt/kata/.ccfactory-install.json").stdout == marker
    cache = Path(os.path.expanduser("~/.cache/ccfactory/artifacts")) / wrong
    assert not any(cache.glob("*")) if cache.exists() else True


def test_kata_needing_newer_containerd_fails_before_touching(site):
    marker = site.ssh("cat /opt/kata/.ccfactory-install.json").stdout
    original = _overlay_bom(site, **_variant_tarball(site, "4.1.0-ccfactory-lab.8", "2.2"))
    try:
        rc, _, out = site.run()
    finally:
        (site.lab.dir / LAB_BOM).write_bytes(original)
    assert rc != 0
    assert "needs containerd >= 2.2: installed 1.6" in out and "nothing was changed" in out, out[-3000:]
    assert site.ssh("cat /opt/kata/.ccfactory-install.json").stdout == marker


def test_upgrade_under_running_sandboxes_needs_drain(site):
    variant = _variant_tarball(site, "4.1.0-ccfactory-lab.7", "1.6")
    original = _overlay_bom(site, **variant)
    site.ssh("mkdir -p /run/vc/sbs/sandbox-under-test")
    try:
        rc, _, out = site.run()
        assert rc != 0 and "not replacing Kata" in out and "sandbox sandbox-under-test" in out, out[-3000:]
        assert site.ssh("/opt/kata/bin/kata-runtime --version").stdout.split()[2] == kata_static.VERSION
        rc, _, out = site.run(drain=True)
        assert rc == 0, out[-4000:]
        assert site.ssh("/opt/kata/bin/kata-runtime --version").stdout.split()[2] == "4.1.0-ccfactory-lab.7"
        assert site.ssh("test -x /opt/kata.ccfactory-prev/bin/containerd-shim-kata-v2 && echo kept").stdout.strip() == "kept"
        assert site.kata_handlers() == WANTED
    finally:
        (site.lab.dir / LAB_BOM).write_bytes(original)
        site.ssh("rm -rf /run/vc/sbs")
    rc, _, out = site.run()
    assert rc == 0, out[-4000:]
    assert site.ssh("/opt/kata/bin/kata-runtime --version").stdout.split()[2] == kata_static.VERSION


def test_gpu_shim_on_a_node_without_gpus_is_refused(site):
    inv = site.inventory({"node2": {"gpu_count": 0, "gpu_model": None}}, drop_gpu=("node2",))
    before = site.ssh("ls -la /opt /etc/containerd /usr/local/bin 2>&1; true", "node2").stdout
    rc, _, out = site.run("node2", inv, shims=["qemu-tdx", "qemu-nvidia-gpu-tdx"])
    assert rc != 0
    assert "GPU shim qemu-nvidia-gpu-tdx requested on a node without GPUs" in out, out[-3000:]
    assert site.ssh("ls -la /opt /etc/containerd /usr/local/bin 2>&1; true", "node2").stdout == before
