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
import logging
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from ccfactory.lab.bmc.emulator import install, wsgi_for
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

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass  # the lab middleware logs one line per request (node, path, status)

    install()
    servers = []
    for node in nodes:
        spec = read_spec(lab_dir, node)
        runtime = BmcRuntime(lab_dir, spec, power_fn=power_fn)
        tls = node_dir(lab_dir, node) / "tls"
        try:
            server = make_server(spec.address, spec.port, wsgi_for(runtime), threaded=True,
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
    for t in threads:
        t.start()
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
