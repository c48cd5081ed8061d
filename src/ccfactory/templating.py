"""The one Jinja environment of ccfactory's templates (every stage), with site overlays.

Each stage's templates live in its role package (``roles/<stage>/templates/*.j2``), named
``<stage>/<file>``; what they share (the managed-file header) lives in ``ccfactory.templates``
(``templates/`` in a clone). A site overlay directory (``template_overlay_dirs``) shadows any
of them by that relative path (``host/ccfactory-tee.conf.j2``): ``overlays`` are searched first. Every stage renders through ``render`` (a role gets its
host's overlays from ``site_overlays(cfg)``), and ``tests/unit/test_templates_overlay.py``
proves, for every shipped template (``roles/<stage>/templates/`` and ``templates/``), that an overlay copy wins. An overlay
directory that does not exist, or an overlay file that shadows no shipped template (a typo
would otherwise be ignored without a word), is an error naming host, field and fix.

Values never go into a config file as raw text: TOML templates write every value through the
``toml`` filter (``{{ kbs_url | toml }}``, a TOML literal made by ``tomli_w``; ``toml_key`` for a
key) and JSON through ``tojson``. A value with quotes, newlines, ``]`` or ``=`` then stays one
value. Why a filter rather than building a dict and serialising it: a site overlay is still a
plain template that shadows ccfactory's by path and may add comments, keys or tables, and the
documents keep their reviewed layout and comments (the digest of initdata is over that text).

Example::

    >>> text = render("runtime/cdh.toml.j2", kbs_url="https://kbs:8080", kbs_cert="",
    ...               credentials=[], image_security_policy_uri="")
    >>> 'name = "cc_kbc"' in text
    True
    >>> print(toml_value('say "hi"]'))
    "say \\"hi\\"]"
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, StrictUndefined

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """``value`` as one TOML value (string, integer, float, bool, date, array, inline table),
    written by ``tomli_w``; refuses what TOML cannot hold (None, NaN is allowed by TOML)."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if value is None:
        raise TypeError("None has no TOML form; leave the key out instead")
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def comment_text(value: Any) -> str:
    """``value`` for a ``#`` comment: a line break or control character would end the comment
    and start config text, so every non-printable character becomes ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def toml_key(key: Any) -> str:
    """``key`` as a TOML key: bare when it may be, else a quoted string."""
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


class TemplateOverlayError(ValueError):
    """A site overlay directory that is missing, or holds a file that shadows no template;
    ``message`` and ``fix`` as parts, for callers that report problems structurally."""

    def __init__(self, where: str, message: str, fix: str) -> None:
        super().__init__(f"{where}: {message}; fix: {fix}")
        self.message, self.fix = message, fix


@cache
def stage_template_dirs() -> dict[str, str]:
    """``{stage: directory}`` of every role package that ships templates (``roles/<stage>/templates``)."""
    roles = Path(str(resources.files("ccfactory.roles")))
    return {d.parent.name: str(d) for d in sorted(roles.glob("*/templates")) if d.is_dir()}


@cache
def packaged_templates() -> tuple[str, ...]:
    """Relative path of every shipped template: ``<stage>/<file>`` for a stage's, the bare name
    for a shared one (``ccfactory.templates``)."""
    shared = Path(str(resources.files("ccfactory.templates")))
    names = [p.relative_to(shared).as_posix() for p in shared.rglob("*.j2")]
    for stage, directory in stage_template_dirs().items():
        names += [f"{stage}/{p.relative_to(directory).as_posix()}" for p in Path(directory).rglob("*.j2")]
    return tuple(sorted(names))


def check_overlays(overlays: Sequence[str], host: str = "", field: str = "template_overlay_dirs") -> tuple[str, ...]:
    """``overlays`` expanded (``~``) and checked: each a directory whose ``*.j2`` files each
    shadow a shipped template. Raises ``TemplateOverlayError`` naming host, field and fix."""
    who = f"{host}: " if host else ""
    known = set(packaged_templates())
    out = []
    for i, directory in enumerate(overlays):
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise TemplateOverlayError(
                f"{who}{field}[{i}]", f"{directory} is not a directory on this controller",
                f"create it or remove it from {field}",
            )
        stray = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.j2")
                       if p.relative_to(path).as_posix() not in known)  # fmt: skip
        if stray:
            raise TemplateOverlayError(
                f"{who}{field}[{i}]",
                f"{directory} has {', '.join(stray)}, which shadow no ccfactory template "
                f"(shipped: {', '.join(sorted(known))})",
                "rename them to the template's relative path or remove them",
            )
        out.append(str(path))
    return tuple(out)


def site_overlays(cfg: Any) -> tuple[str, ...]:
    """A host's overlay directories (``cfg.runtime.template_overlay_dirs`` of its ``NodeConfig``), checked."""
    return check_overlays(cfg.runtime.template_overlay_dirs, host=cfg.name)


@cache
def environment(overlays: tuple[str, ...] = ()) -> Environment:
    shared = str(resources.files("ccfactory.templates"))
    stages = PrefixLoader({stage: FileSystemLoader(d) for stage, d in stage_template_dirs().items()}, delimiter="/")
    loaders = [FileSystemLoader(d) for d in overlays] + [stages, FileSystemLoader(shared)]
    env = Environment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - config files, not HTML; values go through toml/tojson
    )
    env.filters["toml"] = toml_value
    env.filters["comment_text"] = comment_text
    env.filters["toml_key"] = toml_key
    env.filters["toml_document"] = tomli_w.dumps  # a whole document built as data (a dict)
    return env


def render(name: str, overlays: Sequence[str] = (), **context) -> str:
    """Render template ``name`` (e.g. ``runtime/cdh.toml.j2``), site overlays first.

    The one function every stage renders through; ``overlays`` are checked (``check_overlays``)."""
    return environment(check_overlays(overlays)).get_template(name).render(**context)
