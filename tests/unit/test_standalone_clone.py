"""The repository stands alone (issue 16, item 4): a clone in an empty directory, with no
``../shared`` or anything else beside it, imports its own code and passes unit tests that read
the recordings, fixtures, templates and data the repository ships.

The clone gets its own virtualenv with ccfactory installed editable from the clone (pip's
build backend comes from the package index, as in ``scripts/bootstrap.sh``); the dependencies
come from this run's environment (a path entry, not an install). The full unit suite in the clone is what CI's fresh clone runs; here a subset that
touches every kind of file the tests read keeps it to about a minute."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# tests that read fixtures (Redfish captures, NVIDIA recordings, distro outputs, golden scripts),
# shipped data and templates, and the import graph of every module
SUBSET = [
    "tests/unit/test_layering.py",
    "tests/unit/test_templates_overlay.py",
    "tests/unit/test_firmware_forecast.py",
    "tests/unit/test_rhel_host.py",
    "tests/unit/test_attestation_templates.py",
    "tests/unit/test_reboot_once.py",
]


@pytest.mark.slow
def test_a_clone_in_an_empty_directory_imports_its_own_code_and_passes_its_tests(tmp_path):
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.fail("the repository under test must be a git checkout with git installed (the README's setup)")
    work = tmp_path / "empty" / "anywhere"
    work.mkdir(parents=True)
    clone = work / "ccf-clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    missing = [t for t in SUBSET if not (clone / t).is_file()]
    assert not missing, f"not committed, so not in a clone: {missing}"

    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    clone_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    # this run's dependencies as a plain path entry: its .pth files (our own editable finder) do not run
    (clone_site / "zz-deps-of-the-test-run.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                              "--disable-pip-version-check", "-e", str(clone)], timeout=600, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    where = subprocess.run(
        [str(py), "-c", "import ccfactory, ccfactory.roles, ccfactory.templates; "
         "print(ccfactory.__file__); print(list(ccfactory.roles.__path__)[0]); print(list(ccfactory.templates.__path__)[0])"],
        cwd=work, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).resolve().is_relative_to(clone) for p in where), f"imported from outside the clone: {where}"

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | {"PYINFRA_PROGRESS": "off"}
    run = subprocess.run([str(py), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *SUBSET],
                         cwd=clone, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-1000:]
