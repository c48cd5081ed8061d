"""What product code may ask of the lab, without importing it.

The lab (``ccfactory.lab``) is an entry-level tool: product code (config, stages, checks) never
imports it. Two things of the lab are still needed by the product, both only for a host whose
data says ``lab = true``:

* proving that the host really is a node of a lab running on this controller, before any lab
  relaxation applies (``ccfactory.config``'s lab gate), and
* the source of the lab's CDH stand-in, which the attestation smoke check ships to a lab node
  (``ccfactory.verify.attestation``).

The entry points that may run lab hosts (``ccfactory.inventory``, which ``ccfactory.deploys``,
``ccfactory.cli`` and the verify plugin go through) install the lab's implementation
(``ccfactory.lab.hooks``). When nothing is installed, ``lab = true`` is refused: no proof, no
relaxation.

Example::

    from ccfactory import labhooks
    hooks = labhooks.installed()
    if hooks is None: ...  # lab relaxations are unavailable: refuse lab = true
    problems = hooks.prove_host("10.199.0.11", {"lab_dir": "/var/lib/ccfactory-lab", ...})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabHooks:
    # (host, its data) -> (field, message, fix) for every reason the host may not use the lab
    prove_host: Callable[[str, Mapping[str, Any]], list[tuple[str, str, str]]]
    # the lab CDH stand-in's program text (shipped to a proven lab node only)
    cdh_program: Callable[[], str]


_installed: LabHooks | None = None


def install(hooks: LabHooks) -> None:
    """Make the lab's implementation available (called by entry points, idempotent)."""
    global _installed
    _installed = hooks


def installed() -> LabHooks | None:
    """The lab's implementation, or None when no entry point installed it."""
    return _installed


__all__ = ["LabHooks", "install", "installed"]
