"""Emulator process: serves one or many BMCs, each on its own address, port and certificate.

Started by ``ccfactory.lab.bmc.service.start`` (never by hand in normal use)::

    python -m ccfactory.lab.bmc.server --lab-dir /var/lib/ccfactory-lab --nodes node1,node2

Every BMC gets its own HTTPS listener (werkzeug threaded server, TLS with its own
lab-CA-signed certificate) and shares the process's patched sushy-tools app; the
listener tags requests with the BMC's runtime. One process per BMC gives isolation;
many BMCs per process keep 50-100 BMCs cheap on a 2-core machine (BMC-only mode).

``CCFACTORY_BMC_POWER_HOOK=/path/file.py:func`` replaces ``ccfactory.lab.power.power``
(tests and benchmarks use it to observe or fake node power actions).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from ccfactory.lab.bmc.emulator import CONNECTION_KEY, install, wsgi_for
from ccfactory.lab.bmc.runtime import BmcRuntime, PowerFn
from ccfactory.lab.bmc.spec import node_dir, read_spec

POWER_HOOK_ENV = "CCFACTORY_BMC_POWER_HOOK"
log = logging.getLogger("ccfactory.lab.bmc")


def load_power_hook(value: str | None) -> PowerFn | None:
    """``/abs/file.py:function`` -> that function (None if unset).

    Example: ``load_power_hook("/tmp/fake_power.py:power")``
    """
    if not value:
        return None
    path, _, name = value.rpartition(":")
    spec = importlib.util.spec_from_file_location("ccfactory_bmc_power_hook", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load power hook {value!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


KEEP_ALIVE_IDLE = 30.0  # seconds an idle persistent connection stays open
MAX_DRAIN = 1 << 20  # unread request body bytes drained to keep a connection; more closes it


READER_KEY = "ccfactory.request_reader"


class _RequestReader:
    """The handler's ``rfile``. werkzeug reads whatever arrives in the 10 ms after each response
    and discards it (its server closes every connection, so that can only be an unread body);
    on a persistent connection that would be the client's next request. Once the response is
    written, ``read`` returns nothing; request lines and headers (``readline``) pass."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.responded = False

    def readline(self, *args: Any) -> bytes:
        return self.raw.readline(*args)

    def read(self, *args: Any) -> bytes:
        return b"" if self.responded else self.raw.read(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _Responded:
    """The app's response iterable; marks the response written once it is exhausted."""

    def __init__(self, result: Any, reader: _RequestReader | None) -> None:
        self._result, self._reader = result, reader

    def __iter__(self) -> Any:
        try:
            yield from self._result
        finally:
            self._done()

    def _done(self) -> None:
        if self._reader is not None:
            self._reader.responded = True

    def close(self) -> None:
        self._done()
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


def persistent(app: Any) -> Any:
    """Wrap a WSGI app for ``QuietHandler``'s persistent connections (see ``_RequestReader``)."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        return _Responded(app(environ, start_response), environ.get(READER_KEY))

    return wrapped


class _CountingInput:
    """The request body stream; counts what the app read so the rest can be drained."""

    def __init__(self, stream: Any, length: str | None) -> None:
        self._stream = stream
        try:
            self.length = max(0, int(length or 0))
        except ValueError:
            self.length = 0
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        left = self.length - self.consumed
        data = self._stream.read(left if size is None or size < 0 else min(size, left)) if left > 0 else b""
        self.consumed += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        left = self.length - self.consumed
        data = self._stream.readline(left if size is None or size < 0 else min(size, left)) if left > 0 else b""
        self.consumed += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def drain(self) -> bool:
        """Read what the app left; False if too much is left (the connection must close)."""
        left = self.length - self.consumed
        if left > MAX_DRAIN:
            return False
        while left > 0:
            chunk = self.read(min(left, 65536))
            if not chunk:
                return False
            left -= len(chunk)
        return True


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def serve(lab_dir: Path, nodes: list[str], power_fn: PowerFn | None = None, ready_file: Path | None = None) -> int:
    """Serve the BMCs of ``nodes`` until SIGTERM/SIGINT; returns the exit code.

    ``ready_file`` is written (with our PID) once every listener is bound, so the
    service knows the BMCs are really ours and up, not just that a port answers.
    """
    from werkzeug.serving import WSGIRequestHandler, make_server

    connections = itertools.count(1)  # numbers the TCP (TLS) connections of this process

    class QuietHandler(WSGIRequestHandler):
        """HTTP/1.1 with persistent connections, as BMCs serve them (werkzeug's handler closes
        every connection after one response): a client that does not ask for ``Connection:
        close`` keeps its connection (one TLS handshake for a session's reads), idle ones are
        closed after ``KEEP_ALIVE_IDLE`` s. A request body the app left unread is drained first,
        so the next request starts at its request line; a chunked one ends the connection."""

        timeout = KEEP_ALIVE_IDLE
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
        _body: _CountingInput | None = None

        def setup(self) -> None:
            super().setup()
            self.connection_number = next(connections)
            self.rfile = _RequestReader(self.rfile)

        def make_environ(self) -> dict[str, Any]:
            self.rfile.responded = False
            environ = super().make_environ()
            environ[CONNECTION_KEY] = self.connection_number  # the request log line names it
            environ[READER_KEY] = self.rfile
            if environ.get("wsgi.input_terminated"):  # chunked: no length to drain to
                self._body = None
                self.close_connection = True
            else:
                self._body = _CountingInput(self.rfile.raw, environ.get("CONTENT_LENGTH"))
                environ["wsgi.input"] = self._body
            return environ

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "connection" and value.lower() == "close" and not self.close_connection:
                return  # werkzeug's unconditional close; the client's own choice stands
            super().send_header(keyword, value)

        def run_wsgi(self) -> None:
            self._body = None
            super().run_wsgi()
            body = self._body
            if body is not None and not self.close_connection and not body.drain():
                self.close_connection = True

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass  # the lab middleware logs one line per request (node, path, status)

    install()
    servers = []
    for node in nodes:
        spec = read_spec(lab_dir, node)
        runtime = BmcRuntime(lab_dir, spec, power_fn=power_fn)
        tls = node_dir(lab_dir, node) / "tls"
        try:
            server = make_server(spec.address, spec.port, persistent(wsgi_for(runtime)), threaded=True,
                                 request_handler=QuietHandler,
                                 ssl_context=ssl_context(tls / "cert.pem", tls / "key.pem"))
        except (OSError, SystemExit) as exc:  # werkzeug exits itself when the port is taken
            reason = getattr(exc, "strerror", None) or "address or port unavailable"
            log.error("%s: cannot listen on %s:%s: %s (is the address on the BMC bridge, the port free?)",
                      node, spec.address, spec.port, reason)
            for s in servers:
                s.server_close()
            return 2
        servers.append(server)
        log.info("%s: %s/%s BMC on %s (power: %s)", node, spec.vendor, spec.tee, spec.url, spec.power)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True,
                                name=f"bmc-{n}") for s, n in zip(servers, nodes)]
    # the serving threads block SIGTERM/SIGINT, so the kernel gives them to the main thread, whose
    # wait they end (Python runs handlers in the main thread only; a signal taken by another thread
    # does not wake it)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        for t in threads:
            t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    log.info("serving %d BMC(s), pid %d", len(servers), os.getpid())
    if ready_file is not None:
        ready_file.write_text(f"{os.getpid()}\n")
    stop.wait()
    log.info("stopping")
    # shutdown() waits up to one poll interval per server: stop them all at once.
    stoppers = [threading.Thread(target=s.shutdown) for s in servers]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    for s in servers:
        s.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccfactory.lab.bmc.server")
    parser.add_argument("--lab-dir", required=True, type=Path)
    parser.add_argument("--nodes", required=True, help="comma-separated node names")
    parser.add_argument("--ready-file", type=Path, help="written with our PID once all BMCs listen")
    parser.add_argument("--log-level", default=os.environ.get("CCFACTORY_BMC_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    nodes = [n for n in args.nodes.split(",") if n]
    return serve(args.lab_dir.resolve(), nodes, load_power_hook(os.environ.get(POWER_HOOK_ENV)), args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
