"""Device names and architectures the stand-in knows (the real tool reads BOOT_0 from the GPU).

Names follow the real tool's ``gpu/devid_names.py`` for these IDs (as summarised in
ccfactory's ``shared/reference/cc-stack.md`` §3.3); IDs without a name print as
``Generic-<CHIP>`` with the chip from the Blackwell ranges below.
"""

HOPPER_NAMES = {
    "H100": (0x2313, 0x2321, 0x2330, 0x2331, 0x2336, 0x2337, 0x2338, 0x2339, 0x233D),
    "H200": (0x2335, 0x233B),
    "GH200": (0x2342, 0x2343, 0x2345, 0x2348),
    "H800": (0x2322, 0x2324, 0x233A),
    "H20": (0x2309, 0x230C, 0x230E, 0x2328, 0x2329, 0x232C),
}
GPU_NAME_BY_DEVID = {devid: name for name, ids in HOPPER_NAMES.items() for devid in ids}

# (first, last, arch, chip): the real tool's gpu/devid_chips.py ranges for Blackwell
BLACKWELL_CHIPS = (
    (0x2900, 0x297F, "gb100"),
    (0x2980, 0x29FF, "gb102"),
    (0x3180, 0x31FF, "gb110"),
    (0x3200, 0x327F, "gb112"),
    (0x2B80, 0x2BFF, "gb202"),
    (0x2C00, 0x2C7F, "gb203"),
    (0x2F00, 0x2F7F, "gb205"),
    (0x2D00, 0x2D7F, "gb206"),
    (0x2D80, 0x2DFF, "gb207"),
)

# NVSwitches: the real tool identifies them by BOOT_0 (LR10 = limerock, NVSwitch_gen3 =
# laguna, the HGX Hopper switch). The lab has no registers, so the PCI device ID decides;
# 0x22a3 is the lab profile's (unconfirmed) HGX H100 NVSwitch ID.
NVSWITCH_BY_DEVID = {
    0x1AF1: ("LR10", "limerock"),
    0x22A3: ("NVSwitch_gen3", "laguna"),
}
DEFAULT_NVSWITCH = ("NVSwitch_gen3", "laguna")


def gpu_identity(devid):
    """(name, arch) of a GPU by PCI device ID; arch is ``hopper``, ``blackwell`` or ``unknown``."""
    if devid in GPU_NAME_BY_DEVID:
        return GPU_NAME_BY_DEVID[devid], "hopper"
    for first, last, chip in BLACKWELL_CHIPS:
        if first <= devid <= last:
            return "Generic-%s" % chip.upper(), "blackwell"
    return "Generic-%04x" % devid, "unknown"


def nvswitch_identity(devid):
    return NVSWITCH_BY_DEVID.get(devid, DEFAULT_NVSWITCH)
