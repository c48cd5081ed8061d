"""A lab node's own boot configuration, read from its root filesystem at every boot.

What the renderer honours (and nothing else):

* **Kernel command line** = the profile's base command line (``BOOT_IMAGE=... root=... ro``)
  followed by ``$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT``, computed as
  ``update-grub`` would: ``/etc/default/grub`` is sourced first, then every
  ``/etc/default/grub.d/*.cfg`` in C sort order. Shell assignments are parsed with
  quoting, ``$VAR``/``${VAR}`` expansion and line continuations, so drop-ins like
  ``GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt"`` append.
  Command substitutions expand to nothing; other commands are ignored. The lab acts
  as if ``update-grub`` ran before every boot.
* **Module options** from ``*.conf`` in ``/etc/modprobe.d``, ``/run/modprobe.d``,
  ``/usr/lib/modprobe.d`` and ``/lib/modprobe.d`` (a file name in an earlier directory
  hides the same name in later ones; files are read in name order, like kmod):
  ``options MODULE key=value ...``, ``blacklist MODULE``, and ``install MODULE
  /bin/false`` (or ``/bin/true``), which disables the module. ``MODULE.key=value`` on
  the kernel command line overrides modprobe.d options, as it does on a real host;
  ``modprobe.blacklist=`` and ``module_blacklist=`` blacklist too. Dashes and
  underscores in module and parameter names are equivalent.
* **VFIO**: ``options vfio-pci ids=VVVV:DDDD,...`` (or ``vfio-pci.ids=`` on the
  command line) selects devices by ID; ccfactory's own file
  ``/etc/ccfactory/vfio-pci.conf`` selects devices by PCI address or ID, one per line
  (``0000:18:00.0`` or ``10de:2330``; ``#`` comments).

Example::

    >>> env = parse_shell_assignments('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\\n'
    ...     'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt"\\n')
    >>> env["GRUB_CMDLINE_LINUX_DEFAULT"]
    'quiet iommu=pt'
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

VFIO_CONF = "etc/ccfactory/vfio-pci.conf"
MODPROBE_DIRS = ("etc/modprobe.d", "run/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d")
_DISABLING_INSTALL = {"/bin/false", "/bin/true", "/usr/bin/false", "/usr/bin/true", "false", "true"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_BDF = re.compile(r"^(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")


def norm(name: str) -> str:
    """Kernel rule: ``-`` and ``_`` are the same in module and parameter names."""
    return name.replace("-", "_")


# ---------------------------------------------------------------- shell (grub defaults)


def _expand_var(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Expand ``$NAME``/``${NAME}``/``${NAME:-word}`` at text[i] == '$'; returns (value, next index)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end < 0:
            return "", len(text)
        expr = text[i + 2 : end]
        name, sep, default = expr.partition(":-")
        val = env.get(name, "")
        return (default if sep and not val else val), end + 1
    m = _NAME.match(text, i + 1)
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def parse_shell_assignments(text: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Run the variable assignments of a POSIX shell file (as ``.`` would) and return the variables.

    Handles ``NAME=value``, ``export NAME=value``, single/double quotes, backslash
    escapes and continuations, comments and ``$VAR`` expansion. Commands other than
    assignments are skipped; ``$(...)``/backticks expand to an empty string.
    """
    env = dict(env or {})
    i, n = 0, len(text)
    words: list[tuple[str | None, str]] = []  # (assigned name or None, value)
    cur: list[str] | None = None
    cur_name: str | None = None

    def flush_word():
        nonlocal cur, cur_name
        if cur is not None:
            words.append((cur_name, "".join(cur)))
        cur, cur_name = None, None

    def end_command():
        nonlocal words
        flush_word()
        ws = words[1:] if words and words[0] == (None, "export") else words
        if ws and all(name is not None for name, _ in ws):
            for name, val in ws:
                env[name] = val  # type: ignore[index]
        words = []

    while i < n:
        c = text[i]
        if cur is None and c not in " \t\n;":
            if c == "#":  # comment to end of line
                while i < n and text[i] != "\n":
                    i += 1
                continue
            cur = []
            m = _ASSIGN.match(text, i)
            if m:
                cur_name = m.group(0)[:-1]
                i = m.end()
                continue
        if c in " \t":
            flush_word()
            i += 1
        elif c in "\n;":
            end_command()
            i += 1
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2  # line continuation
            else:
                cur.append(text[i + 1] if i + 1 < n else "")  # type: ignore[union-attr]
                i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            end = n if end < 0 else end
            cur.append(text[i + 1 : end])  # type: ignore[union-attr]
            i = end + 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        cur.append(text[i + 1])  # type: ignore[union-attr]
                    i += 2
                elif text[i] == "$" and text.startswith("$(", i):
                    i = _skip_subst(text, i + 2, ")")
                elif text[i] == "$":
                    val, i = _expand_var(text, i, env)
                    cur.append(val)  # type: ignore[union-attr]
                elif text[i] == "`":
                    i = _skip_subst(text, i + 1, "`")
                else:
                    cur.append(text[i])  # type: ignore[union-attr]
                    i += 1
            i += 1
        elif c == "$" and text.startswith("$(", i):
            i = _skip_subst(text, i + 2, ")")
        elif c == "$":
            val, i = _expand_var(text, i, env)
            cur.append(val)  # type: ignore[union-attr]
        elif c == "`":
            i = _skip_subst(text, i + 1, "`")
        else:
            cur.append(c)  # type: ignore[union-attr]
            i += 1
    end_command()
    return env


def _skip_subst(text: str, i: int, close: str) -> int:
    end = text.find(close, i)
    return len(text) if end < 0 else end + 1


def grub_cmdline(base: str, default_grub: str | None, dropins: list[str]) -> str:
    """The kernel command line update-grub would produce (pure).

    >>> grub_cmdline("BOOT_IMAGE=/vmlinuz ro", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', ['GRUB_CMDLINE_LINUX="iommu=pt"'])
    'BOOT_IMAGE=/vmlinuz ro iommu=pt quiet'
    """
    env: dict[str, str] = {}
    for text in ([default_grub] if default_grub is not None else []) + dropins:
        env = parse_shell_assignments(text, env)
    parts = [base, env.get("GRUB_CMDLINE_LINUX", ""), env.get("GRUB_CMDLINE_LINUX_DEFAULT", "")]
    return " ".join(" ".join(parts).split())


# ---------------------------------------------------------------- kernel command line


def kernel_params(cmdline: str) -> list[tuple[str, str | None]]:
    """``[(key, value-or-None)]`` in order; quoted values keep their spaces."""
    try:
        tokens = shlex.split(cmdline)
    except ValueError:
        tokens = cmdline.split()
    return [(t.split("=", 1)[0], t.split("=", 1)[1] if "=" in t else None) for t in tokens]


def cmdline_value(cmdline: str, key: str) -> str | None:
    """Last value of ``key=`` on the command line (the kernel uses the last one); '' for a bare flag."""
    found = None
    for k, v in kernel_params(cmdline):
        if norm(k) == norm(key):
            found = "" if v is None else v
    return found


# ---------------------------------------------------------------- modprobe.d


@dataclass(frozen=True)
class ModprobeConfig:
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # module -> param -> value
    blacklist: frozenset[str] = frozenset()
    disabled: frozenset[str] = frozenset()  # install MODULE /bin/false


def parse_modprobe(texts: list[str]) -> ModprobeConfig:
    """modprobe.d files (already in reading order) → options, blacklist, disabled modules (pure).

    >>> parse_modprobe(["options kvm_amd sev_snp=0\\nblacklist nouveau"]).options["kvm_amd"]["sev_snp"]
    '0'
    """
    options: dict[str, dict[str, str]] = {}
    blacklist: set[str] = set()
    disabled: set[str] = set()
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                words = line.split()
            cmd, args = words[0], words[1:]
            if cmd == "options" and args:
                mod = options.setdefault(norm(args[0]), {})
                for a in args[1:]:
                    k, _, v = a.partition("=")
                    mod[norm(k)] = v if _ else "1"
            elif cmd == "blacklist" and args:
                blacklist.add(norm(args[0]))
            elif cmd == "install" and len(args) >= 2 and args[1] in _DISABLING_INSTALL:
                disabled.add(norm(args[0]))
    return ModprobeConfig(options, frozenset(blacklist), frozenset(disabled))


def modprobe_files(root: Path) -> list[Path]:
    """modprobe.d ``*.conf`` files in kmod's order (name-sorted; /etc hides same-named ones)."""
    chosen: dict[str, Path] = {}
    for d in MODPROBE_DIRS:
        for f in sorted((root / d).glob("*.conf")) if (root / d).is_dir() else []:
            chosen.setdefault(f.name, f)
    return [chosen[k] for k in sorted(chosen)]


# ---------------------------------------------------------------- the node's boot config


@dataclass(frozen=True)
class BootConfig:
    """Everything the renderer needs from the node's own files."""

    cmdline: str
    modprobe: ModprobeConfig = field(default_factory=ModprobeConfig)
    vfio_conf: tuple[str, ...] = ()  # entries of /etc/ccfactory/vfio-pci.conf (BDFs or vendor:device)
    files: tuple[str, ...] = ()  # node paths that were read (for the dmesg header / debugging)

    def module_param(self, module: str, param: str) -> str | None:
        """Effective parameter: ``module.param=`` on the command line beats modprobe.d options."""
        on_cmdline = cmdline_value(self.cmdline, f"{norm(module)}.{norm(param)}")
        if on_cmdline is None:
            # the kernel also accepts the dashed module spelling on the command line
            for k, v in kernel_params(self.cmdline):
                if "." in k and norm(k.split(".", 1)[0]) == norm(module) and norm(k.split(".", 1)[1]) == norm(param):
                    on_cmdline = "" if v is None else v
        if on_cmdline is not None:
            return on_cmdline
        return self.modprobe.options.get(norm(module), {}).get(norm(param))

    def module_blocked(self, module: str) -> bool:
        """Blacklisted (modprobe.d or command line) or disabled with ``install ... /bin/false``."""
        m = norm(module)
        cmdl = set()
        for key in ("modprobe.blacklist", "module_blacklist"):
            val = cmdline_value(self.cmdline, key)
            if val:
                cmdl |= {norm(x) for x in val.split(",")}
        return m in self.modprobe.blacklist or m in self.modprobe.disabled or m in cmdl

    def vfio_ids(self) -> set[str]:
        """``vendor:device`` IDs given to vfio-pci (``ids=`` option, command line, or vfio-pci.conf)."""
        ids = {x.strip().lower() for x in (self.module_param("vfio_pci", "ids") or "").split(",") if x.strip()}
        ids = {":".join(i.split(":")[:2]) for i in ids}  # ids= allows vendor:device:subvendor:subdevice
        return ids | {e for e in self.vfio_conf if _ID.match(e)}

    def vfio_bdfs(self) -> set[str]:
        """PCI addresses selected in ``/etc/ccfactory/vfio-pci.conf`` (domain added if missing)."""
        return {e if e.count(":") == 2 else f"0000:{e}" for e in self.vfio_conf if _BDF.match(e)}


def parse_vfio_conf(text: str) -> tuple[str, ...]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            entries.append(line)
    return tuple(entries)


def read_boot_config(root: Path, base_cmdline: str) -> BootConfig:
    """Read the node's grub defaults, modprobe.d and vfio-pci.conf below ``root`` (its merged rootfs).

    Example: ``read_boot_config(Path("/var/lib/ccfactory/lab/nodes/node1/rootfs"), profile.kernel["cmdline"])``
    """
    files: list[str] = []

    def read(p: Path) -> str | None:
        try:
            text = p.read_text(errors="replace")
        except (OSError, UnicodeError):
            return None
        files.append("/" + str(p.relative_to(root)))
        return text

    default = read(root / "etc/default/grub")
    grub_d = root / "etc/default/grub.d"
    dropins = [t for f in (sorted(grub_d.glob("*.cfg")) if grub_d.is_dir() else []) if (t := read(f)) is not None]
    cmdline = grub_cmdline(base_cmdline, default, dropins)
    modprobe = parse_modprobe([t for f in modprobe_files(root) if (t := read(f)) is not None])
    vfio = read(root / VFIO_CONF)
    return BootConfig(cmdline, modprobe, parse_vfio_conf(vfio) if vfio else (), tuple(files))
