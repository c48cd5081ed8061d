"""The lab's side of ``ccfactory.labhooks``: its live-state proof and its CDH stand-in.

Entry points call ``install_lab_hooks()``; product code reaches the lab only through
``ccfactory.labhooks.installed()``.

Example::

    from ccfactory.lab.hooks import install_lab_hooks
    install_lab_hooks()
"""

from __future__ import annotations

from ccfactory import labhooks


def install_lab_hooks() -> None:
    from ccfactory.lab.proof import lab_host_problems
    from ccfactory.lab.standins.cdh import program_source

    labhooks.install(labhooks.LabHooks(prove_host=lab_host_problems, cdh_program=program_source))


__all__ = ["install_lab_hooks"]
