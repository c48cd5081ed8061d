# The tables below (GPU_NAME_BY_DEVID, GPU_DEVID_CHIPS) are copied from NVIDIA gpu-admin-tools
# v2025.10.20 gpu/devid_names.py and gpu/devid_chips.py, under this notice:
#
# SPDX-FileCopyrightText: Copyright (c) 2024-2025 NVIDIA CORPORATION & AFFILIATES. All rights reserved.
# SPDX-License-Identifier: MIT
#
# Permission is hereby granted, free of charge, to any person obtaining a
# copy of this software and associated documentation files (the "Software"),
# to deal in the Software without restriction, including without limitation
# the rights to use, copy, modify, merge, publish, distribute, sublicense,
# and/or sell copies of the Software, and to permit persons to whom the
# Software is furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in
# all copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL
# THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
# FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
# DEALINGS IN THE SOFTWARE.
#
"""Device names and chips, as the real tool derives them (ccfactory lab stand-in).

Tables copied from NVIDIA gpu-admin-tools v2025.10.20 (commit 82422cc1811c):
``GPU_NAME_BY_DEVID`` is ``gpu/devid_names.py`` (as a dict literal, a repeated key keeps
its last value: 0x2342 is ``GH200``), ``GPU_DEVID_CHIPS`` is ``gpu/devid_chips.py``.
The naming follows ``Gpu.__init__`` in ``nvidia_gpu_tools.py:3307-3323,3405-3407``:
the chip from the device-id ranges (and 0x22f0-0x237f is Hopper GH100), the default name
``Generic-<CHIP>``, replaced by the name table when the device id is in it.

The real tool names a GPU outside these ranges, and every NVSwitch, from its BOOT_0
register (``GPU_MAP``/``NVSWITCH_MAP``). The lab has no registers: NVSwitches are named
by PCI device id from ``NVSWITCH_BY_DEVID`` below, and any other device is refused
(``gpu_identity``/``nvswitch_identity`` raise ``KeyError``).
"""

GPU_NAME_BY_DEVID = {
    0x27B6: 'L2',
    0x27B8: 'L4',
    0x26B7: 'L20',
    0x26BA: 'L20',
    0x26B5: 'L40',
    0x26B9: 'L40S',
    0x26B8: 'L40G',
    0x2313: 'H100',
    0x2321: 'H100',
    0x2330: 'H100',
    0x2331: 'H100',
    0x2336: 'H100',
    0x2337: 'H100',
    0x2338: 'H100',
    0x2339: 'H100',
    0x233D: 'H100',
    0x2335: 'H200',
    0x233B: 'H200',
    0x2342: 'GH200',
    0x2343: 'GH200',
    0x2345: 'GH200',
    0x2348: 'GH200',
    0x2322: 'H800',
    0x2324: 'H800',
    0x233A: 'H800',
    0x2328: 'H20',
    0x2329: 'H20',
    0x2309: 'H20',
    0x230C: 'H20',
    0x230E: 'H20',
    0x232C: 'H20',
    0x2901: 'B200',
    0x2941: 'GB200',
}

# (first, last, arch, chip): gpu/devid_chips.py GPU_DEVID_CHIPS
GPU_DEVID_CHIPS = [
    (0x2900, 0x297F, 'blackwell', 'gb100'),
    (0x2980, 0x29FF, 'blackwell', 'gb102'),
    (0x3180, 0x31FF, 'blackwell', 'gb110'),
    (0x3200, 0x327F, 'blackwell', 'gb112'),
    (0x2B80, 0x2BFF, 'blackwell', 'gb202'),
    (0x2C00, 0x2C7F, 'blackwell', 'gb203'),
    (0x2F00, 0x2F7F, 'blackwell', 'gb205'),
    (0x2D00, 0x2D7F, 'blackwell', 'gb206'),
    (0x2D80, 0x2DFF, 'blackwell', 'gb207'),
]

# NVSwitches by PCI device id (the real tool: NVSWITCH_MAP by BOOT_0, nvidia_gpu_tools.py:51-79,
# names "LR10"/limerock and "NVSwitch_gen3"/laguna). 0x22a3 is the HGX H100/H200 NVSwitch: a
# public log line prints "NvSwitch 0000:07:00.0 NVSwitch_gen3 0x22a3" (see docs/gpu.md).
NVSWITCH_BY_DEVID = {
    0x1AF1: ("LR10", "limerock"),
    0x22A3: ("NVSwitch_gen3", "laguna"),
}


def get_chip_family(devid):
    """gpu/properties.py GpuProperties.get_chip_family: (arch, chip) or (None, None)."""
    for devid_low, devid_high, arch, chip in GPU_DEVID_CHIPS:
        if devid >= devid_low and devid <= devid_high:
            return arch, chip
    return None, None


def gpu_identity(devid):
    """(name, arch) of a GPU by PCI device id, as Gpu.__init__ names it; KeyError if the
    real tool would need BOOT_0 (not simulated)."""
    arch, chip = get_chip_family(devid)
    if arch is None and 0x22F0 <= devid < 0x2380:
        arch, chip = "hopper", "gh100"
    if arch is None:
        raise KeyError(devid)
    return GPU_NAME_BY_DEVID.get(devid, "Generic-%s" % chip.upper()), arch


def nvswitch_identity(devid):
    """(name, arch) of an NVSwitch by PCI device id; KeyError when unknown."""
    return NVSWITCH_BY_DEVID[devid]
