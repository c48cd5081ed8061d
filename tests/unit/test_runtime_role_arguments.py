"""The runtime role's keyword arguments (an OEM's code) against the inventory's settings: a
given argument wins, ``False`` and ``()`` included; only ``None`` means "the inventory's".
Issue 16: ``guest_pull or rt.guest_pull`` could never turn guest pull off."""

from __future__ import annotations

import inspect

from ccfactory.roles import runtime


def test_every_argument_defaults_to_the_inventory():
    params = inspect.signature(runtime.apply).parameters
    assert params, "apply takes keyword arguments"
    assert {name: p.default for name, p in params.items()} == dict.fromkeys(params), (
        "a default other than None would override the inventory's setting without the caller asking"
    )


def test_a_given_false_or_empty_argument_beats_the_inventory():
    assert runtime._given(False, True) is False  # guest_pull=False on a site whose inventory enables it
    assert runtime._given((), ("kata-qemu-snp",)) == ()
    assert runtime._given(0.0, 300.0) == 0.0
    assert runtime._given(None, True) is True
