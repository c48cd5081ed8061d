"""The KBS role on pyinfra ``@fake`` hosts: fails before touching a host whose BOM lacks Trustee
(naming the command that pins it) or whose policy a Rego engine refuses, plans the full install
(podman, the image by digest, the unit) from a BOM image entry, keeps secrets home."""

from __future__ import annotations


import pytest
import tomli_w
from pyinfra.facts.files import FileContents
from support import plan_role_on_fake_host
from test_standin_trustee_helpers import free_port

from ccfactory.bom import LAB_BOM
from ccfactory.lab.standins import trustee
from lab_standin import stand_in_lab

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


DIGEST = "sha256:" + "cd" * 32


def _lab(tmp_path):
    lab = tmp_path / "lab"
    (lab / "artifacts").mkdir(parents=True)
    # the lab gate proves a running lab (tests/lab_standin.py); this node's KBS answers on 127.0.0.1
    stand_in_lab(lab, {"kbs1": [HOST, "127.0.0.1"]})
    entry = {"name": "trustee", "version": trustee.VERSION, "kind": "oci-image", "pin": "lab-stand-in",
             "image": "10.199.0.1:5001/ccfactory-lab/trustee-kbs", "tag": trustee.VERSION, "digest": DIGEST,
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

    from ccfactory.roles.kbs.facts import PodmanImage
    from ccfactory.roles import kbs

    from pyinfra.facts.server import Home

    facts = Facts({Home: "/root", PodmanImage: None, File: None, Directory: None, Link: None, Sha1File: None, Users: {}, Groups: [],
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
    assert problem.startswith("trustee: trustee v0.21.0 (ghcr.io/confidential-containers/key-broker-service:"
                              "built-in-as-v0.21.0) is not pinned in the BOM: upstream releases container images only")  # fmt: skip
    assert "ccfactory bom pin trustee --site-bom FILE" in problem and problem.endswith("nothing was changed")
    assert not (tmp_path / "sites").exists()  # no keys made for a host that cannot be deployed


def test_lab_host_plans_the_whole_install(tmp_path, monkeypatch):
    ops = run_role(tmp_path, monkeypatch, lab=True)
    names = [name for name, *_ in ops]
    expected_order = ["podman", f"Trustee image {trustee.VERSION} by digest",
                      "KBS config", "KBS systemd unit", "KBS instance id", "KBS running", "KBS restarted on change",
                      "KBS policies, reference values and resources",
                      "KBS health (HTTPS, admin auth, sample evidence denied)"]  # fmt: skip
    assert [n for n in names if n in expected_order] == expected_order
    by_name = {name: (change, commands, args) for name, change, commands, args in ops}
    pull = " ".join(str(c) for c in by_name[f"Trustee image {trustee.VERSION} by digest"][1])
    assert pull == f"podman pull --quiet 10.199.0.1:5001/ccfactory-lab/trustee-kbs@{DIGEST}"
    unit = " ".join(str(c) for c in by_name["KBS systemd unit"][1])
    assert "/etc/systemd/system/trustee-kbs.service" in unit
    # secrets: only the service's own keys go to the node, 0600 root; never the admin or CA key
    pushed = {n: c for n, c in by_name.items() if n.startswith("KBS ") and n.endswith((".key", ".crt", ".pem", ".pub"))}
    assert set(pushed) == {"KBS https.key", "KBS token.key", "KBS https.crt", "KBS token-chain.pem", "KBS token-ca.crt",
                           "KBS admin.pub"}  # fmt: skip
    (sites,) = (tmp_path / "sites").glob("*/pki")
    assert (sites / "admin.key").exists() and (sites / "ca.key").exists()
    srcs = " ".join(str(cmd) for _, cmds, _ in pushed.values() for cmd in cmds)
    assert "admin.key" not in srcs and "ca.key" not in srcs
    config_cmds = " ".join(str(c) for c in by_name["KBS config"][1])
    assert "/etc/trustee/kbs-config.toml" in config_cmds and "chmod 640" in config_cmds and "root:root" in config_cmds
    key_cmds = " ".join(str(c) for c in by_name["KBS https.key"][1])
    assert "chmod 600" in key_cmds and "root:root" in key_cmds
    # the controller-side admin op predicts a change (the KBS does not answer yet); health is checked at run time
    change, (sync,), _ = by_name["KBS policies, reference values and resources"]
    assert change and sync.function.__name__ in ("_apply", "_apply_with_instance")
    change, commands, _ = by_name["KBS health (HTTPS, admin auth, sample evidence denied)"]
    assert not change and commands == []
    staging_op = "KBS key staging directory (SSH user, 0700)"
    assert all(args.get("_sudo") for name, _, _, args in ops if name != staging_op)
    # pyinfra stages a sudo upload in a temporary file first: private keys never in /tmp
    args_of = {name: args for name, _, _, args in ops}
    assert not args_of[staging_op].get("_sudo")
    assert "/root/.ccfactory-staging" in " ".join(str(c) for c in by_name[staging_op][1])
    for key in ("KBS https.key", "KBS token.key"):
        assert args_of[key]["_temp_dir"] == "/root/.ccfactory-staging", args_of[key]
        assert "/root/.ccfactory-staging/pyinfra-" in " ".join(repr(vars(c)) for c in by_name[key][1])
    assert args_of["KBS https.crt"].get("_temp_dir") in (None, "")


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


def test_a_site_policy_that_releases_to_sample_is_refused_before_anything(tmp_path, monkeypatch):
    policy = tmp_path / "allow.rego"
    policy.write_text('package policy\ndefault allow := false\nallow if data.plugin == "resource"\n')
    ops = run_role(tmp_path, monkeypatch, lab=True, extra={"kbs_policy_file": str(policy)})
    assert [name for name, *_ in ops] == ["KBS policies checked by a Rego engine before upload"]
    problem = ops[0][2][0].args[0]
    assert problem.startswith(f"kbs_policy_file {policy}: the policy releases resources to non-TEE evidence")
    assert problem.endswith("nothing was changed")
    assert not (tmp_path / "sites").exists()


def test_a_tag_only_image_entry_is_refused(tmp_path):
    from ccfactory.bom import BomError, parse_bom

    with pytest.raises(BomError, match="trustee: digest: missing"):
        parse_bom('[[artifact]]\nname="trustee"\nversion="v0.21.0"\nkind="oci-image"\npin="oci-digest"\nsource="s"\n'
                  'image="ghcr.io/confidential-containers/key-broker-service"\ntag="built-in-as-v0.21.0"\n')  # fmt: skip
