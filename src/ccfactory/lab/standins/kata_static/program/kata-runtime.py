#!/usr/bin/python3
"""kata-runtime -- ccfactory LAB STAND-IN, not Kata Containers' kata-runtime.

Keeps the real command line and output formats (src/runtime/cmd/kata-runtime):

    kata-runtime --version | version          kata-runtime  : <version> / commit / OCI specs
    kata-runtime [--config PATH] env [--json] the effective configuration, as TOML (or JSON)
    kata-runtime [--config PATH] check        "System is capable of running Kata Containers"

Configuration like the Go runtime (katautils/config.go decodeConfig + decodeDropIns): the
file given (or the first default path that exists), then every file of ``config.d/`` next
to it, in name order, each updating only the keys it sets.
"""

import json
import os
import sys
import tomllib

VERSION = "@VERSION@"
COMMIT = "@COMMIT@"
OCI_SPECS = "1.2.1"
NAME = "kata-runtime"
PREFIX = "/opt/kata"
DEFAULT_CONFIGS = (
    "/etc/kata-containers/configuration.toml",
    PREFIX + "/share/defaults/kata-containers/configuration.toml",
)


def version_string():
    return "\n".join([f"{NAME}  : {VERSION}", f"   commit   : {COMMIT}", f"   OCI specs: {OCI_SPECS}"])


def merge(base, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def resolve(path):
    if path:
        if not os.path.exists(path):
            raise SystemExit(f"Cannot find usable config file (open {path}: no such file or directory)")
        return os.path.realpath(path)
    for candidate in DEFAULT_CONFIGS:
        if os.path.exists(candidate):
            return os.path.realpath(candidate)
    raise SystemExit(f"Cannot find usable config file (config file not found: {', '.join(DEFAULT_CONFIGS)})")


def load(path):
    resolved = resolve(path)
    with open(resolved, "rb") as f:
        config = tomllib.load(f)
    dropins = []
    drop_dir = os.path.join(os.path.dirname(resolved), "config.d")
    if os.path.isdir(drop_dir):
        for name in sorted(os.listdir(drop_dir)):
            file = os.path.join(drop_dir, name)
            try:
                with open(file, "rb") as f:
                    merge(config, tomllib.load(f))
            except tomllib.TOMLDecodeError as exc:
                raise SystemExit(f"error reading file {file!r}: {exc}")
            dropins.append(file)
    return resolved, dropins, config


def qemu(config):
    return config.get("hypervisor", {}).get("qemu", {})


def env(path, as_json):
    resolved, dropins, config = load(path)
    hv = qemu(config)
    agent = config.get("agent", {}).get("kata", {})
    rt = config.get("runtime", {})
    data = {
        "Kernel": {"Path": hv.get("kernel", ""), "Parameters": hv.get("kernel_params", "")},
        "Meta": {"Version": "1.0.27"},
        "Image": {"Path": hv.get("image", "")},
        "Initrd": {"Path": hv.get("initrd", "")},
        "Hypervisor": {
            "MachineType": hv.get("machine_type", ""),
            "Version": "QEMU emulator version 10.1.0 (kata-static, ccfactory lab stand-in)",
            "Path": hv.get("path", ""),
            "BlockDeviceDriver": hv.get("block_device_driver", ""),
            "EntropySource": hv.get("entropy_source", ""),
            "SharedFS": hv.get("shared_fs", ""),
            "VirtioFSDaemon": hv.get("virtio_fs_daemon", ""),
            "SocketPath": "",
            "Msize9p": hv.get("msize_9p", 0),
            "MemorySlots": hv.get("memory_slots", 0),
            "HotPlugVFIO": hv.get("hot_plug_vfio", "no-port"),
            "ColdPlugVFIO": hv.get("cold_plug_vfio", "no-port"),
            "Debug": hv.get("enable_debug", False),
            "ConfidentialGuest": hv.get("confidential_guest", False),
            "SevSnpGuest": hv.get("sev_snp_guest", False),
            "SnpGuestPolicy": hv.get("snp_guest_policy", 0),
            "Firmware": hv.get("firmware", ""),
            "DefaultVCPUs": hv.get("default_vcpus", 0),
            "DefaultMemory": hv.get("default_memory", 0),
            "EnableAnnotations": hv.get("enable_annotations", []),
        },
        "Runtime": {
            "Path": os.path.realpath(sys.argv[0]),
            "GuestSeLinuxLabel": "",
            "Experimental": rt.get("experimental", []),
            "Debug": rt.get("enable_debug", False),
            "Trace": False,
            "DisableGuestSeccomp": rt.get("disable_guest_seccomp", True),
            "DisableNewNetNs": rt.get("disable_new_netns", False),
            "SandboxCgroupOnly": rt.get("sandbox_cgroup_only", False),
            "CreateContainerTimeout": rt.get("create_container_timeout", 0),
            "Config": {"Path": resolved, "DropIns": dropins},
            "Version": {"OCI": OCI_SPECS, "Version": {"Semver": VERSION, "Commit": COMMIT}},
        },
        "Agent": {"Debug": agent.get("enable_debug", False), "Trace": False, "DialTimeout": agent.get("dial_timeout", 0)},
        "Host": {"Kernel": os.uname().release, "Architecture": "amd64", "VMContainerCapable": False},
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(toml_text(data))
    return 0


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def toml_text(data, prefix=""):
    lines = []
    for section, body in data.items():
        name = f"{prefix}{section}"
        lines.append(f"[{name}]")
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        for key, value in body.items():
            if not isinstance(value, dict):
                lines.append(f"  {key} = {toml_value(value)}")
        for key, value in nested.items():
            lines.append("  " + toml_text({key: value}, prefix=name + ".").replace("\n", "\n  "))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def check(path):
    _, _, config = load(path)
    hv = qemu(config)
    problems = []
    if hv.get("confidential_guest"):
        if hv.get("sev_snp_guest"):
            if read("/sys/module/kvm_amd/parameters/sev_snp") not in ("Y", "1"):
                problems.append("SEV-SNP is not enabled in kvm_amd (sev_snp=Y needed)")
        elif "tdx" in hv.get("path", "") or "inteltdx" in hv.get("firmware", ""):
            if read("/sys/module/kvm_intel/parameters/tdx") not in ("Y", "1"):
                problems.append("TDX is not enabled in kvm_intel (tdx=Y needed)")
    for key in ("path", "kernel", "image", "firmware"):
        file = hv.get(key)
        if file and not os.path.exists(file):
            problems.append(f"{key} {file} does not exist")
    if problems:
        for p in problems:
            print(f'ERRO[0000] {p}                           arch=amd64 name=kata-runtime pid={os.getpid()} source=runtime', file=sys.stderr)
        print("ERRO[0000] System is not capable of running Kata Containers", file=sys.stderr)
        return 1
    print("System is capable of running Kata Containers")
    print("System can currently create Kata Containers")
    return 0


def main(argv):
    config_path = None
    args = list(argv)
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("--version", "-v"):
            print(version_string())
            return 0
        if flag in ("--config", "--kata-config"):
            config_path = args.pop(0) if args else None
        elif flag.startswith(("--config=", "--kata-config=")):
            config_path = flag.split("=", 1)[1]
        elif flag in ("--show-default-config-paths", "--kata-show-default-config-paths"):
            print("\n".join(DEFAULT_CONFIGS))
            return 0
        elif flag in ("-h", "--help"):
            print(__doc__)
            return 0
    command = args.pop(0) if args else "help"
    if command == "version":
        print(version_string())
        return 0
    if command in ("env", "kata-env"):
        return env(config_path, "--json" in args)
    if command in ("check", "kata-check"):
        return check(config_path)
    print(f"{NAME}: '{command}' is not a command supported by the ccfactory lab stand-in", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
