"""The wheel layout: roles/ and templates/ ship inside ccfactory; nothing is left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _declared():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(tool["packages"]), tool["package-dir"]


def test_every_python_package_is_declared():
    # setuptools cannot auto-discover packages through package-dir remaps (pypa/setuptools#4248)
    declared, dirs = _declared()
    found = set()
    for prefix, root in (("ccfactory.roles", "roles"), ("ccfactory.templates", "templates")):
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root).parts
            found.add(".".join((prefix, *rel)))
    for init in (REPO / "src" / "ccfactory").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(REPO / "src").parts))
    assert found - declared == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert dirs["ccfactory.roles"] == "roles" and dirs["ccfactory.templates"] == "templates"


def test_top_level_roles_import_is_refused():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import roles"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "import ccfactory.roles" in result.stderr


def test_templates_resolve_through_package_resources():
    from importlib import resources

    header = resources.files("ccfactory.templates").joinpath("_managed_header.j2")
    assert header.is_file()


def test_readme_options_match_the_model():
    from ccfactory.docs import update_readme

    assert update_readme(REPO / "README.md", check=True) is False, "run `ccfactory docs` to regenerate the README"
