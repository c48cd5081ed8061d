#!/bin/sh
# containerd-shim-kata-v2 -- ccfactory LAB STAND-IN, not Kata Containers (see ../../README.md).
# The lab has no TEE and no KVM: this shim starts no VM. It hands the task to containerd's
# runc shim, so containers started through the Kata handler really run (as plain runc
# containers) and containerd's shim protocol is exercised end to end.
for shim in containerd-shim-runc-v2 /usr/bin/containerd-shim-runc-v2 /usr/local/bin/containerd-shim-runc-v2; do
    if command -v "$shim" >/dev/null 2>&1; then
        exec "$shim" "$@"
    fi
done
echo "containerd-shim-kata-v2 (ccfactory lab stand-in): containerd-shim-runc-v2 not found" >&2
exit 1
