"""Host operations: the TEE proven active on the running kernel, with the fix when it is not.

``tee_host_ready`` asserts (it changes nothing): it reads ``TeeHostStatus`` when it runs,
so after the host stage's reboot it judges the new boot, and fails the host (alone) with
the fact's own hints when the TEE is not active, the kernel command line lacks what the
host stage configured, or a host GPU driver is loaded. A failure caused by the BIOS says
so first and points at the firmware stage.

The judgement is a pure function (``host_readiness``) so it is tested on recorded facts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FunctionCommand, operation

from ccfactory.facts.tee import TeeHostStatus
from ccfactory.parsers.checks import CheckResult
from ccfactory.parsers.tee import TeeStatus

logger = logging.getLogger("pyinfra")


@dataclass(frozen=True)
class HostReadiness:
    """What is wrong with a TEE host's running kernel (empty ``problems``: ready)."""

    tee: str
    active: bool
    problems: tuple[str, ...] = ()
    firmware: tuple[CheckResult, ...] = ()  # failed checks a reboot cannot fix (BIOS)

    @property
    def ready(self) -> bool:
        return not self.problems

    def message(self, tee_name: str, bios_hint: str) -> str:
        head = f"{tee_name} is not active" if not self.active else f"{tee_name} is active, but the host is not ready"
        if self.firmware:
            head += f": {bios_hint}"
        return head + ":\n  - " + "\n  - ".join(self.problems)


def firmware_failures(status: TeeStatus, tee: str, firmware_checks: Iterable[str]) -> tuple[CheckResult, ...]:
    """The failed checks of ``tee`` that only the BIOS can fix (names from the role's data)."""
    names = set(firmware_checks)
    return tuple(c for c in getattr(status, tee).failed if c.name in names)


def host_readiness(
    status: TeeStatus,
    tee: str,
    *,
    cmdline_tokens: Sequence[str] = (),
    gpu_modules: Sequence[str] = (),
    firmware_checks: Iterable[str] = (),
    dropin: str = "",
    not_in_effect: str = "",
) -> HostReadiness:
    """Judge the running kernel (pure).

    + cmdline_tokens: what the host stage's GRUB drop-in (``dropin``) puts on the command line
    + gpu_modules: host GPU drivers that must not be loaded
    + firmware_checks: names of TEE checks that mean "fix the BIOS"
    + not_in_effect: why the configuration written by this run is not running yet (the
      stage did not reboot); empty when it should be
    """
    tee_status = getattr(status, tee)
    problems: list[str] = []
    firmware = firmware_failures(status, tee, firmware_checks)
    # the fact's own checks, root causes first, each with its fix
    problems += [str(c) for c in tee_status.failed]
    if not tee_status.active and not tee_status.failed:
        problems.append(f"{tee}: not active and no check says why; read the kernel log (dmesg) on the node")
    missing = [t for t in cmdline_tokens if not status.cmdline.has_token(t)]
    if missing:
        if not_in_effect:
            fix = f"{dropin} is written and takes effect at the next boot ({not_in_effect})"
        else:
            fix = (
                f"{dropin} adds them, but the node did not boot with it: run update-grub and reboot; if they are "
                "still missing, the node does not boot the grub.cfg update-grub writes, or a GRUB default file "
                "resets GRUB_CMDLINE_LINUX_DEFAULT"
            )
        problems.append(f"kernel_cmdline: FAIL: the running kernel command line lacks {' '.join(missing)}; fix: {fix}")
    loaded = sorted(set(gpu_modules) & set(status.inputs.modules))
    if loaded:
        fix = (
            "they are blacklisted and disabled from the next boot on"
            if not_in_effect
            else "something loads them despite /etc/modprobe.d/ccfactory-no-host-gpu-driver.conf (an old initramfs, "
            "or a package's own modprobe.d install line): run update-initramfs -u -k all, look for "
            "`install nvidia` lines in /etc/modprobe.d and /usr/lib/modprobe.d, and reboot"
        )
        problems.append(f"host_gpu_driver: FAIL: {', '.join(loaded)} loaded on the host; fix: {fix}")
    return HostReadiness(tee, tee_status.active, tuple(problems), firmware)


def _fail(state, host, message: str) -> bool:  # noqa: ARG001 - pyinfra passes state and host
    host.log_styled(f"ccfactory: {message}", fg="red", log_func=logger.error)
    return False


@operation(is_idempotent=True)
def tee_host_ready(
    tee: str,
    tee_name: str,
    bios_hint: str,
    cmdline_tokens: list[str] | None = None,
    gpu_modules: list[str] | None = None,
    firmware_checks: list[str] | None = None,
    dropin: str = "",
    not_in_effect: str = "",
):
    """Fail this host unless its TEE is active on the running kernel (changes nothing).

    + tee: ``snp`` or ``tdx``
    + tee_name: shown in the message (``AMD SEV-SNP``)
    + bios_hint: said first when a BIOS setting is the cause (``enable SNP in BIOS: run the firmware stage``)
    + cmdline_tokens: tokens the host stage put on the kernel command line; all must be running
    + gpu_modules: host GPU drivers that must not be loaded
    + firmware_checks: TEE check names that mean "fix the BIOS"
    + dropin: the file that adds ``cmdline_tokens`` (for the message)
    + not_in_effect: why this run's configuration is not running yet (no reboot was done)

    The fact is read when the operation runs, i.e. after a reboot planned before it.

    **Example:**

    .. code:: python

        host_ops.tee_host_ready(
            name="SEV-SNP active", tee="snp", tee_name="AMD SEV-SNP",
            bios_hint="enable SNP in BIOS: run the firmware stage", _sudo=True,
        )
    """
    status = host.get_fact(TeeHostStatus)
    verdict = host_readiness(
        status,
        tee,
        cmdline_tokens=cmdline_tokens or (),
        gpu_modules=gpu_modules or (),
        firmware_checks=firmware_checks or (),
        dropin=dropin,
        not_in_effect=not_in_effect,
    )
    if verdict.ready:
        host.noop(f"{tee_name} is active")
        return
    yield FunctionCommand(_fail, (verdict.message(tee_name, bios_hint),), {})
