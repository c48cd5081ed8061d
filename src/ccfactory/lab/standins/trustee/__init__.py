"""The lab's Trustee stand-in: its program files, packed into the lab registry's image.

The program (``program/ccflab_trustee/*.py``; ``upstream_policies.py`` holds Trustee v0.21.0's
default Rego texts verbatim, with their git blob ids) imports nothing from ccfactory. It evaluates Rego with the ``regorus`` Python module, which is packed from
the controller's installed distribution (PyPI ``celine-regorus``, a build of
microsoft/regorus) so the image needs no pip. ``program_files()`` is the tree that
``ccfactory.lab.registry`` lays under ``/opt/ccflab-trustee`` in the image (``/usr/local/bin/kbs``
links to ``bin/kbs``, where upstream's image has its binary)::

    bin/kbs                              the `kbs` command (python3 script)
    lib/ccflab_trustee/*.py              the stand-in
    lib/regorus/...                      the regorus module (abi3, CPython >= 3.8)
    README.md

It needs ``python3`` (3.11: ``tomllib``) and ``python3-cryptography`` (Debian 12 ships
38.0.4), both in the image. The contract with upstream (behaviour, citation, test) is
``docs/trustee-standin.md``.

Example::

    >>> files = program_files()
    >>> sorted(f for f in files if f.startswith("bin/"))
    ['bin/kbs']
    >>> "lib/ccflab_trustee/app.py" in files and "lib/regorus/__init__.py" in files
    True
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from importlib import resources
from pathlib import Path

VERSION = "v0.21.0-ccfactory-lab.2"  # also the image's tag in the lab registry
ENTRY = "bin/kbs"

REGORUS_DISTRIBUTION = "celine-regorus"
INIT_TEXT = b"# Part of ccfactory's lab Trustee stand-in (see README.md). Not Trustee's code.\n"

KBS_SCRIPT = '''#!/usr/bin/python3
"""kbs: Trustee Key Broker Service -- ccfactory LAB STAND-IN, not Trustee (see ../README.md)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib"))
from ccflab_trustee.app import main  # noqa: E402

sys.exit(main())
'''


def _regorus_metadata() -> tuple[str, str]:
    try:
        dist = importlib.metadata.distribution(REGORUS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown", "unknown"
    return dist.version, dist.metadata.get("License") or "unknown"


def readme() -> str:
    version, licence = _regorus_metadata()
    return f"""\
# Trustee KBS (ccfactory lab stand-in {VERSION})

This is NOT Trustee. It stands in for Trustee v0.21.0's `kbs` binary (built-in attestation
service, commit 258ea4acb7b9bd865fce5c63a539f2120dba8298) on ccfactory lab nodes, which have
no TEE. Its behaviour is rewritten from Trustee's source; ccfactory's docs/trustee-standin.md
lists each behaviour with the upstream file:line and the test that checks it.

* command line `kbs -c|--config-file FILE` (env `KBS_CONFIG_FILE`); TOML config read as
  serde reads it: unknown keys refused only in the `[admin]` tree (deny_unknown_fields);
* HTTPS with `[http_server] private_key`/`certificate` (plain HTTP with `insecure_http`);
* KBS protocol 0.4.0 (`/kbs/v0/auth`, `/attest`, `/resource/<repo>/<type>/<tag>`), the admin
  endpoints (`resource-policy`, `attestation-policy`, `reference-value`, resource POST/DELETE)
  with `[admin]` authentication, `/healthz`;
* errors as `ErrorInformation` JSON: 404 for InvalidRequestPath/PluginNotFound, 401 otherwise;
* resource and attestation policies are evaluated by regorus (Rego v1), with the input and
  data Trustee builds; the built-in AS issues EAR tokens signed with the configured key.

Limits, on purpose: only `sample` evidence can be verified (snp, tdx and every other TEE
fail verification: no hardware here); no additional (device) evidence; storage Memory or
LocalFs; RVPS `sample` messages only; no remote (https) key or JWKS URIs; no metrics.

Contents not written by ccfactory:

* `lib/ccflab_trustee/upstream_policies.py`: the texts of Trustee v0.21.0's
  `kbs/sample_policies/default.rego` and `attestation-service/src/ear_token/ear_default_policy_*.rego`,
  verbatim (Apache-2.0, https://github.com/confidential-containers/trustee).
* `lib/regorus/`: the `regorus` Python module from PyPI package `{REGORUS_DISTRIBUTION}`
  {version} (a build of https://github.com/microsoft/regorus; licence: {licence}), copied
  from the controller's installed distribution.

Needs python3 >= 3.11 and python3-cryptography (>= 38).
"""


def _program_root():
    return resources.files(__name__).joinpath("program")


def regorus_files() -> dict[str, bytes]:
    """``lib/regorus/<file>`` for every file of the installed ``regorus`` package (no caches)."""
    spec = importlib.util.find_spec("regorus")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the regorus module is not installed on the controller (pip install {REGORUS_DISTRIBUTION})")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"lib/regorus/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return files


def program_files() -> dict[str, bytes]:
    """``relative path -> content`` of the stand-in, as it ships (deterministic)."""
    files: dict[str, bytes] = {ENTRY: KBS_SCRIPT.encode(), "README.md": readme().encode()}
    package = _program_root().joinpath("ccflab_trustee")
    for child in sorted(package.iterdir(), key=lambda c: c.name):
        if child.name.endswith(".py"):
            files[f"lib/ccflab_trustee/{child.name}"] = child.read_bytes()
    files["lib/ccflab_trustee/__init__.py"] = INIT_TEXT
    files.update(regorus_files())
    return dict(sorted(files.items()))


def install_tree(dest: str | os.PathLike) -> Path:
    """Lay the stand-in out in ``dest`` as the image has it (tests); returns ``dest/bin/kbs``."""
    root = Path(dest)
    for rel, data in program_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel == ENTRY or rel.endswith(".so") else 0o644)
    return root / ENTRY
