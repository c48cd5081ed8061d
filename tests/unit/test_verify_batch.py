"""The verify stage batches a node's check commands into one remote command.

* ``batch_script`` / ``parse_batch`` give every command exactly what it gets when it runs alone
  (stdout and stderr lines, exit status), through a real ``sh``, for awkward commands too;
* on pyinfra ``@fake`` hosts whose commands run in a local shell, ``record_node`` sends one
  remote command per node (plus the GPU modes query, which needs the GPU list first) and the
  readiness rows are the very rows of the checks run one command at a time;
* a batch that cannot be used (connection lost, output cut short) changes nothing: each check
  runs its own commands, and every check can still fail.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from ccfactory.config import load_node_config
from ccfactory.roles.runtime import checks as runtime_checks
from ccfactory.verify import checks, collect, node_checks  # noqa: F401 - node_checks registers the checks
from ccfactory.verify.checks import (
    REGISTRY,
    CheckContext,
    CommandOutput,
    batch_script,
    batched_reads,
    parse_batch,
    run_check,
    run_checks,
)

AWKWARD = [
    "echo one; echo two",
    "printf 'no newline at the end'",
    "printf 'two blank lines\\n\\n\\n'",
    "printf ''",
    "echo to-stderr >&2; echo to-stdout; exit 3",
    "echo '### ccfactory:section x'; echo inside",  # ccfactory's own section markers pass through
    "exit 0",
    "echo 'unbalanced",  # does not parse: fails alone, as it would on its own
    "cat /nonexistent/ccfactory 2>/dev/null",
    "set -e; false; echo never",
    "printf 'tab\\there\\r\\nwindows line\\n'",
]


def lines(text: str) -> list[str]:
    """Lines as pyinfra reads a command's output (split at newlines, no empty last line)."""
    parts = text.split("\n")
    return parts[:-1] if parts and parts[-1] == "" else parts


def local(command: str) -> CommandOutput:
    """Run ``command`` as pyinfra runs it on a node (``sh -c``), shaped as pyinfra's runner shapes it."""
    proc = subprocess.run(["sh", "-c", command], check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return CommandOutput(proc.returncode, "\n".join(lines(proc.stdout)), "\n".join(lines(proc.stderr)))


def test_every_command_gets_what_it_gets_alone():
    nonce = "0123456789abcdef"
    batched = parse_batch(local(batch_script(AWKWARD, nonce)).stdout, nonce, len(AWKWARD))
    assert batched is not None
    for command, got in zip(AWKWARD, batched):
        assert got == local(command), command


def test_an_incomplete_batch_is_not_used():
    nonce = "feedfacefeedface"
    out = local(batch_script(["echo a", "echo b"], nonce)).stdout
    assert parse_batch(out, nonce, 2) is not None
    cut = out[: out.index("rc 1")]  # the connection dropped before the second command finished
    assert parse_batch(cut, nonce, 2) is None
    assert parse_batch(out, "another-nonce", 2) is None  # markers of another batch are plain output
    assert parse_batch(out.replace(" end 2", " end 3"), nonce, 2) is None


class Node:
    """A node's shell: every command runs in a local ``sh``; counts what reaches the node."""

    def __init__(self, *, break_batches: bool = False):
        self.commands: list[str] = []
        self.break_batches = break_batches

    def __call__(self, command: str) -> CommandOutput:
        self.commands.append(command)
        if self.break_batches and checks.BATCH_MARKER in command:
            return CommandOutput(1, "", "SSH connection lost")
        return local(command)


def worker(**data):
    return load_node_config("w1", ("workers", "snp"), data, check_files=False)


def test_a_nodes_declared_reads_are_one_remote_command():
    cfg = worker()
    node = Node()
    ctx = CheckContext(cfg=cfg, run=node)
    results = run_checks(ctx)
    assert len(node.commands) == 1 and checks.BATCH_MARKER in node.commands[0]
    assert ctx.remote_commands == 1
    # the same rows as the checks run one command at a time
    alone = Node()
    one_by_one = [run_check(c, CheckContext(cfg=cfg, run=alone)) for c in REGISTRY.values()]
    assert results == one_by_one
    assert len(alone.commands) >= 5  # os, TEE, IOMMU, containerd, Kata
    assert set(batched_reads(REGISTRY.values(), CheckContext(cfg=cfg, run=alone))) <= set(alone.commands)


def test_a_broken_batch_falls_back_to_one_command_per_read():
    cfg = worker()
    node = Node(break_batches=True)
    results = run_checks(CheckContext(cfg=cfg, run=node))
    assert results == [run_check(c, CheckContext(cfg=cfg, run=local)) for c in REGISTRY.values()]
    assert len(node.commands) >= 6  # the broken batch, then every read on its own


def test_every_check_still_fails_from_its_own_batched_output():
    """A node whose answers say 'not ready': each check fails with its own hint, batched or not."""
    cfg = worker()
    from ccfactory.facts.containerd import ContainerdRuntimes
    from ccfactory.facts.kernel import IommuGroups

    empty = {checks.fact_command(IommuGroups): "", checks.fact_command(ContainerdRuntimes): ""}

    def node(command: str) -> CommandOutput:
        if checks.BATCH_MARKER in command:  # the batch, with the two reads answered as above
            for read, answer in empty.items():
                command = command.replace(f"sh -c {__import__('shlex').quote(read)}",
                                          f"sh -c {__import__('shlex').quote('printf ' + repr(answer))}")
        elif command in empty:
            return CommandOutput(0, empty[command])
        return local(command)

    batched = {r.check: r for r in run_checks(CheckContext(cfg=cfg, run=node))}
    alone = {c.id: run_check(c, CheckContext(cfg=cfg, run=node)) for c in REGISTRY.values()}
    assert batched == alone
    assert batched["host.iommu_on"].status == "fail" and "IOMMU" in batched["host.iommu_on"].hint
    assert batched["runtime.containerd_handlers"].status == "fail"
    assert batched["runtime.containerd_handlers"].hint == "run the runtime stage"


# ------------------------------------------------------------------ through the verify stage on @fake hosts


def fake_state(hosts):
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.state import StateStage

    inventory = Inventory(([(name, data) for name, data, _ in hosts], {}),
                          **{g: ([n for n, _, gs in hosts if g in gs], {}) for g in {g for _, _, gs in hosts for g in gs}})  # fmt: skip
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    return state


def pyinfra_shell(counter: dict, name: str):
    """``Host.run_shell_command`` of a ``@fake`` host, run in a local shell (pyinfra's output shape)."""
    from pyinfra.connectors.util import CommandOutput as PyinfraOutput
    from pyinfra.connectors.util import OutputLine

    def run_shell_command(command, **kwargs):
        text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
        counter.setdefault(name, []).append(text)
        proc = subprocess.run(["sh", "-c", text], check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out = [OutputLine("stdout", x) for x in lines(proc.stdout)] + [OutputLine("stderr", x) for x in lines(proc.stderr)]
        return proc.returncode == 0, PyinfraOutput(out)

    return run_shell_command


@pytest.mark.parametrize("gpus, expected", [(0, 1), (8, 2)])
def test_the_verify_stage_sends_one_remote_command_per_node(tmp_path, monkeypatch, gpus, expected):
    """One batch per node; a GPU node adds the gpu-admin-tools modes query (it needs the GPU list
    the batch returns). Before batching: one command per read (13 on a GPU worker)."""
    monkeypatch.setenv("CCFACTORY_REPORT_DIR", str(tmp_path))
    gpu = {"gpu_count": gpus, "gpu_model": "H100"} if gpus else {}
    state = fake_state([("@fake/w1", gpu, ("site", "workers", "snp")), ("@fake/w2", gpu, ("site", "workers", "snp"))])
    sent: dict[str, list[str]] = {}
    for host in state.inventory:
        host.run_shell_command = pyinfra_shell(sent, host.name)
    from ccfactory.config import node_config

    for host in state.inventory:
        assert collect.record_node(state, host, node_config(host))
    assert {name: len(commands) for name, commands in sent.items()} == {"@fake/w1": expected, "@fake/w2": expected}
    report = json.loads((tmp_path / "readiness.json").read_text())
    rows = {n["node"]: n for n in report["nodes"]}
    assert [c["check"] for c in rows["@fake/w1"]["checks"]] == list(REGISTRY)  # every check, in order
    # the rows are the rows of the checks run one command at a time
    cfg = node_config(state.inventory.get_host("@fake/w1"))
    alone = [run_check(c, CheckContext(cfg=cfg, run=local, data={}, fleet=collect.fleet_of(state.inventory)))
             for c in REGISTRY.values()]  # fmt: skip
    assert [json.loads(r.model_dump_json()) for r in alone] == rows["@fake/w1"]["checks"]


def test_the_background_check_runs_alongside_and_its_row_keeps_its_place(monkeypatch):
    import gevent

    order = []

    def slow(ctx):
        order.append("slow start")
        gevent.sleep(0.05)
        order.append("slow end")
        return checks.ok("slow done")

    def quick(ctx):
        order.append("quick")
        return checks.fail("quick failed", hint="fix it")

    monkeypatch.setattr(checks, "REGISTRY", {
        "t.slow": checks.Check("t.slow", "host", slow, lambda cfg: True, "", background=True),
        "t.quick": checks.Check("t.quick", "host", quick, lambda cfg: True, ""),
        "t.waits": checks.Check("t.waits", "host", lambda ctx: gevent.sleep(0.01) or checks.ok("waited"), lambda cfg: True, ""),
    })
    results = run_checks(CheckContext(cfg=worker(), run=local))
    assert [(r.check, r.status) for r in results] == [("t.slow", "pass"), ("t.quick", "fail"), ("t.waits", "pass")]
    assert order.index("quick") < order.index("slow end")  # did not wait for the slow one


def test_the_attestation_check_is_batched_and_runs_in_the_background():
    from ccfactory.verify import attestation

    item = REGISTRY[attestation.CHECK_ID]
    assert item.background
    ctx = CheckContext(cfg=worker(kbs_url="https://kbs:8443"), run=local)
    assert f"cat {attestation.INITDATA_JSON}" in item.reads(ctx)
    assert runtime_checks.INITDATA_DIR == "/etc/ccfactory/coco"
