"""The firmware role against in-process lab BMCs, through pyinfra's API on ``@fake`` hosts.

Real Redfish (the lab's sushy-tools emulator, one per node, on 127.0.0.1 over plain HTTP),
real profiles, resolver, planner, client and role; simulated SSH side: the node's facts
(boot id, TEE status rendered by the lab renderer from the BMC's *applied* BIOS state,
the one-shot marker) and its shell (the marker file), and the reboot wait (the shared
mechanism's ``wait_for_new_boot``) which records how many hosts reboot at once.

Example::

    h = Harness(tmp_path, monkeypatch)
    h.add("node1", "dell", "snp")
    result = h.run()
    assert result.passes["node1"] == 3 and h.nodes["node1"].features().snp
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from werkzeug.serving import WSGIRequestHandler, make_server

from ccfactory.clients.redfish import RedfishClient, RetryPolicy
from ccfactory.facts.node import BootId
from ccfactory.lab.bmc.emulator import wsgi_for
from ccfactory.lab.bmc.pki import ensure_lab_ca, ensure_server_cert
from ccfactory.lab.bmc.state import StateStore
from ccfactory.lab.bmc.testing import make_bmc
from ccfactory.roles.firmware import operations as firmware_ops
from ccfactory.operations import reboot
from support import SimulatedFirmwareHost

WSGIRequestHandler.log_request = lambda *a, **k: None  # type: ignore[method-assign]  # quiet server

VENDORS = ("dell", "hpe", "lenovo", "supermicro", "generic")
TEES = ("snp", "tdx")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Node(SimulatedFirmwareHost):
    """One simulated host: its lab BMC (HTTP on 127.0.0.1) and its SSH-side state."""

    def __init__(self, root: Path, name: str, index: int, vendor: str, tee: str, tls: bool = False):
        super().__init__(root / "lab", name, tee, root / "render" / name)
        self.vendor, self.tls = vendor, tls
        self.bmc = make_bmc(self.lab_dir, node=name, index=index, vendor=vendor, tee=tee, power="simulated")
        self.seen: list[tuple[str, str]] = []
        app = wsgi_for(self.bmc.runtime)

        def recording(environ: dict, start_response: Any) -> Any:
            self.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
            return app(environ, start_response)

        ssl_context = None
        if tls:  # the lab's CA and a server certificate for 127.0.0.1
            self.ca = ensure_lab_ca(self.lab_dir)
            ssl_context = ensure_server_cert(self.lab_dir, name, "127.0.0.1", root / "certs" / name)
        self.server = make_server("127.0.0.1", 0, recording, threaded=True, ssl_context=ssl_context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.password_file = root / f"{name}.password"
        self.password_file.write_text(self.bmc.password + "\n")
        self.password_file.chmod(0o600)
        self.data: dict[str, Any] = {
            "bmc_vendor": vendor,
            "bmc_address": "127.0.0.1",
            "bmc_port": self.port,
            "bmc_username": self.bmc.username,
            "bmc_password_file": str(self.password_file),
            "bmc_retries": 2,
            "bmc_retry_backoff": 0.01,
            "bmc_timeout": 10.0,
            "reboot_timeout": 120,
            "fake_delay": 0,
            "fake_delay_jitter": 0,
        }
        if tls:
            self.data["bmc_ca_bundle"] = str(self.ca)

    # -- BMC side

    def state(self):
        return StateStore(self.lab_dir, self.name).load()

    def tee_on(self) -> bool:
        f = self.features()
        if self.tee == "snp":
            return f.smee and f.snp and f.rmp_coverage and f.sev_es_asid_limit > 1
        return f.tme and f.tme_mt and f.tdx and f.seam_loader and f.tdx_key_split > 0

    def writes(self) -> list[tuple[str, str]]:
        """PATCH/POST/DELETE sent to the BMC, sessions excluded."""
        return [(m, p) for m, p in self.seen if m != "GET" and "/SessionService/" not in p]

    def patches(self) -> int:
        return sum(1 for m, _ in self.writes() if m == "PATCH")

    def resets(self) -> int:
        return sum(1 for m, p in self.writes() if p.endswith("ComputerSystem.Reset"))

    def client(self, bmc, name: str) -> RedfishClient:
        if self.tls:  # the production path: https://address:port, CA bundle, retries from the config
            return RedfishClient.from_config(bmc, host=name)
        return RedfishClient(
            self.url,
            bmc.username,
            bmc.password.reveal(),
            vendor=bmc.vendor,
            verify=False,
            timeout=bmc.timeout,
            retry=RetryPolicy(attempts=bmc.retries, backoff=bmc.retry_backoff),
            name=name,
            secret_hint=bmc.password.describe(),
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(ANSI.sub("", record.getMessage()))


@dataclass
class Result:
    prepare_changes: dict[str, int]
    changed: dict[str, list[str]] = field(default_factory=dict)  # host -> names of ops that changed
    failed: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    max_rebooting: int = 0
    executed: bool = True

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def passes(self) -> dict[str, int]:
        return {h: sum(1 for n in ops if "BIOS pass" in n) for h, ops in self.changed.items()}

    def host_log(self, name: str) -> str:
        return "\n".join(line for line in self.lines if f"[@fake/{name}]" in line)


class Harness:
    """Simulated hosts and a pyinfra API run of ``ccfactory.roles.firmware.apply``."""

    def __init__(self, tmp_path: Path, monkeypatch: Any):
        self.root = tmp_path
        self.monkeypatch = monkeypatch
        self.nodes: dict[str, Node] = {}
        self.on_reboot: Any = None  # callable(node, reboots so far) run while a host "boots"
        self.reboots: dict[str, int] = {}
        self.escalations: dict[str, int] = {}  # node -> escalated reboots (ForceRestart after an ignored graceful one)
        monkeypatch.setattr(firmware_ops, "CLIENT_FACTORY", lambda bmc, name: self.node(name).client(bmc, name))

    def node(self, host_name: str) -> Node:
        return self.nodes[host_name.removeprefix("@fake/")]

    def add(self, name: str, vendor: str, tee: str, *, tls: bool = False) -> Node:
        node = Node(self.root, name, len(self.nodes) + 1, vendor, tee, tls)
        self.nodes[name] = node
        return node

    def run(
        self,
        *,
        dry: bool = False,
        check_for_changes: bool = True,
        batch: int = 1,
        data: dict[str, Any] | None = None,
        hosts: Iterable[str] | None = None,
        groups: dict[str, list[str]] | None = None,
    ) -> Result:
        """``data`` overrides every host's data (a None value removes the key); ``groups``
        replaces the default groups (workers + the node's TEE)."""
        names = list(hosts or self.nodes)
        host_list = []
        for n in names:
            values = {**self.nodes[n].data, "reboot_batch_size": batch, **(data or {})}
            host_list.append((f"@fake/{n}", {k: v for k, v in values.items() if v is not None}))
        if groups is None:
            groups = {"workers": names, **{t: [n for n in names if self.nodes[n].tee == t] for t in TEES}}
        inventory_groups = {g: ([f"@fake/{n}" for n in members], {}) for g, members in groups.items() if members}
        inventory = Inventory((host_list, {}), **inventory_groups)
        state = State(inventory, Config(), check_for_changes=check_for_changes)
        rebooting = {"now": 0, "max": 0}

        def fake_wait(target_host, old_boot_id, *, timeout, poll_interval, reason, **kw):
            node = self.node(target_host.name)
            rebooting["now"] += 1
            rebooting["max"] = max(rebooting["max"], rebooting["now"])
            self.reboots[node.name] = self.reboots.get(node.name, 0) + 1
            if self.on_reboot:
                self.on_reboot(node, self.reboots[node.name])
            gevent.sleep(0.05)
            escalation = kw.get("escalation")
            op = node.state().power.op
            answers = op is None or not op.hang  # a reset hung in POST: the node does not answer SSH
            if answers and node.facts(BootId) == old_boot_id and escalation is not None:
                # answering on the old boot: the real mechanism escalates after the grace period
                done = escalation.action(target_host)
                if done:
                    self.escalations[node.name] = self.escalations.get(node.name, 0) + 1
                    target_host.log_styled(f"still running the old boot: {done} ({reason})",
                                           log_func=logging.getLogger("pyinfra").warning)
            rebooting["now"] -= 1
            if node.facts(BootId) != old_boot_id:
                return True
            target_host.log_styled(  # as the real mechanism says it
                f"ccfactory: did not come back within {int(timeout)}s after reboot ({reason}); "
                "check the node's console through its BMC, then re-run (nothing is repeated)",
                log_func=logging.getLogger("pyinfra").error,
            )
            return False

        self.monkeypatch.setattr(reboot, "wait_for_new_boot", fake_wait)
        capture = _Capture()
        pyinfra_log = logging.getLogger("pyinfra")
        pyinfra_log.addHandler(capture)
        old_level = pyinfra_log.level
        pyinfra_log.setLevel(logging.INFO)
        try:
            state.set_stage(StateStage.Connect)
            connect_all(state)
            for host in inventory:
                node = self.node(host.name)
                host.get_fact = node.facts
                host.run_shell_command = node.shell
            state.set_stage(StateStage.Prepare)
            from ccfactory.roles import firmware

            add_deploy(state, firmware.apply)
            short = {h: h.name.removeprefix("@fake/") for h in inventory}
            result = Result({short[h]: state.get_meta_for_host(h).ops_change for h in inventory})
            if dry:
                result.executed = False
                return result
            state.set_stage(StateStage.Execute)
            try:
                run_ops(state)
            except PyinfraError as exc:  # every host failed: the CLI exits 1 with this
                assert "No hosts remaining" in str(exc), exc
            for host in inventory:
                ops = []
                for op_hash in state.get_op_order():
                    if op_hash not in state.ops[host]:
                        continue
                    meta = state.ops[host][op_hash].operation_meta
                    if meta.is_complete() and meta.did_succeed(_raise_if_not_complete=False) and meta.did_change():
                        ops.append(", ".join(state.get_op_meta(op_hash).names))
                result.changed[short[host]] = ops
            result.failed = {short[h] for h in state.failed_hosts}
            result.max_rebooting = rebooting["max"]
            return result
        finally:
            pyinfra_log.removeHandler(capture)
            pyinfra_log.setLevel(old_level)
            if "result" in locals():
                result.lines = capture.lines

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
