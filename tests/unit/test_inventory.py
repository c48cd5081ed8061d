"""Inventories: shipped examples are valid; a bad one stops pyinfra before any connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccfactory.cli import main as ccfactory_main
from support import CountingListener

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")


@pytest.mark.parametrize("site", ["example_snp", "example_tdx"])
def test_example_inventories_check(site, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert ccfactory_main(["check", f"inventories/{site}.py"]) == 0
    out = capsys.readouterr().out
    assert "3 host(s) valid." in out
    assert "kbs-01.example.net" in out and "workers" in out


def test_check_prints_every_error(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text(
        'workers = [("w1", {"bmc_password": "pw", "gpu_count": 2}), ("w2", {"tee": "tdx"})]\n'
        'snp = ["w1", "w2"]\n'
    )
    assert ccfactory_main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "w1: bmc_password: a literal secret" in err
    assert "w1: gpu_model: gpu_count is set" in err
    assert "w2: tee: tee is 'tdx'" in err
    assert "pw\n" not in err


def test_every_option_documented_in_example_group_data():
    from ccfactory.config import HostData

    for site in ("example_snp", "example_tdx"):
        text = (REPO / "inventories" / "group_data" / f"{site}.py").read_text()
        missing = [key for key in HostData.model_fields if f"{key} =" not in text]
        assert missing == [], f"{site}: document these options: {missing}"


def _run_pyinfra(inventory: Path, cwd: Path):
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    return subprocess.run(
        [str(PYINFRA), "-y", str(inventory), "exec", "--", "true"],
        cwd=cwd, capture_output=True, text=True, timeout=120, env=env,
    )


def test_bad_inventory_stops_pyinfra_before_connecting(tmp_path):
    listener = CountingListener()
    inv = tmp_path / "site.py"
    inv.write_text(
        "from ccfactory.inventory import validate_before_connect\n"
        f"_ssh = {{'ssh_hostname': '127.0.0.1', 'ssh_port': {listener.port}}}\n"
        "workers = [('w1', {**_ssh, 'bmc_password': 'pw'}), ('w2', {**_ssh, 'gpu_cc_mode': 'ppcie',"
        " 'gpu_count': 1, 'gpu_model': 'B200'})]\n"
        "snp = ['w1', 'w2']\n"
        "validate_before_connect()\n"
    )
    result = _run_pyinfra(inv, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "w1: bmc_password: a literal secret is not allowed" in output
    assert "w2: gpu_cc_mode: ppcie needs an HGX Hopper GPU; B200" in output
    assert "no host was touched" in output
    assert listener.accepted == 0, "pyinfra connected although the inventory was invalid"


def test_good_inventory_does_connect(tmp_path):
    # the control case: the same listener does see pyinfra when the data is valid
    listener = CountingListener()
    inv = tmp_path / "site.py"
    inv.write_text(
        "from ccfactory.inventory import validate_before_connect\n"
        f"kbs = [('k1', {{'ssh_hostname': '127.0.0.1', 'ssh_port': {listener.port}, 'tee': 'none'}})]\n"
        "validate_before_connect()\n"
    )
    _run_pyinfra(inv, tmp_path)
    assert listener.accepted >= 1
