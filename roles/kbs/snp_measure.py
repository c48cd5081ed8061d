"""Expected SEV-SNP launch measurements of Kata guests, with the pinned ``sev-snp-measure``.

The measurement is what the AMD secure processor hashes at launch: the OVMF firmware pages,
the VMSA of each boot vCPU (its type sets the CPUID signature in the VMSA), and, because
Kata's QEMU launches SNP guests with ``kernel-hashes=on``
(``kata-containers@4.1.0:src/runtime/pkg/govmm/qemu/qemu.go:438-443``), the SHA-256 of the
kernel, initrd and kernel command line in OVMF's hashes table. ``sev-snp-measure``
(virtee/sev-snp-measure, PyPI ``sev-snp-measure``, pinned in the BOM and pyproject) computes it
(``sevsnpmeasure/guest.py:calc_launch_digest``).

Where each input of a Kata shim comes from (Kata 4.1.0 = kata-containers@ddcb1ad8):

| input | from | upstream |
|---|---|---|
| firmware | ``[hypervisor.qemu] firmware`` of the effective config (-bios) | qemu.go:3321-3336 (appendKernel), qemu_amd64.go:361-370, qemu.go:459 (``config.Bios = object.File``) |
| kernel | ``[hypervisor.qemu] kernel`` (-kernel) | qemu.go:3321-3325 |
| initrd | ``[hypervisor.qemu] initrd`` (-initrd); an ``image`` is a disk, not measured (its dm-verity root hash is in the command line) | qemu.go:3326-3329 |
| vCPUs | ``default_vcpus`` (the first number of -smp: one VMSA per boot vCPU) | qemu.go:3531 (appendCPUs) |
| vCPU type | ``EPYC-v4`` for SNP guests | virtcontainers/qemu_amd64.go:237-249 |
| guest features | 0x1 (SNPActive), sev-snp-measure's default, as Kata's own CI measures | tests/integration/kubernetes/k8s-confidential-attestation.bats:185-193 |
| command line | **the runtime's log** of the QEMU command (``launching <qemu> with: [<args>]``, qemu.go:3591), read as Kata's CI does (bats:167-184); composed by the runtime from its defaults, root/verity, agent, debug and configured parameters (virtcontainers/qemu.go:191-232), not re-derived here | bats:167-184 |
| initdata | not measured: Kata passes its digest as SNP ``host-data`` (qemu.go:453-458), which the report carries as HOST_DATA, outside the launch digest | qemu.go:453-458 |

Each :class:`SnpLaunch` records, per input, whether it came from the configuration, the
runtime log or a fixed upstream choice (``origins``).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata

PACKAGE = "sev-snp-measure"
VCPU_TYPE = "EPYC-v4"  # kata-containers@4.1.0:src/runtime/virtcontainers/qemu_amd64.go:237-249
GUEST_FEATURES = 0x1  # sev-snp-measure's default (cli.py --guest-features), as Kata's CI calls it

FROM_CONFIG = "kata configuration"
FROM_LOG = "runtime log"
FROM_UPSTREAM = "fixed by upstream"


class MeasureError(ValueError):
    """The launch cannot be measured as given (the message names the input and the fix)."""


@dataclass(frozen=True)
class SnpLaunch:
    """Inputs of one SNP guest launch. ``ovmf_hash`` (hex) replaces hashing the firmware's
    pages (sev-snp-measure ``--snp-ovmf-hash``)."""

    ovmf: str
    kernel: str
    initrd: str
    append: str
    vcpus: int
    vcpu_type: str = VCPU_TYPE
    guest_features: int = GUEST_FEATURES
    ovmf_hash: str = ""
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """One line for the report: inputs (paths, counts; the command line by its length)."""
        parts = [f"ovmf={self.ovmf}", f"kernel={self.kernel}", f"initrd={self.initrd or '-'}",
                 f"vcpus={self.vcpus}", f"vcpu-type={self.vcpu_type}", f"guest-features={self.guest_features:#x}",
                 f"append=<{len(self.append)} chars>"]  # fmt: skip
        how = ", ".join(f"{k}: {v}" for k, v in sorted(self.origins.items()))
        return f"{PACKAGE} {version()} --mode snp " + " ".join(parts) + (f" ({how})" if how else "")


def version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # pragma: no cover - a broken install
        raise MeasureError(f"{PACKAGE} is not installed; reinstall ccfactory (it depends on {PACKAGE})") from None


def measure(launch: SnpLaunch) -> str:
    """The launch digest (96 lowercase hex digits) of ``launch``."""
    from sevsnpmeasure import guest, vcpu_types
    from sevsnpmeasure.sev_mode import SevMode

    if launch.vcpus < 1:
        raise MeasureError(f"vcpus must be at least 1, not {launch.vcpus}")
    if launch.vcpu_type not in vcpu_types.CPU_SIGS:
        raise MeasureError(f"unknown vCPU type {launch.vcpu_type!r}; {PACKAGE} knows {', '.join(vcpu_types.CPU_SIGS)}")
    try:
        digest = guest.calc_launch_digest(
            SevMode.SEV_SNP, launch.vcpus, vcpu_types.CPU_SIGS[launch.vcpu_type], launch.ovmf,
            launch.kernel, launch.initrd or "", launch.append, launch.guest_features,
            snp_ovmf_hash_str=launch.ovmf_hash,
        )  # fmt: skip
    except OSError as exc:
        raise MeasureError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (ValueError, RuntimeError) as exc:  # e.g. a firmware without SNP metadata
        raise MeasureError(f"{PACKAGE} refused the launch ({launch.ovmf}): {exc}") from None
    return digest.hex()


# ------------------------------------------------------------------ the runtime's log of the QEMU command

# govmm LaunchQemu appends, after -kernel/-initrd/-append: -bios, iothread objects, -incoming,
# -pidfile, -fw_cfg, -sandbox, then -smp (qemu.go:3510-3531); -append's value ends at one of them.
_AFTER_APPEND = ("bios", "object", "incoming", "pidfile", "fw_cfg", "sandbox", "smp")
_LAUNCH = re.compile(r'launching (?P<qemu>\S+) with: \[(?P<args>.*)\](?:"|$)', re.M)
_APPEND = re.compile(r"-append (?P<v>.*?)(?= -(?:%s) |$)" % "|".join(_AFTER_APPEND))


def qemu_commands_from_log(text: str) -> list[str]:
    """The QEMU arguments of every ``launching <qemu> with: [<args>]`` line in ``text`` (a journal
    of the Kata runtime, newest last), as Kata's CI extracts them (bats:167-177)."""
    found = [m for m in _LAUNCH.finditer(text) if "qemu" in m["qemu"]]
    if not found:
        raise MeasureError("no 'launching <qemu> with: [...]' line in the runtime log; fix: run the SNP smoke "
                           "check (verify stage) so the runtime launches a guest: deploy/site.py then registers it in "
                           "the same run, a kbs stage run alone after it does too")
    # logfmt escapes the quotes inside msg (dm-mod.create parameters): bats:183-184
    return [m["args"].replace('\\"', '"') for m in found]


def qemu_command_from_log(text: str) -> str:
    """The newest logged QEMU command."""
    return qemu_commands_from_log(text)[-1]


def parse_qemu_command(args: str) -> dict:
    """``kernel``, ``initrd``, ``bios``, ``vcpus`` (first number of -smp), ``append`` and ``cpu``
    from QEMU arguments as the Go runtime logs them (space-joined, unquoted)."""
    out: dict = {}
    for opt in ("kernel", "initrd", "bios", "cpu"):
        m = re.search(rf"(?:^| )-{opt} (\S+)", args)
        if m:
            out[opt] = m.group(1)
    m = re.search(r"(?:^| )-smp (\d+)", args)
    if m:
        out["vcpus"] = int(m.group(1))
    m = _APPEND.search(args)
    if m:
        out["append"] = m["v"]
    missing = [k for k in ("kernel", "bios", "vcpus", "append") if k not in out]
    if missing:
        raise MeasureError(f"the logged QEMU command has no {', '.join('-' + k for k in missing)}; "
                           "it is not a Kata SNP guest launch")  # fmt: skip
    return out


def launch_from_log(text: str) -> SnpLaunch:
    """Every input from the runtime's log (Kata CI's way, bats:167-193)."""
    q = parse_qemu_command(qemu_command_from_log(text))
    origins = dict.fromkeys(("ovmf", "kernel", "initrd", "vcpus", "append"), FROM_LOG)
    origins |= {"vcpu_type": FROM_UPSTREAM, "guest_features": FROM_UPSTREAM}
    return SnpLaunch(ovmf=q["bios"], kernel=q["kernel"], initrd=q.get("initrd", ""), append=q["append"],
                     vcpus=q["vcpus"], origins=origins)  # fmt: skip


# ------------------------------------------------------------------ the effective Kata configuration


def effective_kata_config(main_text: str, dropins: Iterable[str] = ()) -> dict:
    """The shim's configuration as the runtime reads it: the main file, then each
    ``config.d/*.toml`` in directory order updating the keys it sets
    (``kata-containers@4.1.0:src/runtime/pkg/katautils/config.go:1878-1925``)."""
    from ccfactory.coco.containerd_config import deep_merge

    config = tomllib.loads(main_text)
    for text in dropins:
        deep_merge(config, tomllib.loads(text))
    return config


def launch_from_config(config: Mapping, runtime_log: str) -> SnpLaunch:
    """Firmware, kernel, initrd and vCPUs from the effective configuration; the command line
    from the newest logged launch whose firmware, kernel, initrd and vCPU count agree with the
    configuration (another shim's guests, or guests of an older configuration, are skipped:
    their command line would give a wrong measurement)."""
    qemu = (config.get("hypervisor") or {}).get("qemu") or {}
    if not qemu.get("confidential_guest") or not qemu.get("sev_snp_guest"):
        raise MeasureError("the configuration is not an SNP guest ([hypervisor.qemu] confidential_guest and sev_snp_guest)")
    missing = [k for k in ("firmware", "kernel") if not qemu.get(k)]
    if missing:
        raise MeasureError(f"[hypervisor.qemu] has no {', '.join(missing)}: nothing to measure")
    from_config = SnpLaunch(ovmf=qemu["firmware"], kernel=qemu["kernel"], initrd=qemu.get("initrd", ""),
                            append="", vcpus=int(qemu.get("default_vcpus", 1)))  # fmt: skip
    mismatch = ""
    for args in reversed(qemu_commands_from_log(runtime_log)):  # newest first
        try:
            q = parse_qemu_command(args)
        except MeasureError:
            continue
        logged = {"ovmf": q["bios"], "kernel": q["kernel"], "initrd": q.get("initrd", ""), "vcpus": q["vcpus"]}
        wrong = [n for n in logged if logged[n] != getattr(from_config, n)]
        if not wrong:
            break
        if not mismatch:
            n = wrong[0]
            mismatch = (f"the runtime log launched {n}={logged[n]!r} but the configuration says "
                        f"{getattr(from_config, n)!r}; fix: re-run the smoke check with the current configuration")
    else:
        raise MeasureError(mismatch or "no logged QEMU command of a Kata SNP guest")
    origins = dict.fromkeys(("ovmf", "kernel", "initrd", "vcpus"), FROM_CONFIG) | {
        "append": FROM_LOG, "vcpu_type": FROM_UPSTREAM, "guest_features": FROM_UPSTREAM}  # fmt: skip
    return replace(from_config, append=q["append"], origins=origins)


def command_line_args(launch: SnpLaunch) -> list[str]:
    """The equivalent ``sev-snp-measure`` command (for the report and for re-checking by hand)."""
    args = ["sev-snp-measure", "--mode=snp", f"--vcpus={launch.vcpus}", f"--vcpu-type={launch.vcpu_type}",
            f"--guest-features={launch.guest_features:#x}", f"--ovmf={launch.ovmf}", f"--kernel={launch.kernel}",
            f"--append={launch.append}"]  # fmt: skip
    if launch.initrd:
        args.append(f"--initrd={launch.initrd}")
    if launch.ovmf_hash:
        args.append(f"--snp-ovmf-hash={launch.ovmf_hash}")
    return args


def shell_command(launch: SnpLaunch) -> str:
    return shlex.join(command_line_args(launch))
