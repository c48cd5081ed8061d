"""Runs last (file order): `lab down` leaves no process, mount, namespace or link behind."""

from __future__ import annotations

import pytest

from ccfactory.lab import manager

pytestmark = pytest.mark.lab


def test_down_leaves_nothing_behind(lab):
    manager.down(lab_dir=lab.dir)
    assert manager.leftovers(lab.dir) == []
    st = manager.status(lab_dir=lab.dir)
    assert not st["up"] and not st["apt_proxy"]["running"]
    assert all(n["power"] == "Off" and n["supervisor_pid"] is None for n in st["nodes"])
