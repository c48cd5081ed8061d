"""The kernel command line GRUB's defaults files produce, with the file and line of every token.

``update-grub`` (grub-mkconfig) sources ``/etc/default/grub`` and then every
``/etc/default/grub.d/*.cfg`` in name order, and boots Linux with
``$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT``. This module replays the assignments to
those two variables, expanding ``$GRUB_CMDLINE_LINUX_DEFAULT``/``${...}`` references, so the
stage can say *where* a harmful token comes from (``/etc/default/grub line 10``) and whether
a later file throws away what ccfactory's drop-in appends.

Only plain assignments (optionally ``export``-ed, with quotes and backslash continuations)
are replayed; conditionals and other commands are ignored, as the lab's renderer does.
References to other variables expand to nothing.

Example::

    >>> env = replay([("/etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt"\\n')])
    >>> [(t.token, t.origin.where) for t in env.tokens()]
    [('quiet', '/etc/default/grub line 1'), ('iommu=pt', '/etc/default/grub line 1')]
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

DEFAULT_GRUB = "/etc/default/grub"
GRUB_D = "/etc/default/grub.d"  # Debian-family default; a host's own is distros.toml grub_dropin_dir
LINUX = "GRUB_CMDLINE_LINUX"
LINUX_DEFAULT = "GRUB_CMDLINE_LINUX_DEFAULT"
CMDLINE_VARS = (LINUX, LINUX_DEFAULT)

_ASSIGN = re.compile(r"^\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$")
_REF = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")


@dataclass(frozen=True)
class Origin:
    path: str
    line: int
    text: str  # the assignment as written (continuations joined)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


@dataclass(frozen=True)
class Token:
    token: str
    origin: Origin


@dataclass(frozen=True)
class Assignment:
    var: str
    words: tuple[str, ...]  # value split on whitespace; "$VAR" words are references
    origin: Origin


@dataclass
class GrubEnv:
    """The two command-line variables after replaying files, and every assignment in order."""

    values: dict[str, list[Token]] = field(default_factory=lambda: {v: [] for v in CMDLINE_VARS})
    history: list[tuple[Assignment, tuple[Token, ...]]] = field(default_factory=list)

    def tokens(self) -> list[Token]:
        """The command line as update-grub would write it (``LINUX`` then ``LINUX_DEFAULT``)."""
        return self.values[LINUX] + self.values[LINUX_DEFAULT]


def grub_files_in_order(files: Iterable[tuple[str, str]], grub_d: str = GRUB_D) -> list[tuple[str, str]]:
    """``/etc/default/grub`` first, then ``grub_d/*.cfg`` sorted by name (C locale), others dropped."""
    by_path = dict(files)
    ordered = [(DEFAULT_GRUB, by_path[DEFAULT_GRUB])] if DEFAULT_GRUB in by_path else []
    dropins = [p for p in by_path if p.startswith(grub_d + "/") and p.endswith(".cfg") and "/" not in p[len(grub_d) + 1 :]]
    return ordered + [(p, by_path[p]) for p in sorted(dropins, key=lambda p: p.encode())]


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(first line number, line)`` with backslash-newline continuations joined."""
    start, buf = 0, ""
    for n, raw in enumerate(text.split("\n"), 1):
        if not buf:
            start = n
        if raw.endswith("\\") and not raw.endswith("\\\\"):
            buf += raw[:-1]
            continue
        yield start, buf + raw
        buf = ""
    if buf:
        yield start, buf


def parse_assignments(path: str, text: str) -> list[Assignment]:
    """Assignments to ``GRUB_CMDLINE_LINUX``/``GRUB_CMDLINE_LINUX_DEFAULT`` in one file."""
    out = []
    for line_no, line in _logical_lines(text):
        m = _ASSIGN.match(line)
        if not m:
            continue
        raw = m.group(2)
        try:
            parts = shlex.split(raw, comments=True)
        except ValueError:  # unbalanced quotes: the shell would fail too; take what is there
            parts = raw.replace('"', " ").replace("'", " ").split()
            parts = [" ".join(parts)]
        value = parts[0] if parts else ""
        out.append(Assignment(m.group(1), tuple(value.split()), Origin(path, line_no, line.strip())))
    return out


def replay(files: Sequence[tuple[str, str]]) -> GrubEnv:
    """Replay the assignments of ``files`` (already in update-grub's order, see ``grub_files_in_order``)."""
    env = GrubEnv()
    for path, text in files:
        for a in parse_assignments(path, text):
            new: list[Token] = []
            for word in a.words:
                ref = _REF.match(word)
                if ref:
                    new.extend(env.values.get(ref.group(1) or ref.group(2), []))
                else:
                    new.append(Token(word, a.origin))
            env.values[a.var] = new
            env.history.append((a, tuple(new)))
    return env


def dropped_by(env: GrubEnv, owner: str) -> Assignment | None:
    """The first assignment, after ``owner``'s file added tokens, that throws them away."""
    seen_owner = False
    for a, value in env.history:
        if a.origin.path == owner:
            seen_owner = True
            continue
        if seen_owner and a.var == LINUX_DEFAULT and not any(t.origin.path == owner for t in value):
            return a
    return None


# ------------------------------------------------------------------ grubby (BLS) hosts


@dataclass(frozen=True)
class BootEntry:
    """One boot entry as ``grubby --info=ALL`` prints it (``index=``, ``kernel=``, ``args=`` ...)."""

    index: str
    kernel: str
    args: tuple[str, ...]  # the entry's kernel arguments, split on whitespace

    @property
    def name(self) -> str:
        return f"{self.kernel or '(no kernel)'} (index {self.index})"


def parse_grubby_info(lines: Iterable[str]) -> tuple[BootEntry, ...]:
    """Entries of ``grubby --info=ALL``: ``key=value`` lines, values in double quotes (grubby-bls,
    RHEL 8 and later) or bare (the C grubby); each ``index=`` starts an entry. Other lines
    (warnings) are ignored.

    >>> [(e.index, e.kernel, e.args) for e in parse_grubby_info(['index=0', 'kernel="/boot/vmlinuz-6.12.0"',
    ...     'args="ro rhgb quiet"', 'root="/dev/vda2"'])]
    [('0', '/boot/vmlinuz-6.12.0', ('ro', 'rhgb', 'quiet'))]
    """
    entries: list[BootEntry] = []
    current: dict[str, str] | None = None

    def close() -> None:
        if current is not None:
            entries.append(BootEntry(current.get("index", "?"), current.get("kernel", ""),
                                     tuple(current.get("args", "").split())))  # fmt: skip

    for raw in lines:
        key, sep, value = raw.strip().partition("=")
        if not sep or not key.isidentifier():
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key == "index":
            close()
            current = {}
        if current is not None:
            current[key] = value
    close()
    return tuple(entries)


def parse_owned_args(text: str | None) -> tuple[str, ...]:
    """The arguments recorded in ccfactory's owned-args file: one per line, ``#`` comments."""
    if not text:
        return ()
    return tuple(t for line in text.splitlines() if (t := line.split("#", 1)[0].strip()))


def render_owned_args(tokens: Sequence[str], source: str) -> str | None:
    """The owned-args file for ``tokens`` (None when ccfactory owns no argument)."""
    if not tokens:
        return None
    head = (
        f"# Managed by ccfactory ({source}): the kernel arguments ccfactory added with grubby.\n"
        "# ccfactory removes an argument listed here (grubby --remove-args) when it no longer wants\n"
        "# it, and never touches one that is not listed. Do not edit.\n"
    )
    return head + "".join(f"{t}\n" for t in tokens)


def arg_key(token: str) -> str:
    """The parameter name of a kernel argument (``-`` and ``_`` are the same to the kernel)."""
    return token.partition("=")[0].replace("-", "_")
