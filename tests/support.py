"""Paths shared by the tests (a module with a unique name: several conftest.py exist)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Real recordings (nvidia-smi from an H100/H200, vendor Redfish payloads) live beside the checkout.
FIXTURES = REPO.parent / "shared" / "fixtures"
