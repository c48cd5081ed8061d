"""SNP platform values read from a worker's SEV firmware interface (``/dev/sev``).

What ``snphost show tcb`` prints (Kata's CI reads the reported TCB that way,
``kata-containers@4.1.0:tests/integration/kubernetes/k8s-confidential-attestation.bats:197-207``)
comes from the SNP_PLATFORM_STATUS command of the kernel's SEV device, as the ``sev`` crate
(virtee/sev, which snphost and Trustee's SNP verifier use; tag v7.1.0, commit 5ccc9afa) issues it:

* ioctl ``SEV_ISSUE_CMD`` = ``_IOWR('S', 0, struct sev_issue_cmd)`` on ``/dev/sev``
  (``virtee/sev@v7.1.0:src/firmware/linux/host/ioctl.rs:62,99-102``; ``src/firmware/host/mod.rs:79``), the
  command ``{u32 code; u64 data; u32 error}`` packed (ioctl.rs:125-133; Linux
  ``include/uapi/linux/psp-sev.h``), code 0x9 = SNP_PLATFORM_STATUS (ioctl.rs:31);
* the answer is 32 bytes (``src/firmware/linux/host/types/snp.rs:337-339``), decoded as
  api major, minor, state, rmp-init flags, build id (u32), platform policy flags (u32), guest
  count (u32), installed TCB (8 bytes), **reported TCB** (8 bytes)
  (``src/firmware/host/types/snp.rs:341-405``);
* a TCB_VERSION's byte layout depends on the processor generation
  (``src/firmware/host/types/snp.rs:547-600``), identified from CPUID family/model
  (``src/lib.rs:262-285``): :data:`GENERATIONS`, :data:`TCB_LAYOUTS`.

The reported TCB is what the firmware puts in every guest's attestation report
(``REPORTED_TCB``), hence what ``snp_bootloader`` etc. must hold. SMT is read from the kernel
(``/sys/devices/system/cpu/smt/active``); the report's PLATFORM_INFO.SMT_EN bit reflects the
same platform state. TSME is not exposed by the firmware status: it is **not read** here
(see ``docs/reference-values.md``).

Reading ``/dev/sev`` needs root; the reader is a short Python program run on the worker
(:data:`READER`), which prints the 32 bytes as hex, parsed here on the controller.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccfactory.kbs.refvalues import SnpTcb

SEV_DEVICE = "/dev/sev"
SEV_ISSUE_CMD = (3 << 30) | (16 << 16) | (ord("S") << 8) | 0  # _IOWR('S', 0, 16-byte command)
SNP_PLATFORM_STATUS = 0x9
STATUS_LEN = 32

# (family, first model, last model) -> generation: virtee/sev@v7.1.0:src/lib.rs:262-285
GENERATIONS = (
    (0x19, 0x00, 0x0F, "Milan"),
    (0x19, 0x10, 0x1F, "Genoa"),
    (0x19, 0xA0, 0xAF, "Genoa"),
    (0x1A, 0x00, 0x11, "Turin"),
)
# generation -> byte index of (bootloader, tee, snp, microcode) in a TCB_VERSION:
# virtee/sev@v7.1.0:src/firmware/host/types/snp.rs:568-576 (legacy), 591-599 (Turin, byte 0 = FMC)
TCB_LAYOUTS = {
    "Milan": (0, 1, 6, 7),
    "Genoa": (0, 1, 6, 7),
    "Turin": (1, 2, 3, 7),
}

# Run on the worker as root; prints the SNP_PLATFORM_STATUS answer as hex, or "error <text>".
READER = r"""
import ctypes, fcntl, os, struct, sys
buf = ctypes.create_string_buffer(32)
cmd = bytearray(struct.pack("<IQI", 0x9, ctypes.addressof(buf), 0))
try:
    fd = os.open("/dev/sev", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0xC0105300, cmd, True)
    finally:
        os.close(fd)
except OSError as exc:
    print("error", exc.strerror or exc, "firmware error", struct.unpack("<IQI", bytes(cmd))[2])
    sys.exit(0)
print(buf.raw.hex())
""".strip()


class SnpHostError(ValueError):
    """The host's answer cannot be used (message names what and the fix)."""


def generation_of(family: int, model: int) -> str:
    for fam, first, last, name in GENERATIONS:
        if family == fam and first <= model <= last:
            return name
    raise SnpHostError(f"CPU family {family:#x} model {model:#x} is no SEV-SNP generation virtee/sev knows "
                       "(Milan, Genoa, Turin); its TCB layout is unknown")  # fmt: skip


def cpu_family_model(cpuinfo: str) -> tuple[int, int]:
    """``cpu family`` and ``model`` of the first processor in ``/proc/cpuinfo`` (decimal there)."""
    found: dict[str, int] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("cpu family", "model") and key not in found:
            found[key] = int(value.strip())
        if len(found) == 2:
            return found["cpu family"], found["model"]
    raise SnpHostError("/proc/cpuinfo has no 'cpu family' and 'model'")


def tcb_from_bytes(raw: bytes, generation: str) -> SnpTcb:
    if len(raw) != 8:
        raise SnpHostError(f"a TCB_VERSION is 8 bytes, not {len(raw)}")
    b, t, s, m = TCB_LAYOUTS[generation]
    return SnpTcb(bootloader=raw[b], tee=raw[t], snp=raw[s], microcode=raw[m])


@dataclass(frozen=True)
class SnpPlatformStatus:
    api_major: int
    api_minor: int
    state: int
    build_id: int
    guest_count: int
    installed_tcb: SnpTcb
    reported_tcb: SnpTcb
    generation: str


def parse_platform_status(answer: str, generation: str) -> SnpPlatformStatus:
    """Decode the reader's output (hex of the 32-byte answer)."""
    text = answer.strip()
    if text.startswith("error"):
        raise SnpHostError(f"SNP_PLATFORM_STATUS on {SEV_DEVICE} failed: {text[5:].strip()}; fix: the host stage must "
                           "have enabled SEV-SNP (kvm_amd sev_snp=1, SNP firmware initialised)")  # fmt: skip
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise SnpHostError(f"SNP_PLATFORM_STATUS answer is not hex: {text[:40]!r}") from None
    if len(raw) != STATUS_LEN:
        raise SnpHostError(f"SNP_PLATFORM_STATUS answered {len(raw)} bytes, not {STATUS_LEN}")
    build_id = int.from_bytes(raw[4:8], "little")
    guest_count = int.from_bytes(raw[12:16], "little")
    return SnpPlatformStatus(api_major=raw[0], api_minor=raw[1], state=raw[2], build_id=build_id,
                             guest_count=guest_count, installed_tcb=tcb_from_bytes(raw[16:24], generation),
                             reported_tcb=tcb_from_bytes(raw[24:32], generation), generation=generation)  # fmt: skip


def smt_active(text: str) -> bool:
    """``/sys/devices/system/cpu/smt/active`` (Documentation/ABI/testing/sysfs-devices-system-cpu): 1 or 0."""
    value = text.strip()
    if value not in ("0", "1"):
        raise SnpHostError(f"/sys/devices/system/cpu/smt/active reads {value!r}, not 0 or 1")
    return value == "1"
