"""Unit tests never depend on a lab running on this machine: the lab gate's probe
(``ccfactory.lab.proof``) is a stand-in that knows no lab until a test stands one in
(``live_lab`` fixture, or ``lab_standin.stand_in_lab``). Tests of the real probe install it
themselves (``tests/unit/test_lab_gate.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_live_lab_unless_stood_in():
    from ccfactory.lab import proof
    from lab_standin import StandInProbe

    previous = proof.set_probe(StandInProbe())
    yield
    proof.set_probe(previous)
