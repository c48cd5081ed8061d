"""The lab's BMC emulator: one Redfish endpoint per node, vendor personalities as data.

Built on OpenStack's sushy-tools 2.2.0 emulator (pinned: its fake driver and views are
extended, see ``emulator.py``). What the rest of the lab uses:

* ``ccfactory.lab.bmc.service``: ``start(lab_dir, [BmcSpec...])``, ``stop``, ``status``,
  ``credentials_file``, ``ca_bundle``, fault switches;
* ``ccfactory.lab.bmc.state.platform_features_for(lab_dir, node)``: the node's
  ``PlatformFeatures`` from the BIOS attributes applied at its last reset;
* ``ccfactory.lab.bmc.personalities/<vendor>.toml``: one file per vendor;
* ``ccfactory.lab.bmc.testing``: an in-process BMC for other test suites.

Example::

    >>> from ccfactory.lab.bmc import BmcSpec, platform_features_for
    >>> spec = BmcSpec.for_node("node1", 1, vendor="dell", tee="snp")
"""

from ccfactory.lab.bmc.spec import BmcSpec
from ccfactory.lab.bmc.state import platform_features_for

__all__ = ["BmcSpec", "platform_features_for"]
