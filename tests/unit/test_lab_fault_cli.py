"""``ccfactory lab fault``: an operator flips a lab BMC's fault switches from the shell."""

from __future__ import annotations

import json

from ccfactory.lab.bmc.faults import get_faults
from ccfactory.lab.bmc.spec import node_dir
from ccfactory.lab.command import cli_main


def run(tmp_path, capsys, *argv):
    rc = cli_main(["fault", "--lab-dir", str(tmp_path), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_switches_are_set_kept_shown_and_cleared(tmp_path, capsys):
    node_dir(tmp_path, "node1").mkdir(parents=True)
    rc, out, _ = run(tmp_path, capsys, "node1", "fail_next_requests=3", "ignore_graceful=true", "reset_hang=off")
    assert rc == 0 and json.loads(out)["fail_next_requests"] == 3
    f = get_faults(tmp_path, "node1")
    assert (f.fail_next_requests, f.ignore_graceful, f.reset_hang) == (3, True, "off")
    rc, out, _ = run(tmp_path, capsys, "node1", 'revert_after_reset=["Snp"]')  # the others are kept
    assert rc == 0 and get_faults(tmp_path, "node1").revert_after_reset == ["Snp"]
    assert json.loads(out)["ignore_graceful"] is True
    rc, out, _ = run(tmp_path, capsys, "node1", "--clear")
    assert rc == 0 and json.loads(out) == get_faults(tmp_path, "node1").model_dump()
    assert get_faults(tmp_path, "node1").ignore_graceful is False


def test_bad_switches_and_unknown_nodes_are_refused_by_name(tmp_path, capsys):
    node_dir(tmp_path, "node1").mkdir(parents=True)
    rc, _, err = run(tmp_path, capsys, "node1", "colour=red")
    assert rc == 1 and "unknown fault switch(es) ['colour']" in err
    rc, _, err = run(tmp_path, capsys, "node1", "fail_status=200")
    assert rc == 1 and "fail_status" in err
    rc, _, err = run(tmp_path, capsys, "node1", "fail_next_requests")
    assert rc == 1 and "expected KEY=VALUE" in err
    for node in ("node7", "../etc"):
        rc, _, err = run(tmp_path, capsys, node, "--clear")
        assert rc == 1 and "no BMC of that name in the lab" in err
    assert not (tmp_path / "bmc" / "node7").exists()
