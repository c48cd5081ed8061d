"""containerd on a node as containerd itself reports it: version, service, config files and
the runtime handlers of the effective configuration (``containerd config dump``).

``containerd config dump`` is containerd's own parse of the main config and its imports,
so the handlers it lists are the ones the CRI plugin gets at its next start; the fact parses
the dump with ``tomllib``. The CRI plugin's live status is read with ``ctr plugins ls``.

Example::

    state = host.get_fact(ContainerdRuntimes, _sudo=True)
    state.version, sorted(state.handlers), state.cri_ok     # ('1.6.20', ['kata-qemu-snp', 'runc'], True)
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from ccfactory.parsers.sections import echo_marker, split_sections
from ccfactory.coco.containerd_config import DROPIN, MAIN_CONFIG, handlers_in, owned_handlers
from ccfactory.coco.spec import SHIM_LINK_DIR, parse_version


def _file(name: str, path: str) -> list[str]:
    p = shlex.quote(path)
    return [f"if [ -f {p} ]; then {echo_marker(name)}; cat {p}; echo; else {echo_marker(name + '-missing')}; fi"]


def candidate_command(package_manager: str = "apt", package: str = "containerd") -> str:
    """The distribution's candidate version of ``package``, read from the package manager's local
    index only (read-only: a fact never refreshes it, also not under --dry). No index at all
    prints the ``no-index`` marker: the role then decides (distros.toml ``containerd_archive``,
    or a problem naming ``refresh_index``); the install operation refreshes the index.
    ``package`` "" (distros.toml: the release has no such package): nothing to ask."""
    if not package:
        return "true"
    p = shlex.quote(package)
    if package_manager == "dnf":
        # -C: cache only (dnf(8) --cacheonly); without a cache dnf fails instead of downloading
        return (f"(dnf -C -q repoquery --latest-limit=1 --qf '%{{version}}' {p} 2>/dev/null "
                f"|| {echo_marker('no-index')}) || true")  # fmt: skip
    return (f"if ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then "
            f"apt-cache policy {p} 2>/dev/null | sed -n 's/^ *Candidate: *//p'; else {echo_marker('no-index')}; fi")  # fmt: skip


def probe_command(main: str = MAIN_CONFIG, dropin: str = DROPIN, package_manager: str = "apt",
                  package: str = "containerd") -> str:
    """The fact's shell command (also run by operations at execute time). Read-only."""
    parts = [
        echo_marker("version"),
        "containerd --version 2>/dev/null || true",
        echo_marker("binary"),
        "command -v containerd || true",
        echo_marker("active"),
        "systemctl is-active containerd 2>/dev/null || true",
        echo_marker("enabled"),
        "systemctl is-enabled containerd 2>/dev/null || true",
        echo_marker("candidate"),
        candidate_command(package_manager, package),
        *_file("main", main),
        *_file("dropin", dropin),
        "if command -v containerd >/dev/null 2>&1; then "
        + "; ".join(
            [
                echo_marker("dump"),
                f"containerd --config {shlex.quote(main)} config dump 2>&1",
                echo_marker("dump-exit", "$?"),
                echo_marker("default"),
                "containerd config default 2>/dev/null",
                echo_marker("cri"),
                "ctr plugins ls 2>/dev/null | awk '$2 == \"cri\" {print $NF}'",
            ]
        )
        + "; fi",
        echo_marker("links"),
        f"ls -1 {SHIM_LINK_DIR}/ 2>/dev/null | grep '^containerd-shim-kata-.*-v2$' || true",
        "true",
    ]
    return "; ".join(parts)


@dataclass(frozen=True)
class ContainerdState:
    installed: bool = False
    version: str = ""  # "1.6.20", "2.3.5"
    version_line: str = ""
    binary: str = ""
    active: bool = False
    enabled: bool = False
    candidate: str = ""  # the distribution's candidate version ("" when none)
    index_missing: bool = False  # the package manager has no local index: the candidate is unknown
    main_config: str | None = None
    dropin: str | None = None
    dump: str = ""
    dump_ok: bool = False
    dump_error: str = ""
    default_config: str = ""
    effective: dict = field(default_factory=dict)  # the parsed dump
    handlers: dict[str, dict] = field(default_factory=dict)
    cri_status: str = ""  # "ok", "error", "skip" or "" (daemon not answering)
    shim_links: tuple[str, ...] = ()

    @property
    def cri_ok(self) -> bool:
        return self.cri_status == "ok"

    @property
    def owned(self) -> list[str]:
        """Handlers ccfactory recorded as its own (drop-in header, else main-config header)."""
        return owned_handlers(self.dropin) or owned_handlers(self.main_config)

    @property
    def config_version(self) -> int:
        return int(self.effective.get("version", 1) or 1)


def _version(line: str) -> str:
    # "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
    # "containerd containerd.io 1.7.27 05044ec0..." / "containerd github.com/containerd/containerd/v2 v2.3.5 <commit>"
    fields = line.split()
    for word in fields[2:3] + fields[1:]:
        v = parse_version(word)
        if v and word.lstrip("v")[:1].isdigit():
            return ".".join(map(str, v))
    return ""


def parse_probe(lines: list[str]) -> ContainerdState:
    sections = {s.name: s for s in split_sections(lines)}

    def text(name: str) -> str:
        s = sections.get(name)
        return "\n".join(s.lines).strip() if s else ""

    def body(name: str) -> str | None:
        if name not in sections:
            return None
        raw = "\n".join(sections[name].lines)
        return raw.rstrip("\n") + "\n" if raw.strip() else ""

    line = text("version").splitlines()[0] if text("version") else ""
    dump = body("dump") or ""
    dump_ok = sections.get("dump-exit") is not None and sections["dump-exit"].arg == "0"
    effective: dict = {}
    dump_error = ""
    if dump_ok:
        try:
            effective = tomllib.loads(dump)
        except tomllib.TOMLDecodeError as exc:
            dump_ok, dump_error = False, f"config dump is not TOML: {exc}"
    elif "dump" in sections:
        dump_error = " | ".join(x.strip() for x in dump.splitlines() if x.strip())[-800:] or "containerd config dump failed"
    return ContainerdState(
        installed=bool(line),
        version=_version(line),
        version_line=line,
        binary=text("binary"),
        active=text("active") == "active",
        enabled=text("enabled") in ("enabled", "static", "alias"),
        candidate="" if text("candidate") in ("", "(none)") else text("candidate").splitlines()[0].strip(),
        index_missing="no-index" in sections,
        main_config=body("main"),
        dropin=body("dropin"),
        dump=dump,
        dump_ok=dump_ok,
        dump_error=dump_error,
        default_config=body("default") or "",
        effective=effective,
        handlers=handlers_in(effective),
        cri_status=text("cri"),
        shim_links=tuple(x for x in text("links").splitlines() if x),
    )


class ContainerdRuntimes(FactBase):
    """containerd's version, service state, config files and effective runtime handlers."""

    def command(self, package_manager: str = "apt", package: str = "containerd") -> str:
        return probe_command(package_manager=package_manager, package=package)

    def process(self, output: list[str]) -> ContainerdState:
        return parse_probe(output)

    @staticmethod
    def default() -> ContainerdState:
        return ContainerdState()
