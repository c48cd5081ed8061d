"""Per-BMC credentials: random, stored 0600 in the lab directory, never logged.

``credentials.json`` holds the plaintext the controller needs (it plays the operator
who knows the BMC password); ``htpasswd`` holds the bcrypt hash the emulator checks
(sushy-tools' Basic-auth file format). Nothing here prints a password; errors name
the file, never its content.

Example::

    >>> path = ensure_credentials(lab_dir, "node1", "root")
    >>> user, password = read_credentials(lab_dir, "node1")
"""

from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path

from ccfactory.lab.bmc.spec import node_dir
from ccfactory.lab.errors import LabError

PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 20
# bcrypt cost for the emulator's Basic-auth file: lab-only, kept low so that 100 BMCs on
# 2 cores can verify a password per request (~1 ms); the plaintext sits next to it anyway.
BCRYPT_ROUNDS = 4


def credentials_path(lab_dir: Path, node: str) -> Path:
    return node_dir(lab_dir, node) / "credentials.json"


def htpasswd_path(lab_dir: Path, node: str) -> Path:
    return node_dir(lab_dir, node) / "htpasswd"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_credentials(lab_dir: Path, node: str) -> tuple[str, str]:
    """(username, password) of a BMC; ``LabError`` (naming only the file) if unreadable.

    Example: ``sushy.auth.BasicAuth(*read_credentials(lab_dir, "node1"))``
    """
    path = credentials_path(lab_dir, node)
    try:
        data = json.loads(path.read_text())
        return str(data["username"]), str(data["password"])
    except FileNotFoundError:
        raise LabError(f"no BMC credentials for {node!r} at {path}: start the BMC first") from None
    except (ValueError, KeyError, TypeError):
        raise LabError(f"unreadable BMC credentials file {path}; delete it to generate new ones") from None


def ensure_credentials(lab_dir: Path, node: str, username: str) -> Path:
    """Create random credentials once (idempotent) and the matching htpasswd; returns the 0600 file.

    Example: ``ensure_credentials(lab_dir, "node1", "root")`` -> ``<lab>/bmc/node1/credentials.json``
    """
    path = credentials_path(lab_dir, node)
    if path.is_file():
        user, password = read_credentials(lab_dir, node)
    else:
        user = username
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))
        _write_private(path, json.dumps({"username": user, "password": password}, indent=1) + "\n")
    _ensure_htpasswd(lab_dir, node, user, password)
    os.chmod(path, 0o600)
    return path


def _ensure_htpasswd(lab_dir: Path, node: str, user: str, password: str) -> None:
    import bcrypt  # sushy-tools' dependency; only needed where BMCs are set up

    path = htpasswd_path(lab_dir, node)
    try:
        line = path.read_text().strip()
        name, digest = line.split(":", 1)
        if name == user and bcrypt.checkpw(password.encode(), digest.encode()):
            return
    except (FileNotFoundError, ValueError):
        pass
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    _write_private(path, f"{user}:{digest}\n")
