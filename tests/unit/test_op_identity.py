"""pyinfra names an operation by the line numbers of its call stack, not by file
(pyinfra 3.10 ``api/operation.py`` ``solve_operation_consistency``); the site runs every stage
from one line (``ccfactory.deploys.run_steps``). Two stages' operations on the same line of
their role files must still be two operations: a KBS-host operation merged with a worker's
mixes the two stages' order and names, and makes pyinfra refuse a rolling reboot ("Cannot have
different values for `_parallel`")."""

from __future__ import annotations

import importlib
import sys

import pyinfra
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.state import StateStage

ROLE = '''from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server


@deploy("{stage}")
def apply():
    if host.data.get("stage") == "{stage}":
        server.shell(name="{stage} work", commands=["true"], _parallel={parallel})
        server.shell(name="{stage} more work", commands=["true"])
        server.shell(name="{stage} last work", commands=["true"])
'''

DEPLOY = '''from ccfactory import deploys
deploys.{runner}([("ccf_test_alpha", "apply"), ("ccf_test_beta", "apply")])
'''


def _plan(tmp_path, monkeypatch, runner: str) -> dict[str, set[str]]:
    """op hash -> operation names (in pyinfra's execution order), after loading the deploy on
    an Alpha host and a Beta host."""
    from pyinfra_cli.util import load_deploy_file

    (tmp_path / "ccf_test_alpha.py").write_text(ROLE.format(stage="Alpha", parallel=1))
    (tmp_path / "ccf_test_beta.py").write_text(ROLE.format(stage="Beta", parallel=2))  # same lines as Alpha's
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY.format(runner=runner))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("ccf_test_alpha", "ccf_test_beta"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    monkeypatch.setattr(pyinfra, "is_cli", True)  # stack-based operation identity, as `pyinfra` runs it
    inventory = Inventory(([("@fake/a", {"stage": "Alpha"}), ("@fake/b", {"stage": "Beta"})], {}))
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    from pyinfra.context import ctx_state

    with ctx_state.use(state):
        load_deploy_file(state, str(deploy))
    return {h: set(state.get_op_meta(h).names) for h in state.get_op_order()}


def test_two_stages_on_the_same_lines_stay_two_operations(tmp_path, monkeypatch):
    ops = _plan(tmp_path, monkeypatch, "run_steps")
    work = [sorted(names) for names in ops.values() if not any(n.startswith("Step:") for n in names)]
    assert sorted(work) == [[f"{s} | {s} {w}"] for s in ("Alpha", "Beta") for w in ("last work", "more work", "work")]


def test_every_host_finishes_a_step_before_any_host_starts_the_next(tmp_path, monkeypatch):
    """The Beta host has nothing in the Alpha step; without the step points its Beta work
    would run beside the Alpha host's first operation (pyinfra merges per-host orders)."""
    order = [sorted(names)[0] for names in _plan(tmp_path, monkeypatch, "run_steps").values()]
    work = [name for name in order if not name.startswith("Step:")]
    assert [name.split(" | ")[0] for name in work] == ["Alpha"] * 3 + ["Beta"] * 3, work
    assert order == ["Step: ccf_test_alpha", "Alpha | Alpha work", "Alpha | Alpha more work", "Alpha | Alpha last work",
                     "Step: ccf_test_beta", "Beta | Beta work", "Beta | Beta more work", "Beta | Beta last work"]


def _plain_loop(steps):  # what run_steps did before: every step from one line, no loop position
    for module, step in steps:
        getattr(importlib.import_module(module), step)()


def test_the_collision_is_real_without_the_loop_position(tmp_path, monkeypatch):
    """The control: the same deploy through a plain loop merges the two (or pyinfra refuses)."""
    from ccfactory import deploys

    monkeypatch.setattr(deploys, "plain_loop", _plain_loop, raising=False)
    try:
        ops = _plan(tmp_path, monkeypatch, "plain_loop")
    except Exception as exc:  # noqa: BLE001 - pyinfra refuses the merged operation's two _parallel values
        assert "_parallel" in str(exc), exc
        print(f"\nwithout the loop position: {exc}")
        return
    assert any(len(names) > 1 for names in ops.values()), ops
