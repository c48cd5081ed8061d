"""One fact command prints several files; marker lines keep them apart.

A fact's shell command prints ``### ccfactory:<name>`` (optionally followed by one
argument, e.g. a file path) before each part. No kernel log line, sysfs value or config
file line starts with that text, so splitting on it is unambiguous.

Example::

    >>> parts = split_sections(["### ccfactory:cmdline", "ro quiet", "### ccfactory:file /etc/a.conf", "x"])
    >>> [(p.name, p.arg, p.lines) for p in parts]
    [('cmdline', '', ('ro quiet',)), ('file', '/etc/a.conf', ('x',))]
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

MARKER = "### ccfactory:"


@dataclass(frozen=True)
class Section:
    name: str
    arg: str
    lines: tuple[str, ...]


def echo_marker(name: str, arg_expr: str = "") -> str:
    """Shell code printing the marker for section ``name``.

    ``arg_expr`` is shell code (e.g. ``"$f"``) expanded at run time; ``name`` is literal.
    """
    if arg_expr:
        return f'echo {shlex.quote(MARKER + name)}" {arg_expr}"'
    return f"echo {shlex.quote(MARKER + name)}"


def split_sections(lines: Iterable[str]) -> tuple[Section, ...]:
    """Split output at marker lines; lines before the first marker are dropped."""
    out: list[Section] = []
    name = arg = None
    body: list[str] = []
    for line in lines:
        if line.startswith(MARKER):
            if name is not None:
                out.append(Section(name, arg or "", tuple(body)))
            name, _, arg = line[len(MARKER) :].strip().partition(" ")
            body = []
        elif name is not None:
            body.append(line)
    if name is not None:
        out.append(Section(name, arg or "", tuple(body)))
    return tuple(out)


def section_map(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Sections by name; repeated names are concatenated in order."""
    merged: dict[str, tuple[str, ...]] = {}
    for s in split_sections(lines):
        merged[s.name] = merged.get(s.name, ()) + s.lines
    return merged
