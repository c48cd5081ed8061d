"""The KBS role on pyinfra ``@fake`` hosts: fails before touching a host whose BOM lacks Trustee,
plans the full install on a lab host (stand-in through the lab BOM overlay), keeps secrets home."""

from __future__ import annotations

import json

import pytest
import tomli_w
from pyinfra.facts.files import FileContents
from support import plan_role_on_fake_host
from test_standin_trustee_helpers import free_port

from ccfactory.bom import LAB_BOM
from ccfactory.lab.standins import trustee

HOST = "@fake/kbs1"


class Facts:
    """Answers ``host.get_fact`` from a table (callables get the fact's arguments)."""

    def __init__(self, table):
        self.table = table

    def __call__(self, cls, *args, **kwargs):
        value = self.table.get(cls)
        if callable(value):
            return value(**{k: v for k, v in kwargs.items() if not k.startswith("_")})
        return value


def _lab(tmp_path):
    lab = tmp_path / "lab"
    (lab / "artifacts").mkdir(parents=True)
    (lab / "lab.json").write_text(json.dumps({"nodes": {"kbs1": {"address": HOST}}}))
    tarball = trustee.build_trustee_standin(lab / "artifacts")
    import hashlib

    entry = {"name": "trustee", "version": trustee.VERSION, "filename": tarball.name,
             "url": f"http://10.199.0.1:8080/{tarball.name}", "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
             "source": "ccfactory lab stand-in"}  # fmt: skip
    (lab / LAB_BOM).write_text(tomli_w.dumps({"schema_version": 1, "artifact": [entry]}))
    return lab


def run_role(tmp_path, monkeypatch, *, lab: bool, groups=("kbs",), url=None, extra=None):
    monkeypatch.setattr("ccfactory.kbs.settings.DEFAULT_PKI_ROOT", str(tmp_path / "sites"))
    lab_dir = _lab(tmp_path)
    data = {
        "lab": lab,
        "lab_dir": str(lab_dir) if lab else None,
        "kbs_url": url or f"https://127.0.0.1:{free_port()}",  # nothing listens: the KBS "is not up yet"
        "artifact_source": "local",
        "artifact_dir": str(lab_dir / "artifacts"),
        "artifact_cache_dir": str(tmp_path / "cache"),
        "fake_delay": 0,
        "fake_delay_jitter": 0,
        **(extra or {}),
    }
    from pyinfra.facts.deb import DebPackages
    from pyinfra.facts.files import Directory, File, Link, Sha1File
    from pyinfra.facts.server import Date, Groups, Os, Users, Which
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    from ccfactory.roles import kbs

    facts = Facts({File: None, Directory: None, Link: None, Sha1File: None, Users: {}, Groups: [],
                   FileContents: None, DebPackages: {}, SystemdStatus: {}, SystemdEnabled: {},
                   Date: None, Os: "Linux", Which: lambda command: f"/usr/sbin/{command}"})  # fmt: skip
    ops, _ = plan_role_on_fake_host(HOST, data, {g: [HOST] for g in groups}, facts, kbs.apply, strip="KBS | ")
    return ops


def test_non_kbs_hosts_get_nothing(tmp_path, monkeypatch):
    assert run_role(tmp_path, monkeypatch, lab=False, groups=("workers", "snp")) == []


def test_a_site_without_trustee_in_its_bom_fails_before_touching_the_host(tmp_path, monkeypatch):
    ops = run_role(tmp_path, monkeypatch, lab=False)
    assert [name for name, *_ in ops] == ["Trustee from the bill of materials"]
    (_, change, (command,), _) = ops[0]
    problem = command.args[0]
    assert problem.startswith("trustee: trustee v0.21.0 is not pinned in the BOM: releases ship container images only")
    assert problem.endswith("nothing was changed")
    assert not (tmp_path / "sites").exists()  # no keys made for a host that cannot be deployed


def test_lab_host_plans_the_whole_install(tmp_path, monkeypatch):
    ops = run_role(tmp_path, monkeypatch, lab=True)
    names = [name for name, *_ in ops]
    assert names[0] == "Lab Trustee stand-in runtime"
    expected_order = ["KBS user", "Push Trustee", f"Unpack Trustee {trustee.VERSION}", "kbs on the PATH",
                      "KBS config", "KBS systemd unit", "KBS instance id", "KBS running", "KBS restarted on change",
                      "KBS policies, reference values and resources",
                      "KBS health (HTTPS, admin auth, sample evidence denied)"]  # fmt: skip
    assert [n for n in names if n in expected_order] == expected_order
    by_name = {name: (change, commands, args) for name, change, commands, args in ops}
    # secrets: only the service's own keys go to the node, 0600 for the kbs user; never the admin or CA key
    pushed = {n: c for n, c in by_name.items() if n.startswith("KBS ") and n.endswith((".key", ".crt", ".pem", ".pub"))}
    assert set(pushed) == {"KBS https.key", "KBS token.key", "KBS https.crt", "KBS token-chain.pem", "KBS site-ca.crt",
                           "KBS admin.pub"}  # fmt: skip
    (sites,) = (tmp_path / "sites").glob("*/pki")
    assert (sites / "admin.key").exists() and (sites / "ca.key").exists()
    srcs = " ".join(str(cmd) for _, cmds, _ in pushed.values() for cmd in cmds)
    assert "admin.key" not in srcs and "ca.key" not in srcs
    config_cmds = " ".join(str(c) for c in by_name["KBS config"][1])
    assert "/etc/trustee/kbs-config.toml" in config_cmds and "chmod 640" in config_cmds and "root:kbs" in config_cmds
    key_cmds = " ".join(str(c) for c in by_name["KBS https.key"][1])
    assert "chmod 600" in key_cmds and "kbs:kbs" in key_cmds
    # the controller-side admin op predicts a change (the KBS does not answer yet); health is checked at run time
    change, (sync,), _ = by_name["KBS policies, reference values and resources"]
    assert change and sync.function.__name__ in ("_apply", "_apply_with_instance")
    change, commands, _ = by_name["KBS health (HTTPS, admin auth, sample evidence denied)"]
    assert not change and commands == []
    assert all(args.get("_sudo") for _, _, _, args in ops)


def test_lab_permissive_outside_the_lab_stops_the_role(tmp_path, monkeypatch):
    from ccfactory.kbs.settings import kbs_settings  # noqa: F401 - the key is not in HostData yet: call the role's check
    from ccfactory.config import load_node_config
    from ccfactory.kbs.errors import KbsSettingsError

    cfg = load_node_config("kbs1", ["kbs"], {"kbs_url": "https://kbs1:8443"}, check_files=False)
    with pytest.raises(KbsSettingsError, match="refused outside the lab"):
        kbs_settings(cfg, {"kbs_lab_permissive": True})


def test_role_passes_the_stage_keys_to_the_controller_side_operations(tmp_path, monkeypatch):
    """Resources, reference values and the lab-permissive choice reach the controller-side
    operations (as paths: the resource's content is never in the plan)."""
    secret = tmp_path / "model.key"
    secret.write_bytes(b"SECRET-CONTENT-123")
    extra = {"kbs_resources": {"models/m/key": str(secret)}, "kbs_lab_permissive": True,
             "kbs_reference_values": {"svn": ["1"]}}  # fmt: skip
    ops = run_role(tmp_path, monkeypatch, lab=True, extra=extra)
    (_, change, (sync,), _) = next(o for o in ops if o[0] == "KBS policies, reference values and resources")
    spec = sync.args[0]
    assert spec.resources == {"models/m/key": str(secret)} and spec.reference_values == {"svn": ["1"]}
    assert spec.expect_denial is False and "LAB ONLY" in spec.resource_policy
    assert "SECRET-CONTENT-123" not in repr(spec) and "SECRET-CONTENT-123" not in repr(ops)  # paths only
