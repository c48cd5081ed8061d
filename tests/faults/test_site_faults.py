"""An SSH connection that dies in the middle of a deploy fails its host alone, without the lab.

paramiko raises ``EOFError`` when a command (or a fact's command) is started on a transport
whose peer has gone (sshd killed, node reset) before the transport noticed. This drives
pyinfra's real SSH connector (``pyinfra.connectors.ssh.SSHConnector``: command building, sudo
retry, output reading) over a scripted paramiko client: node-a's connection dies after its first
command of the run, node-b's stays up. Three operations run as in a ccfactory deploy: a command,
an operation that reads a fact while it runs (``files.link``; the runtime stage's shim links do
this), another command. node-a must fail alone; node-b must run all three; pyinfra must not
abort the run (an escaped exception ends every host's deploy: "An internal exception occurred").

The lab versions (a real sshd killed during a command and between commands, then the re-run):
tests/lab/test_site_faults_lab.py.
"""

from __future__ import annotations

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.operations import files, server

import ccfactory.deploys  # noqa: F401 - what every ccfactory deploy file imports first


class _Channel:
    def recv_exit_status(self) -> int:
        return 0


class _Buffer(list):
    channel = _Channel()

    def close(self) -> None:
        pass


class ScriptedClient:
    """paramiko.SSHClient as pyinfra's connector uses it; dies after ``alive_for`` commands once armed."""

    def __init__(self, alive_for: int | None):
        self.alive_for = alive_for
        self.armed = False
        self.commands: list[str] = []

    def exec_command(self, command: str, get_pty: bool = False):  # noqa: ARG002
        if self.armed and self.alive_for is not None and len(self.commands) >= self.alive_for:
            raise EOFError()  # paramiko.Transport.open_channel re-raises the reader's EOFError
        self.commands.append(command)
        return _Buffer(), _Buffer(), _Buffer()

    def close(self) -> None:
        pass

    def get_transport(self):
        return None


@pytest.fixture
def scripted_ssh(monkeypatch):
    clients: dict[str, ScriptedClient] = {}

    def fake_connect(self) -> None:
        self.client = clients[self.host.name]

    monkeypatch.setattr(SSHConnector, "_connect", fake_connect)
    return clients


def test_a_connection_lost_mid_run_fails_only_its_host(scripted_ssh):
    scripted_ssh["node-a"] = ScriptedClient(alive_for=1)
    scripted_ssh["node-b"] = ScriptedClient(alive_for=None)
    inventory = Inventory(([("node-a", {"ssh_hostname": "192.0.2.1"}), ("node-b", {"ssh_hostname": "192.0.2.2"})], {}))
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    assert len(state.activated_hosts) == 2

    state.set_stage(StateStage.Prepare)
    add_op(state, server.shell, name="one", commands=["echo one"])
    add_op(state, files.link, name="link", path="/usr/local/bin/ccf-demo", target="/bin/true")
    add_op(state, server.shell, name="three", commands=["echo three"])
    for client in scripted_ssh.values():  # the connection dies during the run, not while planning
        client.commands.clear()
        client.armed = True

    state.set_stage(StateStage.Execute)
    run_ops(state)  # must not raise: one host's lost connection is that host's failure

    assert {h.name for h in state.failed_hosts} == {"node-a"}
    b = scripted_ssh["node-b"].commands
    assert any("echo one" in c for c in b) and any("ln -s" in c for c in b) and any("echo three" in c for c in b), b
    assert not any("echo three" in c for c in scripted_ssh["node-a"].commands)
