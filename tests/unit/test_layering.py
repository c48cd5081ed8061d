"""The import graph obeys the README's layering rule.

README, "Architecture": data flows one way, **inventory -> validated config -> roles ->
operations and facts -> hosts**, and each layer knows only what is below it. As imports (drawn
here with ``ast`` from every module of ``src/ccfactory`` and ``roles/``, including imports inside
functions, which only hide a dependency from import time):

====  ======================  =====================================================================
rank  layer                   modules
====  ======================  =====================================================================
0     entry points            ``cli``, ``deploys``, ``inventory``, ``docs``, ``kbs.cli``,
                              ``verify.plugin`` (pytest entry point), ``lab`` (the lab's own tool)
1     roles (stages)          ``roles.<stage>``; ``verify`` is the verify stage's package
2     validated config        ``config``
3     operations and facts    ``operations``, ``facts`` and the stage libraries they drive:
                              ``kbs``, ``coco``, ``firmware``, ``bom``, ``clients``
4     below                   ``parsers``, ``validate``, ``model`` (the typed config), ``labhooks`` (what product code may ask of the lab, installed by entry points), ``templating``, ``distros``, ``gpus``,
                              ``data``, ``templates``
====  ======================  =====================================================================

An import may go down any number of ranks, or stay within its own group (``roles.host`` ->
``roles.host.plan``). Forbidden: an import up (``bom.fetch`` -> ``config``); one stage importing
another (``roles.verify`` -> ``roles.gpu``: the shared piece belongs below both); product code
importing the lab (only entry points may); and a cycle between groups. Modules within one rank
below the roles may use each other (pyinfra's operations read facts).

``KNOWN`` lists today's violations, each with why it is still there. It may only shrink: the test
fails on a new violation *and* on a listed one that has disappeared (remove it from the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ((ROOT / "src/ccfactory", "ccfactory"), (ROOT / "roles", "ccfactory.roles"), (ROOT / "templates", "ccfactory.templates"))

ENTRY, ROLES, CONFIG, OPS, BELOW = range(5)
LAYER_OF_TOP = {
    "cli": ENTRY, "deploys": ENTRY, "inventory": ENTRY, "docs": ENTRY, "lab": ENTRY,
    "roles": ROLES, "verify": ROLES,
    "config": CONFIG,
    "operations": OPS, "facts": OPS, "kbs": OPS, "coco": OPS, "firmware": OPS, "gpuadmin": OPS, "bom": OPS, "clients": OPS,
    "parsers": BELOW, "validate": BELOW, "model": BELOW, "labhooks": BELOW, "templating": BELOW, "distros": BELOW, "gpus": BELOW, "data": BELOW,
    "templates": BELOW, "": BELOW,
}  # fmt: skip
ENTRY_MODULES = {"ccfactory.kbs.cli": "kbs.cli", "ccfactory.verify.plugin": "verify.plugin"}
# The check API every stage's ``roles/<stage>/checks.py`` is written against (decorator, context,
# outcome) and the report model it fills: below the stages, so that a stage's checks do not import
# the verify stage; the verify stage finds them by their place, never by an import of a stage.
CHECK_API = {"ccfactory.verify.checks", "ccfactory.verify.report"}

# (importer, imported, why it is still there). Shrink only.
KNOWN: set[tuple[str, str, str]] = set()  # none left (issue 16); a new one fails the test


def modules() -> dict[str, Path]:
    out = {}
    for base, prefix in SOURCES:
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = path
    return out


def _resolve(name: str, known: dict) -> str:
    while name and name not in known:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def import_graph() -> set[tuple[str, str]]:
    """(importer, imported module) for every ``ccfactory`` import, relative ones resolved."""
    mods = modules()
    edges = set()
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in names:
                target = _resolve(name, mods) if name.startswith("ccfactory") else ""
                if target and target != mod:
                    edges.add((mod, target))
    return edges


def layer(mod: str) -> tuple[int, str]:
    """(rank, group) of a module."""
    if mod in ENTRY_MODULES:
        return ENTRY, ENTRY_MODULES[mod]
    if mod in CHECK_API:
        return OPS, "verify.api"
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top == "roles" and len(parts) == 4 and parts[3] == "options":
        return BELOW, mod  # a stage's options: the flat HostData (config) is assembled from them
    if top == "roles":
        return ROLES, ".".join(parts[:3])
    if top == "verify":
        return ROLES, "ccfactory.roles.verify"
    assert top in LAYER_OF_TOP, f"{mod}: add its package to LAYER_OF_TOP (which layer is it?)"
    return LAYER_OF_TOP[top], top


def violations(edges) -> set[tuple[str, str]]:
    out = set()
    for a, b in edges:
        (ra, ga), (rb, gb) = layer(a), layer(b)
        if ga == gb:
            continue
        if gb == "lab":
            if ra != ENTRY:
                out.add((a, b))
        elif rb < ra or (rb == ra == ROLES):
            out.add((a, b))
    return out


def group_cycles(edges) -> list[list[str]]:
    """Cycles between groups (strongly connected components of the group graph, size > 1)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        ga, gb = layer(a)[1], layer(b)[1]
        if ga != gb:
            graph.setdefault(ga, set()).add(gb)
            graph.setdefault(gb, set())
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_drawn_from_the_real_tree():
    edges = import_graph()
    # a sanity check that the walker sees absolute, relative and function-level imports
    assert ("ccfactory.roles.host", "ccfactory.roles.host.plan") in edges
    assert ("ccfactory.roles.gpu", "ccfactory.distros") in edges
    assert ("ccfactory.config", "ccfactory.labhooks") in edges  # imported inside a function
    assert len(edges) > 300


def test_no_new_layering_violation_and_the_known_list_only_shrinks():
    found = violations(import_graph())
    known = {(a, b) for a, b, _ in KNOWN}
    new = sorted(found - known)
    gone = sorted(known - found)
    assert not new, "imports against the README's layering (fix them; do not add them to KNOWN):\n" + "\n".join(
        f"  {a} -> {b} ({'/'.join(map(str, (layer(a)[0], layer(b)[0])))})" for a, b in new
    )
    assert not gone, "fixed, so remove from KNOWN: " + ", ".join(f"{a} -> {b}" for a, b in gone)


def test_no_cycle_between_groups_once_the_known_violations_are_gone():
    edges = {e for e in import_graph() if e not in {(a, b) for a, b, _ in KNOWN}}
    assert group_cycles(edges) == []


def test_the_rule_catches_what_it_should():
    assert violations({("ccfactory.verify.node_checks", "ccfactory.roles.gpu.plan")})  # sideways between stages
    assert violations({("ccfactory.parsers.kernel", "ccfactory.config")})  # upward
    assert violations({("ccfactory.roles.host.operations", "ccfactory.lab.rootfs")})  # product code into the lab
    assert not violations({("ccfactory.roles.host", "ccfactory.parsers.kernel")})  # down two ranks
    assert not violations({("ccfactory.cli", "ccfactory.lab.cli")})  # an entry point may run the lab
    assert group_cycles({("ccfactory.bom", "ccfactory.config"), ("ccfactory.config", "ccfactory.bom")}) == [["bom", "config"]]


def test_each_stage_owns_its_checks_and_the_verify_stage_finds_them_without_importing_a_stage():
    """roles/<stage>/checks.py holds the stage's checks, written against the check API only;
    ccfactory.verify.node_checks loads them by convention (no static import of a stage)."""
    edges = import_graph()
    stage_checks = sorted(m for m in modules() if m.startswith("ccfactory.roles.") and m.endswith(".checks"))
    assert len(stage_checks) >= 6, stage_checks
    for mod in stage_checks:
        assert (mod, "ccfactory.verify.checks") in edges, mod
        assert not {b for a, b in edges if a == mod and b.startswith("ccfactory.verify.") and b not in CHECK_API}, mod
    assert not {b for a, b in edges if a.startswith("ccfactory.verify.") and b.startswith("ccfactory.roles.")}
    from ccfactory.verify import node_checks

    assert [m.__name__ for m in node_checks.LOADED] == stage_checks_in_report_order(stage_checks)


def stage_checks_in_report_order(names):
    from ccfactory.verify.report import STAGE_ORDER

    return [n for s in STAGE_ORDER for n in names if n == f"ccfactory.roles.{s}.checks"]


def test_config_assembles_host_data_from_the_stages_options_below_it():
    edges = import_graph()
    for stage in ("firmware", "gpu", "kbs", "runtime"):
        assert ("ccfactory.config", f"ccfactory.roles.{stage}.options") in edges
        assert layer(f"ccfactory.roles.{stage}.options")[0] == BELOW
        assert not {b for a, b in edges if a == f"ccfactory.roles.{stage}.options" and layer(b)[0] < BELOW}
