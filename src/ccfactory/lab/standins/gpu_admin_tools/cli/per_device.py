"""Actions on any selected device, run first for each device (the real tool's
``cli/per_device.py:26-47`` at v2025.10.20: unbind, bind, then reset)."""


def main_per_device(device, opts):
    if opts.sysfs_unbind:
        device.sysfs_unbind()

    if opts.sysfs_bind:
        device.sysfs_bind(opts.sysfs_bind)

    if opts.reset_with_os:
        device.reset_with_os()

    return True
