"""Role packages: a submodule never shadows a name its package's ``__init__`` uses.

Importing ``ccfactory.roles.<stage>.<sub>`` sets the attribute ``<sub>`` on the package, which
*is* the ``__init__`` module's global of that name. A role whose ``__init__`` bound ``checks`` to
``ccfactory.operations.checks`` would, once the verify stage imported ``roles/<stage>/checks.py``,
call the stage's check module instead at deploy time. This test imports every submodule of every
role and proves each ``__init__`` global bound by an import still is what it imported.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROLES = Path(__file__).resolve().parents[2] / "roles"
STAGES = sorted(p.name for p in ROLES.iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("stage", STAGES)
def test_no_submodule_shadows_a_name_the_roles_init_imported(stage):
    package = importlib.import_module(f"ccfactory.roles.{stage}")
    tree = ast.parse((ROLES / stage / "__init__.py").read_text())
    bound = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                bound[alias.asname or alias.name] = (node.module, alias.name)
    before = {name: getattr(package, name) for name in bound if hasattr(package, name)}
    subs = sorted(p.stem for p in (ROLES / stage).glob("*.py") if p.stem != "__init__")
    for sub in subs:
        importlib.import_module(f"ccfactory.roles.{stage}.{sub}")
    changed = [name for name, value in before.items() if getattr(package, name) is not value]
    assert not changed, f"roles/{stage}: submodule(s) {changed} replaced what __init__ imported under that name"


@pytest.mark.parametrize("first", ["ccfactory.config", "ccfactory.roles.kbs", "ccfactory.roles.firmware.options", "ccfactory.deploys"])
def test_config_and_the_role_packages_import_in_any_order(first):
    """config imports each stage's options module, whose package __init__ imports config back:
    the role packages take no name from config at import time (``from ccfactory import config``),
    so whichever is imported first, in a fresh interpreter, both load."""
    import subprocess
    import sys

    probe = f"import pyinfra_cli\nimport {first}\nfrom ccfactory.config import HostData\nimport ccfactory.roles.runtime\nprint(len(HostData.model_fields))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 50


def test_the_inventory_entry_point_patches_gevent_before_anything_imports_ssl():
    """The verify pytest plugin imports ccfactory.inventory before pyinfra's inventory loader,
    and config pulls in the stages (requests, urllib3). gevent must patch first, or every later
    HTTPS handshake recurses: in a fresh interpreter, no MonkeyPatchWarning may be raised."""
    import subprocess
    import sys

    probe = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    import ccfactory.inventory\n"
        "    import pyinfra_cli\n"
        "late = [str(w.message)[:200] for w in seen if type(w.message).__name__ == 'MonkeyPatchWarning']\n"
        "assert not late, late\n"
        "import gevent.monkey\n"
        "assert gevent.monkey.is_module_patched('ssl')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
