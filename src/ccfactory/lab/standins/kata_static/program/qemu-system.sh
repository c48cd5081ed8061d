#!/bin/sh
# qemu-system-x86_64 -- ccfactory LAB STAND-IN, not QEMU. Answers --version; starts nothing.
case "$1" in
    --version|-version)
        echo "QEMU emulator version 10.1.0 (kata-static, ccfactory lab stand-in)"
        echo "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers"
        exit 0 ;;
esac
echo "qemu-system-x86_64 (ccfactory lab stand-in): the lab cannot start virtual machines" >&2
exit 1
