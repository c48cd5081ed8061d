"""Shared test fixtures."""

from __future__ import annotations

# pyinfra_cli monkey-patches gevent on import; patching after ssl is imported breaks
# every TLS handshake (RecursionError). The pyinfra CLI imports it first: so do we.
import pyinfra_cli  # noqa: F401,E402  isort: skip

from pathlib import Path

import pytest

from ccfactory.lab.hooks import install_lab_hooks
from support import REPO

# The test program is an entry point that runs lab hosts: it installs the lab's hooks as
# ccfactory.inventory does (tests/unit/test_lab_gate.py proves lab = true is refused without them).
install_lab_hooks()


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def live_lab():
    """Stand running labs in for the lab gate (``ccfactory.lab.proof``), without root or a lab:
    ``live_lab(lab_dir, {"node1": "10.199.0.11"}, bmcs={"node1": "10.199.1.11"}, ca=ca_pem)``
    makes hosts of that lab directory pass the gate; any other directory still has no lab. The
    previous probe is restored afterwards."""
    from ccfactory.lab import proof
    from lab_standin import StandInProbe, stand_in

    probe = StandInProbe()
    previous = proof.set_probe(probe)

    def install(lab_dir, nodes, *, bmcs=None, ca=None):
        return probe.add(stand_in(lab_dir, nodes, bmcs=bmcs, ca=ca))

    install.probe = probe
    yield install
    proof.set_probe(previous)
