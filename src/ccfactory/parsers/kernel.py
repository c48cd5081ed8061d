"""Kernel state as text: ``/proc/cmdline``, ``/proc/modules``, modprobe.d files, sysfs
module parameters and kernel release strings.

Example::

    >>> cl = parse_cmdline('BOOT_IMAGE=/vmlinuz ro iommu=pt "dyndbg=file x.c +p" kvm-amd.sev_snp=1 -- single')
    >>> cl.value("iommu"), cl.module_param("kvm_amd", "sev_snp"), cl.has("single")
    ('pt', '1', False)
    >>> kernel_version("6.8.0-45-generic")
    (6, 8, 0)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

# ---------------------------------------------------------------- /proc/cmdline


def _norm_param(key: str) -> str:
    # The kernel treats '-' and '_' in parameter names as equal (kernel/params.c parameq).
    return key.replace("-", "_")


def _split_cmdline(text: str) -> list[str]:
    """Split like the kernel's next_arg(): whitespace separates, double quotes group and are removed."""
    tokens: list[str] = []
    buf: list[str] = []
    quoted = False
    started = False
    for ch in text.strip():
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                tokens.append("".join(buf))
            buf, started = [], False
        else:
            buf.append(ch)
            started = True
    if started:
        tokens.append("".join(buf))
    return tokens


@dataclass(frozen=True)
class KernelCmdline:
    """The kernel command line as tokens. Arguments after ``--`` go to init and are kept apart."""

    tokens: tuple[str, ...] = ()
    init_args: tuple[str, ...] = ()

    @property
    def params(self) -> tuple[tuple[str, str | None], ...]:
        """``(key, value)`` per token; value None for a bare flag like ``ro``."""
        out = []
        for tok in self.tokens:
            key, sep, value = tok.partition("=")
            out.append((key, value if sep else None))
        return tuple(out)

    def values(self, key: str) -> tuple[str | None, ...]:
        wanted = _norm_param(key)
        return tuple(v for k, v in self.params if _norm_param(k) == wanted)

    def has(self, key: str) -> bool:
        return bool(self.values(key))

    def value(self, key: str) -> str | None:
        """Last value given for ``key`` (the kernel lets the last one win), or None."""
        vals = self.values(key)
        return vals[-1] if vals else None

    def module_param(self, module: str, param: str) -> str | None:
        """``module.param=value`` as the kernel hands it to a module (``kvm-amd`` = ``kvm_amd``)."""
        return self.value(f"{module}.{param}")

    def has_token(self, token: str) -> bool:
        """Exact token present, e.g. ``iommu=pt`` (with ``-``/``_`` equivalence in the key)."""
        key, sep, value = token.partition("=")
        return any(_norm_param(k) == _norm_param(key) and (v == value if sep else v is None) for k, v in self.params)

    @property
    def modprobe_blacklist(self) -> frozenset[str]:
        """Modules named in every ``modprobe.blacklist=a,b`` token."""
        names: set[str] = set()
        for v in self.values("modprobe.blacklist"):
            names.update(_norm_param(n) for n in (v or "").split(",") if n)
        return frozenset(names)


def parse_cmdline(text: str) -> KernelCmdline:
    tokens = _split_cmdline(text.replace("\n", " "))
    if "--" in tokens:
        i = tokens.index("--")
        return KernelCmdline(tuple(tokens[:i]), tuple(tokens[i + 1 :]))
    return KernelCmdline(tuple(tokens))


# ---------------------------------------------------------------- /proc/modules


@dataclass(frozen=True)
class LoadedModule:
    name: str
    size: int
    refcount: int
    used_by: tuple[str, ...]
    state: str  # Live, Loading, Unloading


def parse_proc_modules(lines: Iterable[str]) -> tuple[LoadedModule, ...]:
    """``/proc/modules``: ``name size refcount deps state address [taint]`` per line."""
    out = []
    for line in lines:
        f = line.split()
        if len(f) < 5 or not f[1].isdigit():
            continue
        deps = tuple(d for d in f[3].split(",") if d and d != "-")
        out.append(LoadedModule(f[0], int(f[1]), int(f[2]) if f[2].lstrip("-").isdigit() else 0, deps, f[4]))
    return tuple(out)


# ---------------------------------------------------------------- modprobe.d

# modprobe.d(5): a file in a directory earlier here replaces files of the same name in
# the directories after it.
MODPROBE_DIRS = (
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
)


@dataclass(frozen=True)
class ModprobeOption:
    module: str
    key: str
    value: str | None
    source: str  # file it came from


@dataclass(frozen=True)
class ModprobeConfig:
    """What modprobe.d files say about modules (after same-name overrides)."""

    files: tuple[str, ...] = ()
    blacklist: frozenset[str] = frozenset()
    options: tuple[ModprobeOption, ...] = ()
    softdeps: tuple[tuple[str, str], ...] = ()  # (module, "pre: a b post: c")
    installs: tuple[tuple[str, str], ...] = ()  # (module, command)

    def option(self, module: str, key: str) -> str | None:
        """Last value of ``options <module> <key>=...``, or None."""
        mod = _norm_param(module)
        vals = [o.value for o in self.options if o.module == mod and o.key == key]
        return vals[-1] if vals else None

    def is_blacklisted(self, module: str) -> bool:
        return _norm_param(module) in self.blacklist

    def install_command(self, module: str) -> str | None:
        mod = _norm_param(module)
        cmds = [c for m, c in self.installs if m == mod]
        return cmds[-1] if cmds else None


def _logical_lines(text: str) -> Iterable[str]:
    """Join backslash continuations, drop comments and blank lines."""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def _effective_files(files: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Apply same-basename overrides between modprobe.d directories, then sort by name."""
    rank = {d: i for i, d in enumerate(MODPROBE_DIRS)}
    chosen: dict[str, tuple[int, str, str]] = {}
    for path, text in files:
        p = PurePosixPath(path)
        r = rank.get(str(p.parent), len(MODPROBE_DIRS))
        if p.name not in chosen or r < chosen[p.name][0]:
            chosen[p.name] = (r, path, text)
    return [(path, text) for _, (_, path, text) in sorted(chosen.items())]


def parse_modprobe_d(files: Sequence[tuple[str, str]]) -> ModprobeConfig:
    """Parse ``(path, content)`` pairs of ``*.conf`` files from the modprobe.d directories."""
    blacklist: set[str] = set()
    options: list[ModprobeOption] = []
    softdeps: list[tuple[str, str]] = []
    installs: list[tuple[str, str]] = []
    effective = _effective_files(files)
    for path, text in effective:
        for line in _logical_lines(text):
            words = line.split()
            directive, args = words[0], words[1:]
            if not args:
                continue
            module = _norm_param(args[0])
            if directive == "blacklist":
                blacklist.add(module)
            elif directive == "options":
                for kv in args[1:]:
                    key, sep, value = kv.partition("=")
                    options.append(ModprobeOption(module, key, value if sep else None, path))
            elif directive == "softdep":
                softdeps.append((module, " ".join(args[1:])))
            elif directive == "install":
                installs.append((module, " ".join(args[1:])))
    return ModprobeConfig(
        files=tuple(p for p, _ in effective),
        blacklist=frozenset(blacklist),
        options=tuple(options),
        softdeps=tuple(softdeps),
        installs=tuple(installs),
    )


# ---------------------------------------------------------------- sysfs parameters

_BOOL_WORDS = {"y": True, "1": True, "n": False, "0": False}


def parse_param_bool(value: str | None) -> bool | None:
    """A bool module parameter as sysfs shows it (``Y``/``N``; ints as ``1``/``0``)."""
    if value is None:
        return None
    return _BOOL_WORDS.get(value.strip().lower())


def parse_path_values(lines: Iterable[str]) -> dict[str, str]:
    """``path=value`` lines (a fact prints sysfs files this way) into a dict."""
    out = {}
    for line in lines:
        path, sep, value = line.partition("=")
        if sep and path.startswith("/"):
            out[path] = value.strip()
    return out


# ---------------------------------------------------------------- kernel versions

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def kernel_version(release: str) -> tuple[int, int, int] | None:
    """Numeric ``(major, minor, patch)`` of a release string (``uname -r``), or None.

    Distribution suffixes are ignored: ``6.17.0-5-generic`` and ``6.18.44-fc-v657-gpu``
    compare as 6.17.0 and 6.18.44.
    """
    m = _VERSION.match(release.strip())
    if not m:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)
