"""Role ``preflight``: check that each node is one ccfactory can manage, change nothing.

Reads the node's OS facts once and fails the host (alone) with an actionable message
when its distribution is unsupported. Every stage deploy runs it first.

Example (deploy file)::

    from ccfactory.roles import preflight
    preflight.apply()
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from ccfactory.config import node_config
from ccfactory.distros import distro_for, supported_list
from ccfactory.facts.node import NodeOs
from ccfactory.operations.checks import requirement


@deploy("Preflight")
def apply() -> None:
    cfg = node_config(host)
    info = host.get_fact(NodeOs)
    requirement(
        name="Supported distribution",
        satisfied=distro_for(info.os_id, info.os_version) is not None,
        problem=(
            f"{info.os_id or 'unknown OS'} {info.os_version} is not supported "
            f"(supported: {supported_list()}); reinstall the node with a supported release"
        ),
    )
    if cfg.lab:
        return  # lab nodes are containers on a shared kernel by design
    requirement(
        name="Bare metal",
        satisfied=info.virtualization in ("none", ""),
        problem=(
            f"the node runs under {info.virtualization}; a TEE host must be bare metal "
            "(only `ccfactory lab` nodes may be containers)"
        ),
    )
