"""The Jinja environment of ccfactory's templates (host, kbs and runtime stages), with site overlays.

Templates live in ``ccfactory.templates`` (``templates/<stage>/*.j2`` in a clone). A site
overlay directory shadows any of them by relative path (design: "A site overlay
directory can shadow any template by relative path"): ``overlays`` are searched first.

Example::

    >>> text = render("runtime/cdh.toml.j2", kbs_url="https://kbs:8080", kbs_cert="",
    ...               credentials=[], image_security_policy_uri="")
    >>> 'name = "cc_kbc"' in text
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined


@cache
def environment(overlays: tuple[str, ...] = ()) -> Environment:
    packaged = str(resources.files("ccfactory.templates"))
    loaders = [FileSystemLoader(d) for d in overlays] + [FileSystemLoader(packaged)]
    return Environment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - config files, not HTML
    )


def render(name: str, overlays: Sequence[str] = (), **context) -> str:
    """Render template ``name`` (e.g. ``runtime/cdh.toml.j2``), site overlays first."""
    return environment(tuple(overlays)).get_template(name).render(**context)
