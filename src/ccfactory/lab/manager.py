"""Bring the lab up and down: ``up()``, ``down()``, ``status()``, ``reset()``.

``up`` is idempotent: a second call with the same arguments changes nothing and returns
in seconds. ``down`` stops only what the lab started (recorded PIDs, then a sweep for
lab processes by their command line, which names the lab dir), unmounts everything below
the lab dir and removes the ``ccf``-prefixed network objects; it also works after a crash.

Example::

    from ccfactory.lab.manager import up, down
    st = up(3)                       # node1 amd-snp-hgx, node2 intel-tdx, node3 plain
    print(st["nodes"][0]["address"])  # 10.199.0.11
    down()
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ccfactory.lab import aptproxy, artifacts, features, gpustate, hostdeps, network, power, proc, proof, registry, rootfs
from ccfactory.lab.aptsources import lab_sources
from ccfactory.lab.errors import LabError
from ccfactory.lab.hwprofile import BMC_VENDORS, DEFAULT_CYCLE, load_profile
from ccfactory.lab.inventory import default_inventory_path, render_inventory, render_ssh_config, write_if_changed
from ccfactory.lab.layout import NodePaths, lab_path

log = logging.getLogger("ccfactory.lab")

BMC_PORT = 443
BMC_USERNAME = "admin"
SSH_TIMEOUT = 120.0
BMC_SERVER_MODULE = "ccfactory.lab.bmc.server"
ARTIFACT_SERVER_MODULE = "ccfactory.lab.artifacts"
SUPERVISOR_STOP_TIMEOUT = 35.0  # the supervisor's own graceful budget is 20 s


@dataclass(frozen=True)
class NodeSpec:
    """One lab node as ``up`` plans it."""

    name: str
    index: int
    profile: str
    vendor: str

    @property
    def address(self) -> str:
        return network.node_address(self.index)

    @property
    def bmc_address(self) -> str:
        return network.bmc_address(self.index)

    def endpoints(self, ipv6: bool) -> tuple[str, str]:
        """(SSH address, BMC address) the inventory names: IPv6 in a lab up with ``--ipv6``."""
        if ipv6:
            return network.node_address_v6(self.index), network.bmc_address_v6(self.index)
        return self.address, self.bmc_address


def plan_nodes(count: int, profiles: list[str] | None = None, vendors: list[str] | None = None) -> list[NodeSpec]:
    """``node1..N``; profiles and vendors cycle through the given lists.

    >>> [(n.name, n.profile, n.vendor) for n in plan_nodes(3)]
    [('node1', 'amd-snp-hgx', 'supermicro'), ('node2', 'intel-tdx', 'dell'), ('node3', 'plain', 'generic')]
    """
    if not 1 <= count <= network.MAX_NODES:
        raise LabError(f"--nodes must be between 1 and {network.MAX_NODES}")
    profiles = list(profiles or DEFAULT_CYCLE)
    for v in vendors or []:
        if v not in BMC_VENDORS:
            raise LabError(f"unknown BMC vendor {v!r}; use one of {', '.join(BMC_VENDORS)}")
    out = []
    for i in range(1, count + 1):
        prof = load_profile(profiles[(i - 1) % len(profiles)])
        vendor = vendors[(i - 1) % len(vendors)] if vendors else prof.bmc_vendor
        out.append(NodeSpec(f"node{i}", i, prof.name, vendor))
    return out


# ------------------------------------------------------------------ small helpers


@contextmanager
def _lab_lock(lab: Path):
    lab.mkdir(parents=True, exist_ok=True)
    with open(lab / "lab.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `lab` command on %s to finish", lab)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _step(msg: str, t0: float) -> None:
    log.info("%s (%.1f s)", msg, time.monotonic() - t0)


def _ensure_ssh_key(lab: Path) -> Path:
    key = lab / "keys" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ccfactory-lab", "-f", str(key)])
    return key


def _ensure_bmc_password(lab: Path) -> Path:
    path = lab / "secrets" / "bmc-password"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    path.chmod(0o600)
    return path


def _bmc_module(name: str):
    """``ccfactory.lab.bmc.<name>`` if the BMC emulator provides it, else None."""
    try:
        return __import__(f"ccfactory.lab.bmc.{name}", fromlist=[name])
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("ccfactory.lab.bmc"):
            raise
        return None


def _lab_ca(lab: Path) -> Path:
    pki = _bmc_module("pki")
    if pki and hasattr(pki, "ensure_lab_ca"):
        return Path(pki.ensure_lab_ca(lab))
    return lab / "pki" / "ca.pem"


def _supervisor_env() -> dict[str, str]:
    # the supervisor must import this very ccfactory, installed or from a checkout
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _read_spec(lab: Path) -> list[NodeSpec]:
    try:
        raw = json.loads((lab / "spec.json").read_text())
    except (OSError, ValueError):
        return []
    return [NodeSpec(**n) for n in raw.get("nodes", [])]


def _spec_meta(lab: Path) -> dict:
    try:
        return json.loads((lab / "spec.json").read_text())
    except (OSError, ValueError):
        return {}


def _plain(obj):
    """JSON-friendly copy of a dataclass/dict/list (Paths become strings)."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def _node_dirs(lab: Path) -> list[str]:
    d = lab / "nodes"
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _bmc_specs(specs: list[NodeSpec], ipv6: bool = False) -> list:
    """What the BMC service gets per node: its ``BmcSpec`` when the emulator defines one, else a
    dict with the same fields (node, index, vendor, tee, address, port)."""
    spec_mod = _bmc_module("spec")
    out = []
    for s in specs:
        tee = load_profile(s.profile).tee
        fields = {"node": s.name, "index": s.index, "vendor": s.vendor, "tee": tee, "address": s.endpoints(ipv6)[1],
                  "port": BMC_PORT}  # fmt: skip
        out.append(spec_mod.BmcSpec(**fields) if spec_mod and hasattr(spec_mod, "BmcSpec") else fields)
    return out


def _start_bmcs(lab: Path, specs: list[NodeSpec], password_file: Path, ipv6: bool = False) -> dict[str, tuple[str, Path]]:
    """Start the BMC emulator for ``specs`` if it exists; returns node -> (username, password file).

    The emulator owns each BMC's credentials (``ccfactory.lab.bmc.credentials``); the
    inventory needs a file holding only the password, so it is copied to
    ``<lab>/secrets/bmc-<node>.password`` (0600). Without the emulator the lab-wide
    ``secrets/bmc-password`` is named instead.
    """
    for s in specs:  # each BMC listens on one address: the other family's leaves the BMC bridge
        network.ensure_bmc_address(s.endpoints(ipv6)[1])
        network.remove_bmc_address(s.endpoints(not ipv6)[1])
    users = {s.name: (BMC_USERNAME, password_file) for s in specs}
    service = _bmc_module("service")
    if service is None:
        log.info("BMC emulator: ccfactory.lab.bmc.service is not available yet; nodes have no BMC endpoint")
        return users
    service.start(lab, _bmc_specs(specs, ipv6))
    creds = _bmc_module("credentials")
    if creds is None or not hasattr(creds, "read_credentials"):
        return users
    for s in specs:
        user, password = creds.read_credentials(lab, s.name)
        path = lab / "secrets" / f"bmc-{s.name}.password"
        if not path.exists() or path.read_text().strip() != password:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
        path.chmod(0o600)
        users[s.name] = (user, path)
    return users


# ------------------------------------------------------------------ nodes


def _stop_supervisor(paths: NodePaths) -> None:
    pid = proc.read_pidfile(paths.supervisor_pid)
    if pid:
        log.info("%s: stopping (supervisor pid %d)", paths.name, pid)
        proc.stop(pid, timeout=SUPERVISOR_STOP_TIMEOUT, what=f"{paths.name} supervisor")
    paths.supervisor_pid.unlink(missing_ok=True)


def _start_supervisor(lab: Path, spec: NodeSpec) -> int:
    paths = NodePaths(lab, spec.name)
    argv = [sys.executable, "-m", "ccfactory.lab.supervisor", "--lab-dir", str(lab), "--node", spec.name]
    pid = proc.spawn(argv, logfile=paths.supervisor_log, env=_supervisor_env())
    proc.write_pidfile(paths.supervisor_pid, pid)
    return pid


def _ensure_node(lab: Path, spec: NodeSpec, base_hash: str, platform_source: str) -> str:
    """Make one node run; returns what was done ("" if nothing)."""
    paths = NodePaths(lab, spec.name)
    paths.dir.mkdir(parents=True, exist_ok=True)
    network.ensure_node_network(spec.name, spec.index)
    wanted = {**asdict(spec), "base": base_hash, "platform_source": platform_source}
    try:
        current = json.loads(paths.node_json.read_text())
    except (OSError, ValueError):
        current = None
    running = proc.read_pidfile(paths.supervisor_pid)
    did = ""
    if current != wanted:
        if running:
            _stop_supervisor(paths)
            running = None
        if current and current.get("base") != base_hash:
            rootfs.unmount(paths.dir)
            for d in (paths.upper, paths.work):
                shutil.rmtree(d, ignore_errors=True)
            log.info("%s: base image changed: the node gets a fresh disk", spec.name)
        paths.node_json.write_text(json.dumps(wanted, indent=2) + "\n")
        did = "configured"
    gpustate.ensure_gpu_state(lab, spec.name, load_profile(spec.profile))
    if not running:
        _kill_stale_containers(paths)  # a crashed supervisor may have left its container running
        rootfs.unmount(paths.dir)
        power.request(paths, "on")
        pid = _start_supervisor(lab, spec)
        return f"started (supervisor pid {pid})"
    if power.status(lab, spec.name) == "Off":
        power.power(lab, spec.name, "on")
        return "powered on"
    return did


def _kill_stale_containers(paths: NodePaths) -> None:
    for pid in proc.find_processes(paths.rootfs, ("systemd-nspawn",)):
        log.info("%s: killing the container a crashed supervisor left behind (nspawn pid %d)", paths.name, pid)
        init = power.container_init(pid)
        if init:
            proc.signal_pid(init, signal.SIGKILL)
        proc.stop(pid, timeout=5, what="stale systemd-nspawn")


def _ssh_ready(address: str, ssh_config: Path) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1) as s:
            s.settimeout(2)
            if not s.recv(64).startswith(b"SSH-"):
                return False
    except OSError:
        return False
    r = subprocess.run(
        ["ssh", "-F", str(ssh_config), f"root@{address}", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20,
    )
    return r.returncode == 0


def _boot_failed(lab: Path, name: str) -> bool:
    """The node's supervisor is gone, or it reported the node off (boot failed / guest powered off)."""
    paths = NodePaths(lab, name)
    sup = proc.read_pidfile(paths.supervisor_pid)
    if not sup:
        return True
    st = power.read_state(paths)
    return st.get("supervisor_pid") == sup and st.get("power") == "off"


def wait_for_ssh(lab: Path, specs: list[NodeSpec], timeout: float = SSH_TIMEOUT) -> float:
    """Wait until every node accepts the lab key over SSH; prints progress; returns seconds waited."""
    ssh_config = lab / "ssh_config"
    t0 = time.monotonic()
    pending = {s.name: s for s in specs}
    last_report = t0
    with ThreadPoolExecutor(max_workers=min(8, len(specs) or 1)) as pool:
        while pending:
            results = dict(zip(pending, pool.map(lambda s: _ssh_ready(s.address, ssh_config), pending.values())))
            for name, ok in results.items():
                if ok:
                    del pending[name]
            if not pending:
                break
            now = time.monotonic()
            # a node whose supervisor died or whose boot failed will not come up: say so now
            dead = [n for n in pending if _boot_failed(lab, n)]
            if dead or now - t0 > timeout:
                lines = []
                for name in dead or pending:
                    paths = NodePaths(lab, name)
                    console = paths.console_log.read_text(errors="replace") if paths.console_log.exists() else ""
                    err = power.read_state(paths).get("error")
                    why = f"error: {err}" if err else "console: " + " | ".join(console.strip().splitlines()[-3:])
                    lines.append(f"{name}: power {power.status(lab, name)}; {why}")
                what = "failed to boot" if dead else f"SSH not up after {timeout:.0f} s"
                raise LabError(f"{what} on {', '.join(dead or pending)} (logs in {lab}/nodes/<node>/):\n  " + "\n  ".join(lines))
            if now - last_report >= 5:
                last_report = now
                log.info("waiting for SSH on %s (%.0f s)", ", ".join(pending), now - t0)
            time.sleep(0.2)
    return time.monotonic() - t0


# ------------------------------------------------------------------ public API


def up(
    nodes: int | None = None,
    profiles: list[str] | None = None,
    vendors: list[str] | None = None,
    *,
    lab_dir: str | os.PathLike | None = None,
    inventory: str | os.PathLike | None = None,
    wait: bool = True,
    ssh_timeout: float = SSH_TIMEOUT,
    platform_source: str | None = None,
    ipv6: bool | None = None,
) -> dict:
    """Bring the lab up (idempotent) and return ``status()``.

    ``nodes`` defaults to the last lab's size (or 3); ``profiles``/``vendors`` cycle over
    the nodes (default: the last lab's choice, else amd-snp-hgx, intel-tdx, plain with
    each profile's BMC vendor). Writes ``inventory`` (default ``inventories/lab.py``).
    ``platform_source``: where nodes read their applied BIOS state, ``auto`` (the BMC
    emulator when present), ``bmc`` or ``local`` (``nodes/<n>/platform.json``).
    ``ipv6`` (default: as before, else False): the inventory names nodes and BMCs by their IPv6
    addresses and the BMCs listen there (nodes and bridges carry IPv6 either way; the KBS URL
    and the lab's own services stay IPv4).

    Example: ``up(3, ["amd-snp-hgx"], lab_dir="/tmp/lab")``
    """
    t0 = time.monotonic()
    lab = lab_path(lab_dir)
    hostdeps.require_host()
    platform_source = (
        platform_source or os.environ.get(features.ENV_SOURCE) or _spec_meta(lab).get("platform_source") or "auto"
    )
    features.source_name(platform_source)  # validates the choice
    ipv6 = bool(_spec_meta(lab).get("ipv6", False)) if ipv6 is None else ipv6
    with _lab_lock(lab):
        previous = _read_spec(lab)
        count = nodes or len(previous) or 3
        if profiles or vendors or not previous:
            specs = plan_nodes(count, profiles, vendors)
        else:
            keep = previous[:count]
            specs = keep + plan_nodes(count)[len(keep) :]
        sources = lab_sources(rootfs.SUITE)
        key = _ensure_ssh_key(lab)
        password_file = _ensure_bmc_password(lab)
        if network.ensure_bridges():
            nets = f"{network.LAB_BRIDGE} {network.LAB_GATEWAY}/24, {network.BMC_BRIDGE} {network.BMC_GATEWAY}/24"
            _step(f"network: bridges {nets}", t0)
        aptproxy.ensure_apt_proxy(lab, sources)
        # the Trustee stand-in as an image in the lab registry (pulled by digest, as upstream's image)
        image = registry.start(lab, sources)
        write_if_changed(lab / artifacts.IMAGE_ENTRIES, json.dumps([image], indent=1) + "\n")
        # stand-in artifacts (GPU admin tool, ...) built and served "as if from upstream" on the bridge
        artifacts.start(lab)
        base, base_hash, built = rootfs.ensure_base_image(lab, sources)
        # nodes beyond the requested count go away (their disks stay until reset/wipe)
        wanted_names = {s.name for s in specs}
        for name in _node_dirs(lab):
            running = proc.read_pidfile(NodePaths(lab, name).supervisor_pid)
            if name not in wanted_names and (running or network.netns_name(name) in network.list_netns()):
                _remove_node(lab, name)
        # the BMCs first: a node reads its BIOS state from its BMC at every boot
        bmc_users = _start_bmcs(lab, specs, password_file, ipv6)
        for s in specs:
            did = _ensure_node(lab, s, base_hash, platform_source)
            if did:
                _step(f"{s.name}: {s.profile} ({s.vendor} BMC) at {s.address}: {did}", t0)
        rootfs.remove_unused_bases(lab, {base_hash})
        spec_json = {"platform_source": platform_source, "ipv6": ipv6, "nodes": [asdict(s) for s in specs]}
        write_if_changed(lab / "spec.json", json.dumps(spec_json, indent=2) + "\n")
        ssh_config = lab / "ssh_config"
        write_if_changed(ssh_config, render_ssh_config([(s.name, s.endpoints(ipv6)[0]) for s in specs], key))
        inv_path = Path(inventory) if inventory else default_inventory_path()
        write_if_changed(inv_path.with_name(inv_path.stem + "_ssh_config"), ssh_config.read_text())
        ca = _lab_ca(lab)
        hosts = []
        plain_seen = False
        kbs_spec = next((s for s in specs if load_profile(s.profile).tee == "none"), None)
        kbs_pki = lab / "kbs" / "pki"  # made by the kbs stage on the controller (here: this machine)
        for s in specs:
            prof = load_profile(s.profile)
            groups = []
            if prof.tee != "none":
                groups += ["workers", prof.tee]
            elif not plain_seen:
                groups.append("kbs")
                plain_seen = True
            if prof.gpu_count:
                groups.append("gpu")
            data = {
                "ssh_user": "root",
                "ssh_key": str(key),
                "ssh_known_hosts_file": "/dev/null",
                "ssh_strict_host_key_checking": "no",
                "lab": True,
                "lab_dir": str(lab),
                "tee": prof.tee,
                "gpu_count": prof.gpu_count,
                "gpu_model": prof.gpu_model,
                "gpu_cc_mode": "on" if prof.gpu_count else "off",
                "bmc_vendor": s.vendor,
                "bmc_address": s.endpoints(ipv6)[1],
                "bmc_port": BMC_PORT,
                "bmc_username": bmc_users[s.name][0],
                "bmc_password_file": str(bmc_users[s.name][1]),
                "bmc_ca_bundle": str(ca),
                "bmc_verify_tls": True,
            }
            if kbs_spec is not None:
                data["kbs_url"] = f"https://{kbs_spec.address}:{LAB_KBS_PORT}"
                if "kbs" in groups:  # the kbs stage makes its own site CA there
                    data["kbs_pki_dir"] = str(kbs_pki)
                    data["kbs_resources"] = {LAB_MODEL_KEY: str(_ensure_lab_model_key(lab))}
                elif "workers" in groups:  # guests trust the site CA and fetch the lab model key
                    data["kbs_ca_cert"] = str(kbs_pki / "ca.crt")
                    data["coco_resource_uris"] = [f"kbs:///{LAB_MODEL_KEY}"]
            hosts.append((s.endpoints(ipv6)[0], data, groups))
        if write_if_changed(inv_path, render_inventory(hosts, lab)):
            _step(f"inventory: wrote {inv_path}", t0)
        lab_json = {
            "lab_dir": str(lab),
            "inventory": str(inv_path),
            "ssh_config": str(ssh_config),
            "ipv6": ipv6,
            # the lab gate (ccfactory.lab.proof) checks pki/ca.pem against it
            proof.CA_FINGERPRINT_KEY: proof.ca_fingerprint(ca.read_bytes()) if ca.is_file() else None,
            "nodes": {
                s.name: {
                    "index": s.index,
                    "address": s.address,
                    "profile": s.profile,
                    "tee": load_profile(s.profile).tee,
                    "bmc_vendor": s.vendor,
                    "bmc_address": s.bmc_address,
                    "address6": s.endpoints(True)[0],
                    "bmc_address6": s.endpoints(True)[1],
                }
                for s in specs
            },
        }
        write_if_changed(lab / "lab.json", json.dumps(lab_json, indent=2) + "\n")
    if wait:
        waited = wait_for_ssh(lab, specs, ssh_timeout)
        _step(f"SSH: {len(specs)} node(s) reachable (waited {waited:.1f} s)", t0)
    log.info("lab up: %d node(s) in %.1f s%s", len(specs), time.monotonic() - t0, " (base image built)" if built else "")
    return status(lab_dir=lab)


def _remove_node(lab: Path, name: str) -> None:
    paths = NodePaths(lab, name)
    _stop_supervisor(paths)
    rootfs.unmount(paths.dir)
    network.remove_node_network(name)
    try:
        idx = json.loads(paths.node_json.read_text())["index"]
        network.remove_bmc_address(network.bmc_address(idx))
        network.remove_bmc_address(network.bmc_address_v6(idx))
    except (OSError, ValueError, KeyError):
        pass
    log.info("%s: removed from the running lab (its disk stays until `lab reset` or `lab down --wipe`)", name)


LAB_KBS_PORT = 8443
LAB_MODEL_KEY = "models/lab-model/key"  # a random "model decryption key" the KBS releases after attestation


def _ensure_lab_model_key(lab: Path) -> Path:
    """A random 32-byte key (0600) standing for a model decryption key; made once per lab."""
    path = lab / "secrets" / "lab-model.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    return path


def _sweep_processes(lab: Path) -> list[int]:
    """Kill lab processes that pid files no longer know (after a crash); returns their PIDs."""
    found = proc.find_processes(lab, ("ccfactory.lab.supervisor",))
    for pid in found:  # supervisors first, so they do not restart containers
        proc.stop(pid, timeout=SUPERVISOR_STOP_TIMEOUT, what="stale supervisor")
    nspawns = proc.find_processes(lab, ("systemd-nspawn",))
    for pid in nspawns:
        init = power.container_init(pid)
        proc.signal_pid(init, signal.SIGKILL) if init else None
        proc.stop(pid, timeout=5, what="stale systemd-nspawn")
    acng = proc.find_processes(lab, ("apt-cacher-ng", "docker-registry"))
    for pid in acng:
        proc.stop(pid, timeout=5, what="stale apt-cacher-ng or registry")
    bmcs = proc.find_processes(lab, (BMC_SERVER_MODULE, ARTIFACT_SERVER_MODULE))  # if their own stop missed one
    for pid in bmcs:
        proc.stop(pid, timeout=5, what="stale lab server")
    return found + nspawns + acng + bmcs


def leftovers(lab_dir: str | os.PathLike | None = None) -> list[str]:
    """Anything of the lab still present: processes, mounts, network objects ([] after ``down``)."""
    lab = lab_path(lab_dir)
    programs = ("ccfactory.lab.supervisor", "systemd-nspawn", "apt-cacher-ng", "docker-registry", BMC_SERVER_MODULE,
                ARTIFACT_SERVER_MODULE)  # fmt: skip
    out = [f"process {pid}: {' '.join(proc.cmdline(pid))[:80]}" for pid in proc.find_processes(lab, programs)]
    out += [f"mount {m}" for m in rootfs.mounts_below(lab)]
    out += network.leftovers()
    return out


def down(*, lab_dir: str | os.PathLike | None = None, wipe: bool = False) -> None:
    """Stop everything the lab started; with ``wipe`` also delete the lab directory.

    Works after a crash (stale pid files, leftover mounts, netns). Raises ``LabError``
    listing what could not be removed.
    Example: ``down(wipe=True)``
    """
    t0 = time.monotonic()
    lab = lab_path(lab_dir)
    if os.geteuid() != 0:
        raise LabError("the lab needs root to stop its containers and network: run as root")
    if lab.is_dir():
        with _lab_lock(lab):
            (lab / "lab.json").unlink(missing_ok=True)
            service = _bmc_module("service")
            if service is not None:
                service.stop(lab)
            names = _node_dirs(lab)
            with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
                list(pool.map(lambda n: _stop_supervisor(NodePaths(lab, n)), names))
            aptproxy.stop_apt_proxy(lab)
            artifacts.stop(lab)
            registry.stop(lab)
            stale = _sweep_processes(lab)
            if stale:
                log.info("stopped %d stale lab process(es) left by a crash", len(stale))
            rootfs.unmount(lab)
            for n in names:
                st = NodePaths(lab, n).power_state
                if st.exists():
                    data = power.read_json(st, {})
                    data.update(power="off", nspawn_pid=None)
                    power.write_json(st, data)
    removed = network.teardown()
    if removed:
        log.info("network: removed %s", ", ".join(removed))
    left = leftovers(lab)
    if left:
        raise LabError("lab down left these behind:\n  " + "\n  ".join(left))
    if wipe and lab.exists():
        shutil.rmtree(lab)
        log.info("wiped %s", lab)
    log.info("lab down in %.1f s", time.monotonic() - t0)


def status(*, lab_dir: str | os.PathLike | None = None) -> dict:
    """The lab's state: proxy, nodes (power, boots, SSH port), BMC service.

    Example: ``[(n["name"], n["power"]) for n in status()["nodes"]]``
    """
    lab = lab_path(lab_dir)
    specs = {s.name: s for s in _read_spec(lab)}
    nodes = []
    for name in _node_dirs(lab):
        paths = NodePaths(lab, name)
        s = specs.get(name)
        st = power.read_state(paths)
        address = s.address if s else None
        ssh = False
        if address and power.status(lab, name) == "On":
            try:
                with socket.create_connection((address, 22), timeout=0.5):
                    ssh = True
            except OSError:
                pass
        nodes.append(
            {
                "name": name,
                "index": s.index if s else None,
                "profile": s.profile if s else None,
                "tee": load_profile(s.profile).tee if s else None,
                "bmc_vendor": s.vendor if s else None,
                "address": address,
                "address6": s.endpoints(True)[0] if s else None,
                "bmc_address": s.bmc_address if s else None,
                "in_lab": s is not None,
                "power": power.status(lab, name),
                "boots": st.get("boot", 0),
                "supervisor_pid": proc.read_pidfile(paths.supervisor_pid),
                "ssh": ssh,
                "error": st.get("error"),
            }
        )
    acng_pid = proc.read_pidfile(aptproxy.pidfile(lab))
    service = _bmc_module("service")
    bmc = None
    if service is not None and hasattr(service, "status"):
        try:
            bmc = [_plain(b) for b in service.status(lab)]
        except Exception as exc:  # noqa: BLE001 - status must never fail because of the BMC emulator
            bmc = {"error": str(exc)}
    return {
        "lab_dir": str(lab),
        "up": (lab / "lab.json").exists(),
        "apt_proxy": {"pid": acng_pid, "url": aptproxy.PROXY_URL, "running": bool(acng_pid)},
        "platform_source": features.source_name(_spec_meta(lab).get("platform_source")),
        "bmc": bmc if service is not None else "not available (ccfactory.lab.bmc.service missing)",
        "nodes": nodes,
    }


def reset(*, lab_dir: str | os.PathLike | None = None, inventory: str | os.PathLike | None = None) -> dict:
    """Give every node a fresh disk, factory GPU and BIOS state; same node list. Keeps the
    base image and the apt cache. Returns ``status()`` after bringing the lab back up.

    Example: ``reset()``
    """
    lab = lab_path(lab_dir)
    hostdeps.require_host()
    specs = _read_spec(lab)
    if not specs:
        raise LabError(f"no lab in {lab} to reset: run `ccfactory lab up`")
    with _lab_lock(lab):
        service = _bmc_module("service")
        if service is not None:
            service.stop(lab)
        for name in _node_dirs(lab):
            paths = NodePaths(lab, name)
            _stop_supervisor(paths)
            _kill_stale_containers(paths)
        for name in _node_dirs(lab):
            paths = NodePaths(lab, name)
            rootfs.unmount(paths.dir)
            if rootfs.mounts_below(paths.dir):
                raise LabError(f"{paths.dir} still has mounts; not deleting it")
            shutil.rmtree(paths.dir)
            state = _bmc_module("state")
            if state is not None and hasattr(state, "reset"):
                state.reset(lab, name)  # the BMC's BIOS settings back to factory defaults
            log.info("%s: reset (fresh disk, factory BIOS and GPU state)", name)
    return up(len(specs), [s.profile for s in specs], [s.vendor for s in specs], lab_dir=lab, inventory=inventory)
