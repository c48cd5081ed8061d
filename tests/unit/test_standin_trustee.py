"""The lab Trustee stand-in as an artifact, and with ccfactory's KBS stage inputs.

The upstream contract (one test per behaviour, with citations) is
``test_standin_trustee_contract.py``; this file checks the packing (image layout, regorus
packed from the controller, README) and that the stand-in starts with the config ccfactory's
KBS role renders and serves ccfactory's KBS client (``test_standin_trustee_helpers.start_kbs``).
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_standin_trustee_helpers import PYTHON, start_kbs

from ccfactory.kbs.errors import PolicyDenied
from ccfactory.lab.standins import trustee


def test_version_and_entry():
    assert trustee.VERSION == "v0.21.0-ccfactory-lab.2" and trustee.ENTRY == "bin/kbs"


def test_image_layer_is_deterministic_with_the_real_layout(tmp_path):
    """The lab registry's image of the stand-in (``ccfactory.lab.registry``): the same inputs give
    the same layer bytes and manifest digest, so the lab BOM's pin holds across rebuilds."""
    from ccfactory.lab import registry

    rootfs = tmp_path / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "python3").write_bytes(b"#!stand-in interpreter\n")
    (rootfs / "usr" / "share" / "doc").mkdir(parents=True)
    (rootfs / "usr" / "share" / "doc" / "skipped").write_text("docs are left out")
    files, executables = trustee.program_files(), frozenset({trustee.ENTRY})
    layer = registry.layer_tar(rootfs, files, executables)
    assert registry.layer_tar(rootfs, files, executables) == layer
    digest = registry.write_oci_layout(tmp_path / "a", layer, trustee.VERSION)
    assert registry.write_oci_layout(tmp_path / "b", layer, trustee.VERSION) == digest
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    top = registry.STANDIN_ROOT
    assert members[f"{top}/bin/kbs"].mode == 0o755
    assert members["usr/local/bin/kbs"].issym() and members["usr/local/bin/kbs"].linkname == f"/{top}/bin/kbs"
    expected = {"README.md", "lib/ccflab_trustee/__init__.py", "lib/ccflab_trustee/app.py", "lib/ccflab_trustee/config.py",
                "lib/ccflab_trustee/jose.py", "lib/ccflab_trustee/rego.py", "lib/ccflab_trustee/upstream_policies.py",
                "lib/regorus/__init__.py"}  # fmt: skip
    assert {f"{top}/{rel}" for rel in expected} <= set(members)
    assert any(name.startswith(f"{top}/lib/regorus/") and name.endswith(".so") for name in members)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in members)
    assert "usr/share/doc/skipped" not in members and "usr/bin/python3" in members
    assert all(m.mtime == 0 and m.uname == "" for m in members.values())
    assert all(m.uid == 0 and m.gid == 0 for name, m in members.items() if name.startswith(top))


def test_regorus_is_packed_from_the_installed_distribution():
    root = Path(next(iter(importlib.util.find_spec("regorus").submodule_search_locations)))
    files = trustee.program_files()
    packed = {rel: data for rel, data in files.items() if rel.startswith("lib/regorus/")}
    assert packed and all((root / rel[len("lib/regorus/"):]).read_bytes() == data for rel, data in packed.items())
    readme = files["README.md"].decode()
    version, licence = trustee._regorus_metadata()
    assert "NOT Trustee" in readme and "celine-regorus" in readme and version in readme and licence in readme
    assert "microsoft/regorus" in readme and "MIT" in readme and "Apache-2.0" in readme


def test_the_installed_tree_runs_without_the_controllers_site_packages(tmp_path):
    """The node's python3 (no regorus installed) imports regorus from lib/regorus."""
    kbs = trustee.install_tree(tmp_path / "opt")
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import ccflab_trustee.rego as r; "
             "print(r.module_origin()); import regorus; e = regorus.Engine(); "
             "e.add_policy('', 'package p\\nx := 1\\n'); print(e.eval_rule_as_json('data.p.x'))")  # fmt: skip
    result = subprocess.run([PYTHON, "-S", "-c", probe, str(kbs.parent.parent / "lib")],  # -S: no site-packages
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    origin, value = result.stdout.split()
    assert origin == str(tmp_path / "opt" / "lib" / "regorus") and value == "1"


def test_version_flag(tmp_path):
    kbs = trustee.install_tree(tmp_path / "opt")
    result = subprocess.run([PYTHON, str(kbs), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == f"kbs {trustee.VERSION}"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    kbs = start_kbs(tmp_path_factory.mktemp("kbs"))
    yield kbs
    kbs.stop()


def test_starts_with_the_config_the_kbs_role_renders(running):
    assert "Starting HTTPS server" in running.logs()
    assert running.client().list_resource_policies() == ["resource-policy"]


def test_ccfactory_client_sample_flow_is_denied_by_the_default_policy(running):
    client = running.client()
    session = client.attest_sample()
    with pytest.raises(PolicyDenied) as err:
        client.get_resource(session, "ccfactory/health/probe")
    assert (err.value.status, err.value.kind) == (401, "PolicyDeny")
