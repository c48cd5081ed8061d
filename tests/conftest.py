"""Shared test paths."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Real recordings (nvidia-smi from an H100, vendor Redfish payloads) live beside the checkout.
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture
def repo() -> Path:
    return REPO
