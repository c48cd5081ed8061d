"""Generate the README's configuration reference from ``ccfactory.config.HostData``.

The model is the single source of truth (dev-sec's argument_specs idea); a unit test
fails when the README and the model disagree. Regenerate with ``ccfactory docs``.
"""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic_core import PydanticUndefined

from ccfactory.config import HostData

BEGIN = "<!-- BEGIN generated: ccfactory docs (options) -->"
END = "<!-- END generated: ccfactory docs (options) -->"

SECTION_TITLES = {
    "node": "Node",
    "bmc": "BMC (firmware stage)",
    "gpu": "GPUs",
    "kbs": "Key Broker Service",
    "runtime": "Runtime (containerd, Kata, CoCo)",
    "reboot": "Reboots",
    "artifacts": "Artifacts (bill of materials)",
    "lab": "Lab",
}


def _type_name(annotation) -> str:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is dict:
        return f"dict of {_type_name(args[0])} → {_type_name(args[1])}"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if args:
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + (
            " \\| none" if type(None) in args else ""
        )
    return getattr(annotation, "__name__", str(annotation))


def options_markdown() -> str:
    """The option tables, one per section, in model order."""
    sections: dict[str, list[str]] = {}
    for key, field in HostData.model_fields.items():
        section = (field.json_schema_extra or {}).get("section", "other")
        default = field.default
        shown = "required" if default is PydanticUndefined else "unset" if default is None else f"`{default!r}`"
        row = f"| `{key}` | {_type_name(field.annotation)} | {shown} | {field.description} |"
        sections.setdefault(section, []).append(row)
    out = []
    for section, rows in sections.items():
        out += [f"#### {SECTION_TITLES.get(section, section)}", "", "| key | type | default | meaning |",
                "|---|---|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def update_readme(readme: Path, *, check: bool = False) -> bool:
    """Rewrite the generated block of ``readme``; return True if it changed (or would)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{options_markdown()}{END}{tail}"
    if new == text:
        return False
    if not check:
        readme.write_text(new)
    return True
