#!/usr/bin/python3
"""kata-runtime -- ccfactory LAB STAND-IN, not Kata Containers' kata-runtime.

Keeps the real command line and output formats (src/runtime/cmd/kata-runtime):

    kata-runtime --version | version          kata-runtime  : <version> / commit / OCI specs
    kata-runtime [--config PATH] env [--json] the effective configuration, as TOML (or JSON)
    kata-runtime [--config PATH] check        "System is capable of running Kata Containers"

Stand-in only (the shim calls it when containerd starts a sandbox; the real runtime has no such
command): ``kata-runtime --config PATH ccfactory-lab-launch SANDBOX_ID`` logs, to syslog with
the identifier ``kata``, the line the Go runtime logs right before it starts QEMU
(govmm ``LaunchCustomQemu``: ``logger.Infof("launching %s with: %v", path, params)``,
kata-containers@4.1.0:src/runtime/pkg/govmm/qemu/qemu.go:3591), formatted as the runtime's
syslog hook formats it (logrus TextFormatter, RFC 3339 nanosecond time, tag ``kata``:
src/runtime/pkg/katautils/logger.go:24,66-77), with the QEMU arguments the runtime would
build for that configuration (``launch_args``). No QEMU is started.

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
                raise SystemExit(f"error reading file {file!r}: {exc}") from None
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


# kata-containers@4.1.0, the pieces of the guest kernel command line, in the runtime's order
# (virtcontainers/qemu.go:191-232 kernelParameters; qemu_arch_base.go:300-310):
ARCH_PARAMS = (  # virtcontainers/qemu_amd64.go:64-77 kernelParams
    "tsc=reliable", "no_timer_check", "rcupdate.rcu_expedited=1", "i8042.direct=1", "i8042.dumbkbd=1",
    "i8042.nopnp=1", "i8042.noaux=1", "noreplace-smp", "reboot=k", "cryptomgr.notests", "net.ifnames=0",
    "pci=lastbus=0",
)
ROOTFLAGS = {"ext4": "data=ordered,errors=remount-ro ro", "xfs": "ro", "erofs": "ro"}  # hypervisor.go:132-216
SYSTEMD_PARAMS = (  # pkg/katautils/create.go:36-49,51-58 (an image-based guest needs systemd)
    "systemd.unit=kata-containers.target", "systemd.mask=systemd-networkd.service", "systemd.mask=systemd-networkd.socket",
)
SNP_CBITPOS, SNP_REDUCED_PHYS_BITS = 51, 1  # virtcontainers/qemu_amd64.go (EPYC: C-bit 51, 1 bit)


def kernel_params(hv, debug):
    """The -append value: arch params, root params of the image (nvdimm disabled: virtio-blk
    /dev/vda1, hypervisor.go:180-216; qemu_arch_base.go:819-846), non-debug params, panic=1
    (qemu.go:153), nr_cpus only for non-confidential guests (qemu.go:198-201), selinux
    (qemu.go:203-211), then the configuration's: systemd params and kernel_params
    (katautils/config.go:1557-1590 SetKernelParams)."""
    params = list(ARCH_PARAMS)
    image = hv.get("image", "")
    if image:
        rootfs = hv.get("rootfs_type", "") or "ext4"
        nvdimm_off = hv.get("disable_image_nvdimm", False) or hv.get("confidential_guest", False)
        params += ["root=/dev/vda1" if nvdimm_off else "root=/dev/pmem0p1", f"rootflags={ROOTFLAGS[rootfs]}",
                   f"rootfstype={rootfs}"]
    params += ["debug"] if debug else ["quiet"]
    if image:
        params += ["systemd.show_status=true", "systemd.log_level=debug"] if debug else ["systemd.show_status=false"]
    params.append("panic=1")
    if not hv.get("confidential_guest", False):
        params.append(f"nr_cpus={hv.get('default_maxvcpus') or hv.get('default_vcpus', 1)}")
    params.append("selinux=0" if hv.get("disable_guest_selinux", True) else "selinux=1")
    if image:
        params += list(SYSTEMD_PARAMS)
    params += hv.get("kernel_params", "").split()
    return " ".join(params)


def launch_args(config, sandbox, uuid):
    """QEMU's arguments in govmm LaunchQemu's order (qemu.go:3510-3531): name, uuid, machine,
    cpu, qmp, memory, objects and devices, kernel/initrd/append, bios, pidfile, smp."""
    hv = qemu(config)
    debug = bool(hv.get("enable_debug", False))
    vcpus = int(hv.get("default_vcpus", 1))
    run = f"/run/vc/vm/{sandbox}"
    machine = f"{hv.get('machine_type', 'q35')},accel=kvm"
    snp = hv.get("confidential_guest") and hv.get("sev_snp_guest")
    if snp:
        machine += ",confidential-guest-support=snp"
    args = ["-name", f"sandbox-{sandbox},debug-threads=on", "-uuid", uuid, "-machine", machine,
            "-cpu", "host," + hv.get("cpu_features", "pmu=off"), "-qmp", "unix:fd=3,server=on,wait=off",
            "-m", f"{hv.get('default_memory', 2048)}M,slots={hv.get('memory_slots', 10)},maxmem={hv.get('default_memory', 2048)}M"]
    if snp:
        obj = f"sev-snp-guest,id=snp,cbitpos={SNP_CBITPOS},reduced-phys-bits={SNP_REDUCED_PHYS_BITS},kernel-hashes=on"
        if hv.get("snp_guest_policy") is not None:
            obj += f",policy={hv['snp_guest_policy']}"
        args += ["-object", obj]  # qemu.go:438-459
    if hv.get("image"):
        args += ["-device", "virtio-blk-pci,disable-modern=false,drive=image-0,config-wce=off,share-rw=on,serial=image-0",
                 "-drive", f"id=image-0,file={hv['image']},aio=threads,format=raw,if=none,readonly=on"]
    args += ["-kernel", hv.get("kernel", "")]
    if hv.get("initrd"):
        args += ["-initrd", hv["initrd"]]
    args += ["-append", kernel_params(hv, debug)]
    if hv.get("firmware"):
        args += ["-bios", hv["firmware"]]
    args += ["-pidfile", f"{run}/pid", "-smp", f"{vcpus},cores=1,threads=1,sockets={vcpus},maxcpus={vcpus}"]
    return hv.get("path", ""), args


def logfmt(value):
    """logrus TextFormatter quoting: bare when safe, else a Go %q string."""
    if value and all(c.isalnum() or c in "-._/@^+" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launch_line(path, args, sandbox, now, pid):
    """The syslog message of qemu.go:3591 (fields sorted, as logrus sorts them)."""
    msg = f"launching {path} with: [{' '.join(args)}]"
    fields = {"name": "containerd-shim-v2", "pid": str(pid), "sandbox": sandbox,
              "source": "virtcontainers/hypervisor", "subsystem": "qmp"}
    return f'time="{now}" level=info msg={logfmt(msg)} ' + " ".join(f"{k}={logfmt(v)}" for k, v in sorted(fields.items()))


def launch(path, sandbox):
    import datetime
    import syslog
    import uuid

    _, _, config = load(path)
    qemu_path, args = launch_args(config, sandbox, str(uuid.uuid4()))
    now = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="microseconds")
    syslog.openlog("kata", 0, syslog.LOG_USER)
    syslog.syslog(syslog.LOG_INFO, launch_line(qemu_path, args, sandbox, now, os.getppid()))
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
    if command == "ccfactory-lab-launch" and len(args) == 1:
        return launch(config_path, args[0])
    print(f"{NAME}: '{command}' is not a command supported by the ccfactory lab stand-in", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
