"""apt for the nodes: a private apt-cacher-ng on the lab bridge (10.199.0.1:3142).

The config is the lab's own (``<lab>/acng/conf``), never ``/etc/apt-cacher-ng``: the
stock config remaps Debian URLs to a fixed backend mirror list, which may not resolve
here (the proxy then answers 503 and apt in the node hangs). Without ``Remap-*`` lines
the proxy fetches from the host named in each URL, i.e. the host's own mirrors.
HTTPS (CONNECT) is passed through only to the hosts of the host's apt sources.

It runs as a plain background process (no init system on the host), as the
``apt-cacher-ng`` user when that exists, PID recorded in ``<lab>/run/acng.pid``.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import time
from pathlib import Path

from ccfactory.lab import proc
from ccfactory.lab.aptsources import AptSource
from ccfactory.lab.errors import LabError
from ccfactory.lab.hostdeps import which
from ccfactory.lab.network import LAB_GATEWAY

log = logging.getLogger("ccfactory.lab")

PROXY_PORT = 3142
PROXY_URL = f"http://{LAB_GATEWAY}:{PROXY_PORT}/"
ACNG_USER = "apt-cacher-ng"


def host_apt_proxy() -> str | None:
    """The host's own apt HTTP proxy (``Acquire::http::Proxy``), so the cache can chain to it."""
    exe = which("apt-config")
    if not exe:
        return None
    out = proc.run([exe, "dump", "Acquire::http::Proxy"], check=False).stdout
    m = re.search(r'^Acquire::http::Proxy\s+"([^"]+)";', out, re.M)
    return m.group(1) if m and m.group(1).upper() != "DIRECT" else None


def render_config(acng_dir: Path, sources: list[AptSource], upstream_proxy: str | None = None) -> str:
    """The private ``acng.conf`` (pure).

    >>> from ccfactory.lab.aptsources import AptSource
    >>> "Remap" in render_config(Path("/l/acng"), [AptSource("deb", "http://m.example/debian", "bookworm", ("main",))])
    False
    """
    hosts = sorted({s.host for s in sources if s.host})
    passthrough = "^(" + "|".join(re.escape(h) for h in hosts) + "):443$" if hosts else "^$"
    lines = [
        "# Written by ccfactory lab: private apt-cacher-ng config without backend remapping, see aptproxy.py.",
        f"CacheDir: {acng_dir / 'cache'}",
        f"LogDir: {acng_dir / 'log'}",
        "SupportDir: /usr/lib/apt-cacher-ng",
        f"Port: {PROXY_PORT}",
        f"BindAddress: {LAB_GATEWAY}",
        "ExThreshold: 4",
        f"PassThroughPattern: {passthrough}",
        "ForeGround: 1",
        f"PidFile: {acng_dir / 'acng.pid'}",
        f"SocketPath: {acng_dir / 'socket'}",
        "ReportPage: acng-report.html",
    ]
    if upstream_proxy:
        lines.append(f"Proxy: {upstream_proxy}")
    return "\n".join(lines) + "\n"


def pidfile(lab: Path) -> Path:
    return lab / "run" / "acng.pid"


def ensure_apt_proxy(lab: Path, sources: list[AptSource]) -> int:
    """Start the lab's apt-cacher-ng unless it already runs with the same config; returns its PID.

    Needs the lab bridge (its address is the bind address).
    Example: ``ensure_apt_proxy(Path("/var/lib/ccfactory/lab"), lab_sources())``
    """
    acng_dir = lab / "acng"
    conf_dir = acng_dir / "conf"
    for d in (conf_dir, acng_dir / "cache", acng_dir / "log"):
        d.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "acng.conf"
    text = render_config(acng_dir, sources, host_apt_proxy())
    changed = not conf.exists() or conf.read_text() != text
    if changed:
        conf.write_text(text)
        conf.chmod(0o600)  # may carry the host's upstream proxy credentials
    pid = proc.read_pidfile(pidfile(lab))
    if pid and not changed and proc.listening(LAB_GATEWAY, PROXY_PORT, timeout=0.3):
        return pid
    if pid:
        proc.stop(pid, what="apt-cacher-ng")
    for stale in proc.find_processes(acng_dir, ("apt-cacher-ng",)):  # pid file lost in a crash
        proc.stop(stale, what="stale apt-cacher-ng")
    exe = which("apt-cacher-ng")
    if not exe:
        raise LabError("missing apt-cacher-ng: apt-get install apt-cacher-ng")
    if proc.listening(LAB_GATEWAY, PROXY_PORT, timeout=0.3):
        raise LabError(f"something else already listens on {LAB_GATEWAY}:{PROXY_PORT}; stop it first")
    argv = [exe, "-c", str(conf_dir)]
    try:
        pw = pwd.getpwnam(ACNG_USER)
        for d in (acng_dir, conf_dir, acng_dir / "cache", acng_dir / "log"):
            shutil.chown(d, pw.pw_uid, pw.pw_gid)
        shutil.chown(conf, pw.pw_uid, pw.pw_gid)
        for p in (acng_dir / "cache").rglob("*"):  # a cache left by an older root-run instance
            try:
                if p.lstat().st_uid != pw.pw_uid:
                    os.lchown(p, pw.pw_uid, pw.pw_gid)
            except FileNotFoundError:  # dangling entries in its own bookkeeping
                continue
        argv = [which("setpriv") or "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *argv]
    except KeyError:
        log.info("user %s does not exist: running apt-cacher-ng as root", ACNG_USER)
    pid = proc.spawn(argv, logfile=lab / "logs" / "acng.log")
    proc.write_pidfile(pidfile(lab), pid)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.listening(LAB_GATEWAY, PROXY_PORT, timeout=0.3):
            log.info("apt proxy: apt-cacher-ng pid %d listening on %s", pid, PROXY_URL)
            return pid
        if not proc.alive(pid):
            break
        time.sleep(0.1)
    tail = (lab / "logs" / "acng.log").read_text(errors="replace").strip().splitlines()[-5:]
    raise LabError(f"apt-cacher-ng did not start listening on {LAB_GATEWAY}:{PROXY_PORT}: {' | '.join(tail)}")


def stop_apt_proxy(lab: Path) -> None:
    """Stop the lab's apt-cacher-ng (by recorded PID)."""
    proc.stop(proc.read_pidfile(pidfile(lab)), what="apt-cacher-ng")
    pidfile(lab).unlink(missing_ok=True)


def node_apt_config() -> dict[str, str]:
    """apt.conf.d snippets for the node image: the proxy, and no kept .debs (upper layers stay small)."""
    return {
        "etc/apt/apt.conf.d/00ccfactory-lab-proxy": (
            "// ccfactory lab: nodes reach the package registry only through the host's apt proxy.\n"
            f'Acquire::http::Proxy "{PROXY_URL}";\n'
            f'Acquire::https::Proxy "{PROXY_URL}";\n'
        ),
        "etc/apt/apt.conf.d/01ccfactory-lab-no-keep-debs": (
            "// ccfactory lab: do not keep downloaded .debs in each node's overlay layer.\n"
            'APT::Keep-Downloaded-Packages "false";\n'
            'Binary::apt::APT::Keep-Downloaded-Packages "false";\n'
        ),
    }
