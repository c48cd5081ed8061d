"""Generate the README's configuration reference from ``ccfactory.config.HostData``.

The model is the single source of truth (dev-sec's argument_specs idea); a unit test
fails when the README and the model disagree. Regenerate with ``ccfactory docs``.
"""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic_core import PydanticUndefined

from ccfactory.config import VALIDATION_RULES, HostData

BEGIN = "<!-- BEGIN generated: ccfactory docs (options) -->"
END = "<!-- END generated: ccfactory docs (options) -->"
RULES_BEGIN = "<!-- BEGIN generated: ccfactory docs (validation rules) -->"
RULES_END = "<!-- END generated: ccfactory docs (validation rules) -->"

SECTION_TITLES = {
    "node": "Node",
    "bmc": "BMC (firmware stage)",
    "gpu": "GPUs",
    "kbs": "Key Broker Service",
    "runtime": "Runtime (containerd, Kata, CoCo)",
    "templates": "Templates (every stage)",
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
    """The option tables, one per section (in ``SECTION_TITLES`` order: HostData gathers the
    stages' options by inheritance), rows in model order."""
    sections: dict[str, list[str]] = {}
    for key, field in HostData.model_fields.items():
        section = (field.json_schema_extra or {}).get("section", "other")
        default = field.default
        shown = "required" if default is PydanticUndefined else "unset" if default is None else f"`{default!r}`"
        row = f"| `{key}` | {_type_name(field.annotation)} | {shown} | {field.description} |"
        sections.setdefault(section, []).append(row)
    out = []
    order = list(SECTION_TITLES)
    for section, rows in sorted(sections.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        out += [f"#### {SECTION_TITLES.get(section, section)}", "", "| key | type | default | meaning |",
                "|---|---|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def _range(field) -> str:
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = [f"{op} {getattr(m, name)}" for m in field.metadata for name, op in ops.items() if hasattr(m, name)]
    return ", ".join(parts)


def rules_markdown() -> str:
    """Every validation rule: ``ccfactory.config.VALIDATION_RULES`` and the fields' ranges."""
    lines = [f"- **{keys}**: {rule} (source: {source})" for keys, rule, source in VALIDATION_RULES]
    ranges = [f"`{key}` {r}" for key, field in HostData.model_fields.items() if (r := _range(field))]
    lines.append(f"- **ranges** (from `HostData`): {'; '.join(ranges)}")
    return "\n".join(lines) + "\n"


def _replace(text: str, begin: str, end: str, body: str, readme: Path) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"{readme} lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def update_readme(readme: Path, *, check: bool = False) -> bool:
    """Rewrite the generated blocks of ``readme``; return True if it changed (or would)."""
    text = readme.read_text()
    new = _replace(text, BEGIN, END, options_markdown(), readme)
    new = _replace(new, RULES_BEGIN, RULES_END, rules_markdown(), readme)
    if new == text:
        return False
    if not check:
        readme.write_text(new)
    return True
