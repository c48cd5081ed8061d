"""The KBS stage on the lab's plain node (node3, group kbs): Trustee (the lab stand-in, from the
lab artifact server through the lab BOM overlay) installed with HTTPS, keys and a strict policy;
a second run changes nothing; checked from the controller like an operator would.

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
from ccfactory.kbs.policy import spec_of
from ccfactory.lab import artifacts
from ccfactory.lab.standins import trustee

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
    with pytest.MonkeyPatch.context() as mp:
        if "trustee" not in {s.name for s in artifacts.standins()}:
            registered = artifacts.standins()
            mp.setattr(artifacts, "standins", lambda: (*registered, trustee.standin()))
        started = artifacts.status(lab.dir) is None
        artifacts.start(lab.dir)
    try:
        try:
            bom_for(True, str(lab.dir)).artifact("trustee")
        except (BomError, KeyError) as exc:
            pytest.fail(f"the lab BOM overlay has no usable trustee stand-in: {exc}")
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
        "/opt/ccfactory/trustee /usr/local/bin/kbs /etc/systemd/system/trustee-kbs.service; systemctl daemon-reload",
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
        "/etc/trustee 750 root:kbs",
        "/etc/trustee/kbs-config.toml 640 root:kbs",
        "/etc/trustee/keys 750 root:kbs",
        "/etc/trustee/keys/https.key 600 kbs:kbs",
        "/etc/trustee/keys/token.key 600 kbs:kbs",
        "/etc/trustee/keys/admin.pub 644 root:root",
        "/var/lib/trustee 700 kbs:kbs",
    ]
    # the admin and CA private keys never reach the node
    assert lab.ssh(KBS_NODE, "grep -rl 'PRIVATE KEY' /etc/trustee | sort").stdout.split() == [
        "/etc/trustee/keys/https.key", "/etc/trustee/keys/token.key"]  # fmt: skip
    assert (pki_dir(home, lab) / "admin.key").stat().st_mode & 0o777 == 0o600
    pid = lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip()
    assert lab.ssh(KBS_NODE, f"ps -o user=,args= -p {pid}").stdout.split()[0] == "kbs"
    c = client(site)
    assert spec_of(c.get_resource_policy()).kind == "strict"
    assert c.negative_health_check() == "sample evidence is denied by the resource policy (403 PolicyDeny)"


def test_second_run_changes_nothing(site):
    lab, deploy, inventory, url, home, _ = site
    pid = lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip()
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0, out[-4000:]
    assert changed_ops(result) == []
    assert "KBS health: sample evidence is denied by the resource policy" in out
    assert lab.ssh(KBS_NODE, "systemctl show -p MainPID --value trustee-kbs").stdout.strip() == pid  # not restarted


def test_admin_api_refuses_another_key(site):
    with pytest.raises(AdminAuthError):
        client(site, admin_key=ed25519.Ed25519PrivateKey.generate()).get_resource_policy()


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
    c.set_resource_policy(c.get_resource_policy())  # unchanged: proves admin access still works
    rc, result, out = run_stage(deploy, inventory, home)
    assert rc == 0 and changed_ops(result) == [], out[-4000:]
    from ccfactory.kbs.errors import PolicyDenied

    with pytest.raises(PolicyDenied):
        c.get_resource(c.attest_sample(), "models/lab-model/key")
