"""The examples in the parsers' docstrings run and stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "ccfactory.parsers.checks",
    "ccfactory.parsers.sections",
    "ccfactory.parsers.kernel",
    "ccfactory.parsers.tee",
    "ccfactory.parsers.pci",
    "ccfactory.parsers.gpuhost",
    "ccfactory.parsers.nvidia",
    "ccfactory.parsers.gpuadmin",
    "ccfactory.roles.host.kernels",
    "ccfactory.parsers.reboot_marker",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
