"""The KBS stage on the lab's plain node (node3, group kbs): Trustee as upstream ships it, a
container image by digest under podman (here the lab stand-in's image, from the lab registry
through the lab BOM overlay), with HTTPS, keys and a strict policy; a second run changes
nothing; checked from the controller like an operator would, and the unit by systemd's own
``systemd-analyze verify`` on the node.

Runs ``pyinfra -y --json <inventory> <deploy>`` on the lab inventory plus ``kbs_url`` for every
host. Until the lead registers the stage (``ccfactory.deploys.STAGES``) and the stand-in
(``ccfactory.lab.artifacts.standins``), this module does both for its own run only. The
controller-side keys go to ``$CCFACTORY_HOME`` (a temporary directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from ccfactory.bom import BomError, bom_for
from ccfactory.config import HostData
from ccfactory.kbs.client import KbsClient
from ccfactory.kbs.errors import AdminAuthError
from ccfactory.lab import artifacts

pytestmark = pytest.mark.lab

KBS_NODE = "node3"
PORT = 8443

DEPLOY = """\
from ccfactory import deploys

deploys.STAGES.setdefault("kbs", "ccfactory.roles.kbs")  # until the stage is registered in ccfactory.deploys
deploys.run_stages(["preflight", "kbs"])
"""

INVENTORY = """\
# the lab inventory, every host with the KBS URL (and extra KBS keys when HostData has them)
import runpy as _runpy

_ns = _runpy.run_path({inventory!r})
for _data in _ns["_hosts"].values():
    _data["kbs_url"] = {url!r}
_ns["_hosts"][{kbs!r}].update({extra!r})
workers, kbs, snp, tdx, gpu = (_ns[g] for g in ("workers", "kbs", "snp", "tdx", "gpu"))
"""


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    started = artifacts.status(lab.dir) is None
    artifacts.start(lab.dir)
    try:
        try:
            image = bom_for(True, str(lab.dir)).artifact("trustee")
        except (BomError, KeyError) as exc:
            pytest.fail(f"the lab BOM overlay has no usable trustee stand-in: {exc}")
        assert image.kind == "oci-image" and image.digest.startswith("sha256:")
        work = tmp_path_factory.mktemp("kbs-site")
        deploy = work / "kbs.py"
        deploy.write_text(DEPLOY)
        address = lab.nodes[KBS_NODE]["address"]
        url = f"https://{address}:{PORT}"
        extra = {}
        if "kbs_resources" in HostData.model_fields:
            secret = work / "model.key"
            secret.write_bytes(os.urandom(32))
            secret.chmod(0o600)
            extra["kbs_resources"] = {"models/lab-model/key": str(secret)}
        inventory = work / "lab_kbs.py"
        inventory.write_text(INVENTORY.format(inventory=str(lab.inventory), url=url, kbs=address, extra=extra))
        home = work / "ccfactory-home"
        fresh_node(lab)
        yield lab, deploy, inventory, url, home, extra
    finally:
        if started:
            artifacts.stop(lab.dir)


def fresh_node(lab) -> None:
    """node3 without any KBS (the lab keeps node disks between sessions)."""
    lab.ssh(
        KBS_NODE,
        "systemctl disable --now trustee-kbs >/dev/null 2>&1; rm -rf /etc/trustee /var/lib/trustee "
        "/etc/systemd/system/trustee-kbs.service; systemctl daemon-reload; "
        "if command -v podman >/dev/null; then podman rm -f --ignore ccfactory-kbs; podman rmi -a -f; fi >/dev/null 2>&1; true",
    )


def run_stage(deploy: Path, inventory: Path, home: Path) -> tuple[int, dict | None, str]:
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    r = subprocess.run(
        [pyinfra, "-y", "--json", str(inventory), str(deploy)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYINFRA_PROGRESS": "off", "CCFACTORY_HOME": str(home)},
    )
    try:
        result = json.loads(r.stdout)
    except ValueError:
        result = None
    return r.returncode, result, r.stdout + r.stderr


def changed_ops(result: dict) -> list[str]:
    return [op["name"] for op in result["results"]["operations"] if op["success"]]


def pki_dir(home: Path, lab) -> Path:
    # the lab inventory names the KBS host's PKI dir; else the default under CCFACTORY_HOME
    from ccfactory.inventory import load_inventory

    address = lab.nodes[KBS_NODE]["address"]
    configured = next((h.data.get("kbs_pki_dir") for h in load_inventory(lab.inventory) if h.name == address), None)
    return Path(configured) if configured else home / "sites" / address / "pki"


def client(site, **kw) -> KbsClient:
    lab, _, _, url, home, _ = site
    pki = pki_dir(home, lab)
    kw.setdefault("admin_key", pki / "admin.key")
    return KbsClient(url, ca_cert=pki / "ca.crt", lab=True, **kw)


def test_first_run_installs_a_strict_https_kbs(site):
    lab, deploy, inventory, url, home, extra = site
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0, out[-4000:]
    changed = changed_ops(result)
    assert any("KBS config" in n for n in changed) and any("KBS running" in n for n in changed), changed
    assert lab.ssh(KBS_NODE, "systemctl is-active trustee-kbs").stdout.strip() == "active"
    modes = lab.ssh(KBS_NODE, "stat -c '%n %a %U:%G' /etc/trustee /etc/trustee/kbs-config.toml /etc/trustee/keys "
                              "/etc/trustee/keys/https.key /etc/trustee/keys/token.key /etc/trustee/keys/admin.pub "
                              "/var/lib/trustee").stdout.split("\n")  # fmt: skip
    assert modes[:7] == [
        "/etc/trustee 750 root:root",
        "/etc/trustee/kbs-config.toml 640 root:root",
        "/etc/trustee/keys 750 root:root",
        "/etc/trustee/keys/https.key 600 root:root",
        "/etc/trustee/keys/token.key 600 root:root",
        "/etc/trustee/keys/admin.pub 644 root:root",
        "/var/lib/trustee 700 root:root",
    ]
    # the admin and CA private keys never reach the node
    assert lab.ssh(KBS_NODE, "grep -rl 'PRIVATE KEY' /etc/trustee | sort").stdout.split() == [
        "/etc/trustee/keys/https.key", "/etc/trustee/keys/token.key"]  # fmt: skip
    assert (pki_dir(home, lab) / "admin.key").stat().st_mode & 0o777 == 0o600
    # the container runs the BOM's image by digest, with no capabilities and a read-only root
    image = bom_for(True, str(lab.dir)).artifact("trustee")
    inspect = lab.ssh(KBS_NODE, "podman inspect ccfactory-kbs --format "
                                "'{{.ImageName}} {{.EffectiveCaps}} {{.HostConfig.ReadonlyRootfs}}'").stdout.split()  # fmt: skip
    assert inspect == [image.reference, "[]", "true"], inspect
    # systemd's own check of the unit, on the node where podman is installed
    verify = lab.ssh(KBS_NODE, "systemd-analyze verify /etc/systemd/system/trustee-kbs.service 2>&1; echo rc=$?")
    assert verify.stdout.strip().splitlines()[-1] == "rc=0", verify.stdout
    assert "trustee-kbs.service" not in verify.stdout, verify.stdout  # no warning about the unit
    c = client(site)
    assert c.list_resource_policies() == ["resource-policy"]
    assert c.negative_health_check() == "sample evidence is denied by the resource policy (401 PolicyDeny)"


def test_second_run_changes_nothing(site):
    lab, deploy, inventory, url, home, _ = site
    pid = lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip()
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0, out[-4000:]
    assert changed_ops(result) == []
    assert "KBS health: sample evidence is denied by the resource policy" in out
    # reference values: what the SNP worker's site policy gives is registered (origin shown), what
    # cannot be obtained in the lab (no /dev/sev, no guest launched by the runtime) is pending
    assert "KBS reference value snp_smt_allowed [" in out and ": site policy (runtime_snp_guest_policy" in out, out[-4000:]
    assert "KBS reference value pending: " in out and "reported TCB: SNP_PLATFORM_STATUS on /dev/sev failed" in out
    assert "snp_launch_measurement" in out
    assert client(site).query_reference_value("snp_smt_allowed") in (True, False)  # a scalar, as the policy compares it
    summary = json.loads((pki_dir(home, lab) / "reference-values.json").read_text())  # for the readiness report
    origins = {(r["name"], r["origin"]) for r in summary["references"]}
    assert ("snp_smt_allowed", "site policy") in origins and ("snp_smt_enabled", "read from the host") in origins
    # before the runtime stage and a guest launch the measurement is pending with the reason (a lab
    # whose worker kept a runtime log from an earlier session may already have it computed)
    measured = [r for r in summary["references"] if r["name"] == "snp_launch_measurement"]
    assert measured or any("snp_launch_measurement" in p for p in summary["pending"]), summary["pending"]
    print("\n".join(summary["pending"]))
    assert lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip() == pid  # not restarted


KBS_RUNTIME_DEPLOY = """\
from ccfactory import deploys
deploys.run_stages(["preflight", "kbs", "runtime"])
"""
SNP_NODE = "node1"  # SNP + 8 H100 (tests/lab/test_runtime_stage.py)
SNP_GPU_SHIM = "qemu-nvidia-gpu-snp"  # the lab's SNP worker has GPUs: its smoke check runs this shim


def test_a_logged_snp_launch_is_measured_and_registered(site):
    """The kata-static stand-in logs the QEMU launch as Kata 4.1.0 does (qemu.go:3591, syslog tag
    kata); the kbs stage reads it from the SNP worker's journal, measures the stand-in's OVMF
    (sev-snp-measure's own AmdSev data), kernel and that command line with sev-snp-measure, and
    registers the digest as a computed value; a re-run changes nothing."""
    from ccfactory.coco import spec
    from ccfactory.roles.kbs import snp_measure
    lab, deploy, inventory, url, home, _ = site
    both = deploy.with_name("kbs_runtime.py")
    both.write_text(KBS_RUNTIME_DEPLOY)
    rc, _, out = run_stage(both, inventory, home)  # the runtime stage installs the stand-in kata-static
    assert rc == 0, out[-4000:]
    snp = SNP_NODE
    config = spec.shim_config(SNP_GPU_SHIM)
    # what the stand-in shim runs when containerd starts a sandbox (program/containerd-shim-kata-v2.sh)
    lab.ssh(snp, f"/opt/kata/bin/kata-runtime --config {config} ccfactory-lab-launch ccfactory-lab-kbs-test")
    logged = lab.ssh(snp, "journalctl -t kata --no-pager -q -o cat | grep -F 'launching ' | tail -n 1").stdout
    assert "sandbox=ccfactory-lab-kbs-test" in logged and "kernel-hashes=on" in logged, logged
    args = snp_measure.parse_qemu_command(snp_measure.qemu_command_from_log(logged))
    assert args["bios"] == "/opt/kata/share/ovmf/AMDSEV.fd"

    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0, out[-4000:]
    summary = json.loads((pki_dir(home, lab) / "reference-values.json").read_text())
    rows = [r for r in summary["references"] if r["name"] == "snp_launch_measurement"]
    mine = [r for r in rows if r["scope"].endswith(f"/{SNP_GPU_SHIM}")]
    assert mine and mine[0]["origin"] == "computed", (rows, summary["pending"])
    assert "sev-snp-measure 0.0.13 --mode snp" in mine[0]["source"] and "append: runtime log" in mine[0]["source"]
    assert mine[0]["value"] in client(site).query_reference_value("snp_launch_measurement")
    assert "KBS reference value snp_launch_measurement [" in out and ": computed (" in out
    print(f"\n{mine[0]['scope']}: snp_launch_measurement {mine[0]['value']}")
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0 and changed_ops(result) == [], out[-4000:]


def test_admin_api_refuses_another_key(site):
    with pytest.raises(AdminAuthError):
        client(site, admin_key=ed25519.Ed25519PrivateKey.generate()).list_resource_policies()


def test_a_changed_config_is_put_back_and_the_service_restarted(site):
    lab, deploy, inventory, url, home, _ = site
    lab.ssh(KBS_NODE, "sed -i 's/payload_request_size = 2/payload_request_size = 9/' /etc/trustee/kbs-config.toml")
    pid = lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip()
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0, out[-4000:]
    assert sorted(n.split(" | ")[-1] for n in changed_ops(result)) == ["KBS config", "KBS restarted on change"]
    assert lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip() != pid


def test_resources_are_uploaded_once(site):
    lab, deploy, inventory, url, home, extra = site
    assert extra, "kbs_resources must be a HostData key"
    c = client(site)
    c.check_admin_auth()  # admin access still works
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0 and changed_ops(result) == [], out[-4000:]
    from ccfactory.kbs.errors import PolicyDenied

    with pytest.raises(PolicyDenied):
        c.get_resource(c.attest_sample(), "models/lab-model/key")
