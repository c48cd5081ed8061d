"""The Kata install on a node: version (``kata-runtime --version``), what ccfactory installed,
upstream configuration files, ccfactory's per-shim copies and drop-ins, running sandboxes.

The probe is a small python3 program (python3 is on every node pyinfra manages; 3.11+ has
``tomllib``) that prints one JSON object. Running sandboxes are Kata's sandbox directories
``/run/vc/sbs/<id>`` (virtcontainers' ``sbs`` store) plus running
``containerd-shim-kata-v2`` processes.

Example::

    kata = host.get_fact(KataInstall, _sudo=True)
    kata.version, kata.installed_sha256, kata.sandboxes   # ('4.1.0', '3dc6...', [])
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from ccfactory.coco import spec

INSTALL_MARKER = f"{spec.KATA_PREFIX}/.ccfactory-install.json"
SANDBOX_DIR = "/run/vc/sbs"

_PROBE = r'''
import glob, hashlib, json, os, re, subprocess, sys, tomllib
prefix, marker, sbs = sys.argv[1], sys.argv[2], sys.argv[3]
out = {"present": os.path.isfile(prefix + "/bin/containerd-shim-kata-v2"), "version_output": "", "marker": None,
       "upstream": {}, "copies": {}, "dropins": {}, "sandboxes": [], "shim_processes": 0}
def sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""
try:
    with open(marker) as f:
        out["marker"] = json.load(f)
except (OSError, ValueError):
    pass
kr = prefix + "/bin/kata-runtime"
if os.access(kr, os.X_OK):
    try:
        r = subprocess.run([kr, "--version"], capture_output=True, text=True, timeout=30)
        out["version_output"] = (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["version_output"] = "error: %s" % exc
defaults = prefix + "/share/defaults/kata-containers"
for path in sorted(glob.glob(defaults + "/configuration-*.toml")):
    shim = os.path.basename(path)[len("configuration-"):-len(".toml")]
    entry = {"sha256": sha(path), "kernel_params": None}
    try:
        with open(path, "rb") as f:
            entry["kernel_params"] = tomllib.load(f).get("hypervisor", {}).get("qemu", {}).get("kernel_params")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        entry["error"] = str(exc)
    out["upstream"][shim] = entry
for path in sorted(glob.glob(defaults + "/runtimes/*/configuration-*.toml")):
    out["copies"][os.path.basename(os.path.dirname(path))] = sha(path)
for path in sorted(glob.glob(defaults + "/runtimes/*/config.d/*")):
    shim = os.path.basename(os.path.dirname(os.path.dirname(path)))
    with open(path, errors="replace") as f:
        out["dropins"].setdefault(shim, {})[os.path.basename(path)] = f.read()
if os.path.isdir(sbs):
    out["sandboxes"] = sorted(os.listdir(sbs))
for p in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        with open(p, "rb") as f:
            argv0 = f.read().split(b"\0")[0]
    except OSError:
        continue
    if argv0.endswith(b"containerd-shim-kata-v2"):
        out["shim_processes"] += 1
print("ccfactory-kata " + json.dumps(out, sort_keys=True))
'''


def probe_command(prefix: str = spec.KATA_PREFIX) -> str:
    return " ".join(
        ["python3", "-c", shlex.quote(_PROBE), shlex.quote(prefix), shlex.quote(INSTALL_MARKER), shlex.quote(SANDBOX_DIR)]
    )


def parse_version_output(text: str) -> str:
    """``kata-runtime  : 4.1.0`` (first line of ``kata-runtime --version``) -> ``4.1.0``."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "kata-runtime":
            return value.strip()
    return ""


@dataclass(frozen=True)
class KataState:
    present: bool = False
    version: str = ""
    version_output: str = ""
    installed_sha256: str = ""  # the tarball ccfactory installed (marker), "" if none
    installed_version: str = ""
    upstream: dict = field(default_factory=dict)  # shim -> {"sha256", "kernel_params"}
    copies: dict = field(default_factory=dict)  # shim -> sha256 of its per-shim copy
    dropins: dict = field(default_factory=dict)  # shim -> {file name: content}
    sandboxes: tuple[str, ...] = ()
    shim_processes: int = 0
    error: str = ""

    @property
    def running(self) -> list[str]:
        """What counts as workloads on this Kata: sandbox ids, and shim processes."""
        out = [f"sandbox {s}" for s in self.sandboxes]
        if self.shim_processes:
            out.append(f"{self.shim_processes} containerd-shim-kata-v2 process(es)")
        return out


def parse_probe(lines: list[str]) -> KataState:
    for line in lines:
        if line.startswith("ccfactory-kata "):
            data = json.loads(line.removeprefix("ccfactory-kata "))
            marker = data.get("marker") or {}
            return KataState(
                present=data["present"],
                version=parse_version_output(data.get("version_output", "")),
                version_output=data.get("version_output", ""),
                installed_sha256=marker.get("sha256", ""),
                installed_version=marker.get("version", ""),
                upstream=data.get("upstream", {}),
                copies=data.get("copies", {}),
                dropins=data.get("dropins", {}),
                sandboxes=tuple(data.get("sandboxes", [])),
                shim_processes=int(data.get("shim_processes", 0)),
            )
    return KataState(error=" | ".join(lines[-3:]) or "no output from the Kata probe")


class KataInstall(FactBase):
    """Kata under ``/opt/kata``: version, ccfactory's install marker, configs, drop-ins, sandboxes."""

    def command(self) -> str:
        return probe_command()

    def process(self, output: list[str]) -> KataState:
        return parse_probe(output)

    @staticmethod
    def default() -> KataState:
        return KataState()
