"""The host's own apt sources, handed to mmdebstrap and the apt proxy.

The lab never names a mirror: it reuses whatever the host uses. Both formats are read:
one-line (``/etc/apt/sources.list``, ``sources.list.d/*.list``) and deb822
(``sources.list.d/*.sources``). Only ``deb`` entries for the lab's suite family
(``bookworm``, ``bookworm-updates``, ``bookworm-security``, ...) are kept, so a
third-party repo on the host does not leak into the nodes.

Example::

    >>> srcs = parse_deb822("Types: deb\\nURIs: http://m.example/debian\\nSuites: bookworm\\nComponents: main\\n")
    >>> [s.one_line() for s in srcs]
    ['deb http://m.example/debian bookworm main']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ccfactory.lab.errors import LabError


@dataclass(frozen=True)
class AptSource:
    type: str  # "deb" or "deb-src"
    uri: str
    suite: str
    components: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = field(default=())  # e.g. (("signed-by", "/usr/share/keyrings/x.gpg"),)
    origin: str = ""  # file it came from

    def one_line(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.options)
        return " ".join(p for p in (self.type, f"[{opts}]" if opts else "", self.uri, self.suite, *self.components) if p)

    @property
    def host(self) -> str:
        return urlsplit(self.uri).hostname or ""


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """Entries of a one-line format file (``deb [opts] uri suite comp...``)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        opts = tuple(tuple(o.split("=", 1)) for o in (m.group(2) or "").split() if "=" in o)
        out.append(AptSource(m.group(1), m.group(3), m.group(4), tuple(m.group(5).split()), opts, origin))  # type: ignore[arg-type]
    return out


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    paras, cur, key = [], {}, None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if cur:
                paras.append(cur)
            cur, key = {}, None
            continue
        if raw[0] in " \t" and key:  # continuation line (e.g. an inline Signed-By key)
            cur[key] += "\n" + raw.strip()
            continue
        if ":" in raw:
            key, val = raw.split(":", 1)
            key = key.strip().lower()
            cur[key] = val.strip()
    if cur:
        paras.append(cur)
    return paras


# deb822 fields that map to one-line options (apt's sources.list(5) names)
_DEB822_OPTIONS = {"signed-by": "signed-by", "architectures": "arch", "trusted": "trusted"}


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """Entries of a deb822 ``.sources`` file; ``Enabled: no`` paragraphs are skipped."""
    out = []
    for p in _deb822_paragraphs(text):
        if p.get("enabled", "yes").lower() == "no":
            continue
        opts = []
        for f, name in _DEB822_OPTIONS.items():
            val = p.get(f)
            if not val or "\n" in val or "BEGIN PGP" in val:
                continue  # inline keys cannot go on one line; the default keyring applies
            opts.append((name, ",".join(val.split())))
        comps = tuple(p.get("components", "").split())
        for typ in p.get("types", "").split():
            for uri in p.get("uris", "").split():
                for suite in p.get("suites", "").split():
                    out.append(AptSource(typ, uri, suite, comps, tuple(opts), origin))
    return out


def read_host_sources(root: Path = Path("/")) -> list[AptSource]:
    """Every apt source configured on the host (both formats), in apt's reading order."""
    etc = root / "etc/apt"
    out: list[AptSource] = []
    main = etc / "sources.list"
    if main.is_file():
        out += parse_one_line(main.read_text(), str(main))
    d = etc / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".list":
                out += parse_one_line(f.read_text(), str(f))
            elif f.suffix == ".sources":
                out += parse_deb822(f.read_text(), str(f))
    return out


def sources_for_suite(sources: list[AptSource], suite: str) -> list[AptSource]:
    """The ``deb`` entries of one release family (``bookworm``, ``bookworm-*``, ``bookworm/updates``)."""
    keep = [s for s in sources if s.type == "deb" and re.match(rf"^{re.escape(suite)}([-/].*)?$", s.suite)]
    seen, out = set(), []
    for s in keep:
        if s.one_line() not in seen:
            seen.add(s.one_line())
            out.append(s)
    return out


def lab_sources(suite: str = "bookworm", root: Path = Path("/")) -> list[AptSource]:
    """The host's sources for ``suite``; ``LabError`` naming the files read if there are none.

    Example: ``[s.one_line() for s in lab_sources()]`` gives the mmdebstrap mirror arguments.
    """
    all_sources = read_host_sources(root)
    chosen = sources_for_suite(all_sources, suite)
    if not chosen:
        files = sorted({s.origin for s in all_sources}) or ["(no apt sources found)"]
        raise LabError(
            f"the host's apt sources have no 'deb' entry for {suite}; the lab builds {suite} nodes "
            f"from the host's own mirror. Read: {', '.join(files)}. Add a {suite} source to /etc/apt/sources.list.d/."
        )
    if not any(s.suite == suite for s in chosen):
        raise LabError(f"the host's apt sources have {suite}-* entries but no plain {suite} suite")
    return chosen
