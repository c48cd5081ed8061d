"""``ccfactory firmware plan`` over many BMCs (issue 17 item 4): one HTTPS connection and one
Redfish session per BMC (logged out), a bounded pool, progress lines, per-BMC failures; and
the lab BMC's persistent connections that make the first measurable."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from firmware_harness import Harness
from support import free_port_on, undo_gevent_patching

from ccfactory import cli
from ccfactory.lab.bmc import service
from ccfactory.lab.bmc.spec import BmcSpec, run_dir

CCFACTORY = Path(sys.executable).with_name("ccfactory")
LOG_LINE = re.compile(r"ccfactory\.lab\.bmc: (\S+) ([A-Z]+) (\S+) -> (\d+) \(\d+ ms, connection (\d+)\)")


# ------------------------------------------------------------------ in-process (lab BMC harness, no sockets)


@pytest.fixture
def harness(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    yield h
    h.close()


def _inventory(tmp_path, harness) -> str:
    hosts = []
    for name, node in harness.nodes.items():
        data = {k: v for k, v in node.data.items() if not k.startswith("fake_")}
        hosts.append(f"    ({name!r}, {data!r}),")
    tees = {t: [n for n, node in harness.nodes.items() if node.tee == t] for t in ("snp", "tdx")}
    path = tmp_path / "fleet_inventory.py"
    path.write_text("workers = [\n" + "\n".join(hosts) + "\n]\n" + "".join(f"{t} = {n!r}\n" for t, n in tees.items()))
    return str(path)


def _fleet(harness, count: int) -> None:
    kinds = [("dell", "snp"), ("hpe", "tdx"), ("lenovo", "snp"), ("supermicro", "tdx"), ("generic", "snp")]
    for i in range(count):
        harness.add(f"node{i + 1}", *kinds[i % len(kinds)])


def _counting_factory(monkeypatch, *, delay: float = 0.0, fail: dict | None = None):
    """Wrap the harness's client factory: count BMCs read at once, fail some hosts."""
    from ccfactory.roles.firmware import operations as firmware_ops
    inner = firmware_ops.CLIENT_FACTORY
    seen = {"now": 0, "max": 0, "clients": 0}
    lock = threading.Lock()

    class Counted:
        def __init__(self, client):
            self._client = client
            with lock:
                seen["now"] += 1
                seen["clients"] += 1
                seen["max"] = max(seen["max"], seen["now"])

        def read_bios(self, *a, **kw):
            time.sleep(delay)
            return self._client.read_bios(*a, **kw)

        def close(self):
            with lock:
                seen["now"] -= 1
            self._client.close()

        def __getattr__(self, name):
            return getattr(self._client, name)

    def factory(bmc, name):
        if fail and name in fail:
            raise fail[name]
        return Counted(inner(bmc, name))

    monkeypatch.setattr(firmware_ops, "CLIENT_FACTORY", factory)
    return seen


def test_plan_reads_at_most_parallel_bmcs_at_once(harness, tmp_path, monkeypatch, capsys):
    _fleet(harness, 9)
    seen = _counting_factory(monkeypatch, delay=0.05)
    assert cli.main(["firmware", "plan", _inventory(tmp_path, harness), "--parallel", "3"]) == 0
    out = capsys.readouterr().out
    assert "9 host(s) planned" in out
    assert seen["clients"] == 9 and seen["now"] == 0  # one client per BMC, every one closed
    assert seen["max"] == 3  # bounded, and the bound is used
    # the default pool is bounded too, and reads several BMCs at once
    seen.update(now=0, max=0, clients=0)
    assert cli.main(["firmware", "plan", _inventory(tmp_path, harness)]) == 0
    assert 1 < seen["max"] <= cli.PLAN_PARALLEL
    with pytest.raises(SystemExit):
        cli.main(["firmware", "plan", _inventory(tmp_path, harness), "--parallel", "0"])


def test_plan_prints_progress_on_stderr_and_keeps_the_output_order(harness, tmp_path, monkeypatch, capsys):
    _fleet(harness, 12)
    _counting_factory(monkeypatch)
    assert cli.main(["firmware", "plan", _inventory(tmp_path, harness), "--json", "--parallel", "4"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout is only the JSON
    assert list(data) == [f"node{i + 1}" for i in range(12)]  # inventory order, not completion order
    lines = [line for line in captured.err.splitlines() if line.startswith("planned ")]
    counts = [int(re.match(r"planned (\d+)/12", line)[1]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 12 and len(counts) >= 6, captured.err


def test_progress_lines_every_tenth_and_on_a_timer():
    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    clock, out = Clock(), []

    class Stream:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    progress = cli._PlanProgress(1000, clock=clock, stream=Stream())
    for i in range(1000):
        progress(failed=i % 100 == 0)
    lines = [line for line in "".join(out).splitlines() if line]
    assert lines[0] == "planned 100/1000 (1 failed), 0 s" and lines[-1] == "planned 1000/1000 (10 failed), 0 s"
    assert len(lines) == 10
    out.clear()
    slow = cli._PlanProgress(1000, clock=clock, stream=Stream())
    slow(failed=False)
    clock.t = cli.PLAN_PROGRESS_EVERY + 1
    slow(failed=False)  # no tenth reached, but the operator hears from it
    assert "".join(out).strip() == f"planned 2/1000, {cli.PLAN_PROGRESS_EVERY + 1:.0f} s"
    out.clear()
    small = cli._PlanProgress(3, clock=clock, stream=Stream())
    for _ in range(3):
        small(failed=False)
    assert out == []  # a handful of hosts: no progress lines


def test_one_failing_bmc_never_stops_the_others(harness, tmp_path, monkeypatch, capsys):
    import ccfactory.firmware.driver as driver_mod

    _fleet(harness, 6)
    _counting_factory(monkeypatch, fail={"node2": RuntimeError("BMC on fire")})
    real = driver_mod.FirmwareDriver

    def driver(bmc, tee, *, host, **kw):
        if host == "node5":
            raise RuntimeError("profile exploded")  # before any client exists
        return real(bmc, tee, host=host, **kw)

    monkeypatch.setattr(driver_mod, "FirmwareDriver", driver)
    inventory = _inventory(tmp_path, harness)
    assert cli.main(["firmware", "plan", inventory]) == 1
    out = capsys.readouterr().out
    assert "node2: ERROR: unexpected RuntimeError: BMC on fire" in out
    assert "node5: ERROR: unexpected RuntimeError: profile exploded" in out
    assert "4 host(s) planned" in out and "2 failed" in out
    assert cli.main(["firmware", "plan", inventory, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["node5"] == {"error": "unexpected RuntimeError: profile exploded", "requests": 0}
    assert "stage" in data["node1"] and "error" in data["node2"]


def test_the_reading_client_keeps_its_connection_the_default_one_does_not():
    from ccfactory.clients.redfish import RetryPolicy, _Connector, _Transport

    def headers(keep_alive):
        transport = _Transport(RetryPolicy(), "t", time.sleep)
        _Connector("https://192.0.2.1", verify=True, timeout=1, transport=transport, keep_alive=keep_alive)
        return transport.headers

    assert headers(False).get("Connection") == "close"  # sushy's default, kept for the firmware role
    assert "Connection" not in headers(True)


# ------------------------------------------------------------------ real emulator processes (HTTPS on loopback)


@pytest.fixture
def _unpatched_ssl(monkeypatch):
    undo_gevent_patching(monkeypatch)  # real HTTPS on loopback


@pytest.fixture
def bmcs(tmp_path, _unpatched_ssl):
    kinds = [("dell", "snp"), ("hpe", "tdx"), ("supermicro", "snp"), ("generic", "tdx")]
    specs = []
    for i, (vendor, tee) in enumerate(kinds):
        address = f"127.0.120.{10 + i}"
        specs.append(BmcSpec(node=f"fp{i}", index=i, vendor=vendor, tee=tee, address=address,
                             port=free_port_on(address), power="simulated"))
    lab = tmp_path / "lab"
    service.start(lab, specs, per_process=2)
    yield lab, specs
    service.stop(lab)


def _log(lab: Path) -> list[tuple[str, str, str, int, int]]:
    time.sleep(0.3)
    text = "".join(p.read_text() for p in run_dir(lab).glob("*.log"))
    return [(n, m, p, int(s), int(c)) for n, m, p, s, c in LOG_LINE.findall(text)]


def test_plan_uses_one_connection_and_one_session_per_bmc(bmcs, tmp_path):
    """The operator's command against real HTTPS emulators: per BMC one TLS connection, one
    login, one logout; every request counted by the command reached the BMC."""
    lab, specs = bmcs
    ca = service.ca_bundle(lab)
    rows = []
    for spec in specs:
        user, password = service.credentials(lab, spec.node)
        pw = tmp_path / f"{spec.node}.pw"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        rows.append((spec.node, {"bmc_vendor": spec.vendor, "bmc_address": spec.address, "bmc_port": spec.port,
                                 "bmc_username": user, "bmc_password_file": str(pw), "bmc_ca_bundle": str(ca)}))
    inventory = tmp_path / "inv.py"
    inventory.write_text(f"workers = {rows!r}\nsnp = {[s.node for s in specs if s.tee == 'snp']!r}\n"
                         f"tdx = {[s.node for s in specs if s.tee == 'tdx']!r}\n")
    proc = subprocess.run([str(CCFACTORY), "firmware", "plan", str(inventory), "--json"], check=False,
                          capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    lines = _log(lab)
    for spec in specs:
        mine = [line for line in lines if line[0] == spec.node]
        assert len({c for *_, c in mine}) == 1, (spec.node, mine)  # one TCP/TLS connection
        assert sum(1 for _, m, p, *_ in mine if m == "POST" and p.rstrip("/").endswith("/Sessions")) == 1
        assert sum(1 for _, m, p, *_ in mine if m == "DELETE" and "/Sessions/" in p) == 1  # logged out
        paths = [p for _, m, p, *_ in mine if m == "GET"]
        assert len(paths) == len(set(paths)), f"{spec.node} read a resource twice: {paths}"
        assert data[spec.node]["requests"] == len(mine) - 1  # the command counts all but the logout
    for spec in specs:
        assert service.credentials(lab, spec.node)[1] not in proc.stdout + proc.stderr


def _raw(spec: BmcSpec, ca: Path) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    sock = ctx.wrap_socket(socket.create_connection((spec.address, spec.port), timeout=5), server_hostname=spec.address)
    sock.settimeout(5)
    return sock


def _responses(sock: ssl.SSLSocket, count: int) -> list[int]:
    """Read ``count`` HTTP responses (Content-Length framed) from a socket; their status codes."""
    data, statuses = b"", []
    while len(statuses) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {statuses}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        statuses.append(int(lines[0].split()[1]))
        length = next((int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"), 0)
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        data = data[length:]
    return statuses


def test_the_lab_bmc_keeps_connections_and_never_eats_a_pipelined_request(bmcs):
    """A client that does not ask to close keeps its connection: a second request sent right
    behind the first (inside werkzeug's 10 ms post-response drain), and one after a POST whose
    body the BMC never read (a refused login), are both answered on the same connection."""
    lab, specs = bmcs
    spec = specs[0]
    ca = service.ca_bundle(lab)
    host = f"Host: {spec.address}:{spec.port}\r\n"
    get = f"GET /redfish/v1/ HTTP/1.1\r\n{host}\r\n".encode()
    body = b"{" + b" " * 5000 + b"}"
    bad_post = (f"POST /redfish/v1/Systems/nope/Actions/ComputerSystem.Reset HTTP/1.1\r\n{host}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with _raw(spec, ca) as sock:
        sock.sendall(get + get)  # pipelined
        assert _responses(sock, 2) == [200, 200]
        sock.sendall(bad_post)
        assert _responses(sock, 1) == [401]  # no credentials: the body was never read
        sock.sendall(get)
        assert _responses(sock, 1) == [200]
    with _raw(spec, ca) as sock:  # a client asking to close is closed (sushy's default)
        sock.sendall(f"GET /redfish/v1/ HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode())
        assert _responses(sock, 1) == [200]
        assert sock.recv(1) == b""
    conns = {c for n, *_, c in _log(lab) if n == spec.node}
    assert len(conns) == 2
