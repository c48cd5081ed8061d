"""Shared test fixtures."""

from __future__ import annotations

# pyinfra_cli monkey-patches gevent on import; patching after ssl is imported breaks
# every TLS handshake (RecursionError). The pyinfra CLI imports it first: so do we.
import pyinfra_cli  # noqa: F401,E402  isort: skip

from pathlib import Path

import pytest

from support import REPO


@pytest.fixture
def repo() -> Path:
    return REPO
