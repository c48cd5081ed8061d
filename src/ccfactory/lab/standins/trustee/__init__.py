"""The lab's Trustee stand-in as a BOM artifact (``trustee``), for the lab artifact server.

The program (``program/``: ``ccflab_trustee/app.py``) plus copies of ccfactory's
standard-library-and-cryptography modules it shares with the controller
(``ccfactory.kbs.jose``, ``.policy``, ``.schema``) are packed with the layout the KBS
stage installs::

    trustee-<version>/bin/kbs                     the `kbs` command (python3 script)
    trustee-<version>/lib/ccflab_trustee/*.py     the stand-in
    trustee-<version>/README.md

On a node it needs ``python3`` (3.11: ``tomllib``) and ``python3-cryptography`` (Debian
12 ships 38.0.4); the KBS role installs that package on lab nodes only. The program
directories carry no ``__init__.py`` in the repository (they are not ccfactory modules);
the tarball gets them.

Register with the lab artifact server (``ccfactory.lab.artifacts.standins()``)::

    from ccfactory.lab.standins.trustee import standin as trustee_standin
    return (_gpu_admin_tools(), trustee_standin())

Example::

    >>> files = program_files()
    >>> sorted(f for f in files if f.startswith("bin/"))
    ['bin/kbs']
    >>> "lib/ccflab_trustee/policy.py" in files
    True
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

ARTIFACT = "trustee"  # the BOM artifact it replaces
VERSION = "v0.21.0-ccfactory-lab.1"
TOP_DIR = f"trustee-{VERSION}"
FILENAME = f"{TOP_DIR}.tar.gz"
ENTRY = "bin/kbs"
NOTE = "lab only: Trustee KBS v0.21.0 config/CLI/protocol; sample evidence only; policy evaluator is not OPA"

SHARED_MODULES = ("jose", "policy", "schema")  # ccfactory.kbs modules the stand-in uses as is
INIT_TEXT = b"# Part of ccfactory's lab Trustee stand-in (see README.md). Not Trustee's code.\n"

KBS_SCRIPT = '''#!/usr/bin/python3
"""kbs: Trustee Key Broker Service -- ccfactory LAB STAND-IN, not Trustee (see ../README.md)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib"))
from ccflab_trustee.app import main  # noqa: E402

sys.exit(main())
'''

README = f"""\
# Trustee KBS (ccfactory lab stand-in {VERSION})

This is NOT Trustee. It stands in for Trustee v0.21.0's `kbs` binary (built-in attestation
service) on ccfactory lab nodes, which have no TEE. It keeps the command line
(`kbs --config-file /etc/trustee/kbs-config.toml`, env `KBS_CONFIG_FILE`), the config file
schema (unknown keys refused), HTTPS, the KBS protocol 0.4.0 endpoints (`/kbs/v0/auth`,
`/attest`, `/resource/<repo>/<type>/<tag>`), the admin endpoints and the admin
authentication (`[admin] authorization_mode = "AuthenticatedAuthorization"`, bearer JWT,
regex ACL), and the error JSON (`.../errors/PolicyDeny`, 403).

Limits, on purpose:

* only `sample` evidence is verified; snp, tdx and device evidence are refused: the
  stand-in cannot verify hardware evidence;
* the resource policy is evaluated by a small evaluator for the policies ccfactory
  renders and upstream allow_all/deny_all: it is NOT OPA, any other Rego is refused;
* storage: `LocalFs` (one file per key) or `Memory`; attestation service: built-in only.

Needs python3 >= 3.11 and python3-cryptography (>= 38).
"""


def _program_root():
    return resources.files(__name__).joinpath("program")


def program_files() -> dict[str, bytes]:
    """``relative path -> content`` of the stand-in, as it ships (deterministic)."""
    files: dict[str, bytes] = {ENTRY: KBS_SCRIPT.encode(), "README.md": README.encode()}
    package = _program_root().joinpath("ccflab_trustee")
    for child in sorted(package.iterdir(), key=lambda c: c.name):
        if child.name.endswith(".py"):
            files[f"lib/ccflab_trustee/{child.name}"] = child.read_bytes()
    kbs = resources.files("ccfactory.kbs")
    for name in SHARED_MODULES:
        files[f"lib/ccflab_trustee/{name}.py"] = kbs.joinpath(f"{name}.py").read_bytes()
    files["lib/ccflab_trustee/__init__.py"] = INIT_TEXT
    return dict(sorted(files.items()))


def standin():
    """The ``StandIn`` entry for ``ccfactory.lab.artifacts.standins()``."""
    from ccfactory.lab.artifacts import StandIn

    return StandIn(
        name=ARTIFACT,
        version=VERSION,
        filename=FILENAME,
        top_dir=TOP_DIR,
        files=program_files,
        executables=frozenset({ENTRY}),
        note=NOTE,
    )


def tarball_bytes() -> bytes:
    """The deterministic tarball (same sources, same bytes)."""
    from ccfactory.lab.artifacts import tarball_bytes as pack

    return pack(standin())


def build_trustee_standin(dest_dir: str | os.PathLike) -> Path:
    """Write ``<dest_dir>/trustee-<version>.tar.gz`` (rewritten only if different); its path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / FILENAME
    data = tarball_bytes()
    if not (target.is_file() and target.read_bytes() == data):
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        tmp.replace(target)
    return target


def install_tree(dest: str | os.PathLike) -> Path:
    """Lay the stand-in out in ``dest`` as the tarball would (tests); returns ``dest/bin/kbs``."""
    root = Path(dest)
    for rel, data in program_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel == ENTRY else 0o644)
    return root / ENTRY
