#!/bin/sh
# containerd-shim-kata-v2 -- ccfactory LAB STAND-IN, not Kata Containers (see ../../README.md).
# The lab has no TEE and no KVM: this shim starts no VM. It hands the task to containerd's
# runc shim, so containers started through the Kata handler really run (as plain runc
# containers) and containerd's shim protocol is exercised end to end.
#
# When containerd starts a sandbox (`... -id ID start`), the shim logs to syslog (tag kata) the
# QEMU command line the real runtime would launch for its configuration, in the runtime's own
# format (kata-runtime ccfactory-lab-launch; kata-containers@4.1.0 govmm/qemu/qemu.go:3591).
# The shim name comes from the name containerd invoked (containerd-shim-kata-<shim>-v2), its
# configuration from kata-deploy's per-shim copy, else the shipped defaults.
last=""; id=""; prev=""
for arg in "$@"; do
    [ "$prev" = "-id" ] && id="$arg"
    prev="$arg"; last="$arg"
done
if [ "$last" = "start" ] && [ -n "$id" ]; then
    name=$(basename "$0"); shim=${name#containerd-shim-kata-}; shim=${shim%-v2}
    defaults=/opt/kata/share/defaults/kata-containers
    config="$defaults/runtimes/$shim/configuration-$shim.toml"
    [ -f "$config" ] || config="$defaults/configuration-$shim.toml"
    [ -f "$config" ] || config="$defaults/configuration.toml"
    /opt/kata/bin/kata-runtime --config "$config" ccfactory-lab-launch "$id" >/dev/null 2>&1 || true
fi
for shim in containerd-shim-runc-v2 /usr/bin/containerd-shim-runc-v2 /usr/local/bin/containerd-shim-runc-v2; do
    if command -v "$shim" >/dev/null 2>&1; then
        exec "$shim" "$@"
    fi
done
echo "containerd-shim-kata-v2 (ccfactory lab stand-in): containerd-shim-runc-v2 not found" >&2
exit 1
