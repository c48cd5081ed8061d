"""What the host stage must do on one node, decided from its config and facts (pure).

``plan_host`` turns ``NodeConfig`` + facts (``NodeOs``, ``TeeHostStatus``, ``HostBootConfig``)
+ the distribution's commands into a ``HostPlan``: problems that stop the stage before it
changes anything, the three files ccfactory owns, which boot tools to run, and whether to
reboot and why. No pyinfra here: the role turns the plan into operations.

Decisions (see the role's docstring for the why):

* **Kernel**: ``kernels.toml`` minimums for the TEE; below a ``required`` one (or an
  unreadable release) is a problem, below a ``recommended`` one a note. Lab nodes run the
  lab machine's shared kernel, so the check runs on the simulated kernel the lab boots
  (the release in the lab's kernel log) and says so.
* **Operator files**: a setting that keeps the TEE off (``iommu=pt`` on SNP ...) in a GRUB
  defaults file or a modprobe.d file ccfactory does not own is a problem naming the file
  and line; so is a GRUB file sorted after the drop-in that resets
  ``GRUB_CMDLINE_LINUX_DEFAULT``. ccfactory never edits files it does not own.
* **grubby hosts** (``cmdline_method = "grubby"``, RHEL): no drop-in; the boot entries'
  arguments are read back (``grubby --info=ALL``), the TEE's tokens missing from an entry
  are added with ``grubby --update-kernel=ALL --args=...``, and tokens ccfactory added
  earlier (recorded in ``/etc/ccfactory/kernel-args``, the owned file in place of the
  drop-in) and no longer wants are removed with ``--remove-args=...``. An argument not in
  that file is the operator's: never removed or changed (a different value of a key
  ccfactory wants is a problem to fix by hand). The harmful settings are refused as they
  are read back, naming the boot entry. A converged host: no command, no reboot.
* **Reboot** only when the running kernel differs from the configured boot state (a
  token missing from ``/proc/cmdline``, a harmful one still on it, a module parameter
  not as configured, a host GPU driver loaded) *and* this run changes the boot
  configuration or a reboot recorded in this very boot has not happened (the marker holds
  the boot id it was written in). After the reboot the running state matches, so a re-run
  reboots nothing; if it does not match, the same configuration already was booted and a
  second reboot would not help: the verify step fails with the reason instead.
  No reboot either when the BIOS has the TEE off (a reboot cannot fix that): the files
  are written, and the firmware stage's reboot applies them.

Example::

    plan = plan_host(cfg, info, tee_status, boot_files, distro_for(info.os_id, info.os_version))
    plan.problems, [f.path for f in plan.files if f.changes], plan.needs_reboot
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ccfactory.config import NodeConfig
from ccfactory.distros import GRUB_DROPIN_NAME as DROPIN_NAME
from ccfactory.distros import GRUBBY_OWNED_ARGS, Distro, initramfs_step, supported_list
from ccfactory.facts.node import NodeOsInfo
from ccfactory.roles.host.kernels import check_host_kernel
from ccfactory.roles.host.operations import firmware_failures
from ccfactory.parsers.kernel import parse_modprobe_d, parse_param_bool
from ccfactory.parsers.reboot_marker import marker_pending, marker_text
from ccfactory.parsers.tee import TeeStatus
from ccfactory.roles.host.facts import REBOOT_MARKER, HostBootFiles
from ccfactory.roles.host.grub import (
    DEFAULT_GRUB,
    LINUX_DEFAULT,
    arg_key,
    dropped_by,
    GRUB_D,
    grub_files_in_order,
    parse_grubby_info,
    parse_owned_args,
    render_owned_args,
    replay,
)
from ccfactory.roles.host.spec import TeeSpec, norm, tee_spec
from ccfactory.templating import TemplateOverlayError, render, site_overlays

DROPIN = f"{GRUB_D}/{DROPIN_NAME}"  # where that is on Debian and Ubuntu (tests, docs)
TEE_CONF = "/etc/modprobe.d/ccfactory-tee.conf"
GPU_CONF = "/etc/modprobe.d/ccfactory-no-host-gpu-driver.conf"
OWNED = (DROPIN, TEE_CONF, GPU_CONF)
OWNED_ARGS = GRUBBY_OWNED_ARGS  # grubby hosts: the owned file in place of the drop-in
SOURCE = "host stage"  # shown in the managed-file header
_DISABLING_INSTALL = ("/bin/false", "/bin/true", "/usr/bin/false", "/usr/bin/true", "false", "true")


# ------------------------------------------------------------------ rendering


def render_dropin(spec: TeeSpec, overlays: tuple[str, ...] = ()) -> str | None:
    """``/etc/default/grub.d/60-ccfactory.cfg``, or None when the TEE adds no token."""
    if not spec.cmdline:
        return None
    return render("host/60-ccfactory.cfg.j2", overlays, tee_name=spec.name, cmdline=spec.cmdline,
                  forbidden=spec.forbidden, ccfactory_source=SOURCE)  # fmt: skip


def render_tee_conf(spec: TeeSpec, overlays: tuple[str, ...] = ()) -> str | None:
    if not spec.options:
        return None
    return render("host/ccfactory-tee.conf.j2", overlays, tee_name=spec.name, options=spec.options,
                  ccfactory_source=SOURCE)  # fmt: skip


def render_gpu_conf(spec: TeeSpec, overlays: tuple[str, ...] = ()) -> str | None:
    """The no-host-GPU-driver file, or None for hosts without GPUs."""
    if not spec.gpu_modules:
        return None
    return render("host/ccfactory-no-host-gpu-driver.conf.j2", overlays, modules=spec.gpu_modules,
                  ccfactory_source=SOURCE)  # fmt: skip


def same_text(current: str | None, wanted: str | None) -> bool:
    """Equal up to trailing whitespace (what a fact's output keeps of a file)."""
    if current is None or wanted is None:
        return current is None and wanted is None

    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(current) == lines(wanted)


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class OwnedFile:
    path: str
    wanted: str | None  # None: ccfactory wants it absent
    current: str | None

    @property
    def changes(self) -> bool:
        return not same_text(self.current, self.wanted)


@dataclass(frozen=True)
class HostPlan:
    spec: TeeSpec | None = None
    dropin: str = DROPIN  # the owned command-line drop-in (the distribution's grub_dropin_dir)
    problems: tuple[str, ...] = ()  # stop before any change; each says what to do
    notes: tuple[str, ...] = ()  # shown as warnings
    files: tuple[OwnedFile, ...] = ()
    update_bootloader: str | None = None  # command to run after the files, None: not needed
    update_initramfs: str | None = None
    running_diffs: tuple[str, ...] = ()  # how the running kernel differs from the configured boot state
    firmware: tuple[str, ...] = ()  # failed TEE checks only the BIOS can fix
    pending: bool = False  # a reboot recorded in this boot has not happened
    stale_marker: bool = False  # a marker from an earlier boot: the reboot happened
    needs_reboot: bool = False
    # BIOS had the TEE off when facts were read: reboot only if, at execute time, the
    # firmware stage (earlier in the same run) has turned it on; see roles/host apply()
    reboot_if_bios_on: bool = False
    reboot_reason: str = ""
    not_in_effect: str = ""  # why the configuration will not be running after this run
    # grubby hosts: the owned-args record is written after grubby succeeded, so that a
    # failed grubby call never leaves a token on the entries that the record no longer lists
    record_after_bootloader: bool = False

    def file(self, path: str) -> OwnedFile:
        return next(f for f in self.files if f.path == path)

    @property
    def changes(self) -> bool:
        return any(f.changes for f in self.files)

    def marker_text(self, boot_id: str) -> str:
        return marker_text(boot_id, self.reboot_reason)


def kernel_findings(cfg: NodeConfig, info: NodeOsInfo, files: HostBootFiles, family: str = "") -> tuple[list[str], list[str]]:
    """(problems, notes) of the kernel check (``kernels.toml``)."""
    problems: list[str] = []
    notes: list[str] = []
    release = info.kernel
    if cfg.lab:
        if files.lab_kernel:
            release = files.lab_kernel
            notes.append(
                f"lab: kernel checked is the simulated {release} the lab boots (hardware profile); "
                f"uname -r says {info.kernel or 'nothing'}, the lab machine's shared kernel, which a node does not choose"
            )
        else:
            notes.append(
                f"lab: no simulated kernel in the lab's kernel log; checked uname -r {info.kernel or '(empty)'}, "
                "the lab machine's shared kernel"
            )
    for result in check_host_kernel(cfg.tee, release, info.os_id, info.os_version, family):
        if result.ok is None or result.failed:
            problems.append(str(result) + ("" if result.hint else "; fix: check what `uname -r` prints on the node"))
        elif result.warned:
            notes.append(str(result))
    return problems, notes


def _grub_findings(spec: TeeSpec, files: HostBootFiles, dropin: str | None, distro: Distro) -> list[str]:
    problems: list[str] = []
    grub_d, path = distro.grub_dropin_dir, distro.grub_dropin
    operator = [(p, t) for p, t in files.grub if p != path]
    if not any(p == DEFAULT_GRUB for p, _ in operator):
        problems.append(
            f"{DEFAULT_GRUB} is missing: ccfactory sets the kernel command line through GRUB's defaults "
            "(update-grub); install grub (grub-pc or grub-efi) or boot the node with GRUB"
        )
    env = replay(grub_files_in_order(operator, grub_d))
    for token in env.tokens():
        rule = spec.forbidden_on(token.token)
        if rule:
            problems.append(
                f"{token.token} in {token.origin.where} ({token.origin.text}): {rule.why}. ccfactory does not edit "
                f"files it does not own: remove {token.token} there, then re-run"
            )
    if dropin is not None:
        env = replay(grub_files_in_order([*operator, (path, dropin)], grub_d))
        reset = dropped_by(env, path)
        if reset is not None:
            problems.append(
                f"{reset.origin.where} ({reset.origin.text}) sets {LINUX_DEFAULT} after {path} and so discards "
                f"{' '.join(spec.cmdline_tokens)}: make it append (\"${LINUX_DEFAULT} ...\") or rename it to sort "
                f"before {DROPIN_NAME}"
            )
    return problems


def _default_grub_findings(spec: TeeSpec, files: HostBootFiles) -> list[str]:
    """grubby hosts: a harmful token in /etc/default/grub (grub2-mkconfig and new kernels' entries
    may take their arguments from it) is refused like one in a boot entry, by file and line."""
    problems = []
    for token in replay([(p, t) for p, t in files.grub if p == DEFAULT_GRUB]).tokens():
        rule = spec.forbidden_on(token.token)
        if rule:
            problems.append(
                f"{token.token} in {token.origin.where} ({token.origin.text}): {rule.why}. ccfactory does not edit "
                f"files it does not own: remove {token.token} there, then re-run"
            )
    return problems


@dataclass(frozen=True)
class GrubbyStep:
    """What a grubby host needs: the owned-args file, the arguments to add and to remove."""

    owned: OwnedFile
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def command(self, distro: Distro) -> str | None:
        """``update_bootloader`` with ``--args``/``--remove-args``, None when nothing changes."""
        if not (self.add or self.remove):
            return None
        parts = [distro.update_bootloader]
        if self.add:
            parts.append(f"--args={shlex.quote(' '.join(self.add))}")
        if self.remove:
            parts.append(f"--remove-args={shlex.quote(' '.join(self.remove))}")
        return " ".join(parts)


def _grubby_step(spec: TeeSpec, files: HostBootFiles, distro: Distro) -> GrubbyStep:
    """Tokens to add and remove on a grubby host, from the boot entries read back and the
    tokens ccfactory recorded as its own; harmful settings refused by entry."""
    info = distro.bootloader_info
    before = parse_owned_args(files.owned_args)
    keep = OwnedFile(OWNED_ARGS, files.owned_args, files.owned_args)
    if files.boot_entries_output is None:
        return GrubbyStep(keep, problems=(
            f"{distro.tools()[0]} is missing on this {distro.id} host (distros.toml: cmdline_method = grubby, "
            f"bootloader_info = {info!r}): install grubby (dnf install grubby)",))  # fmt: skip
    entries = parse_grubby_info(files.boot_entries_output)
    if files.boot_entries_exit != 0 or not entries:
        said = " | ".join(x.strip() for x in files.boot_entries_output if x.strip())[-400:] or "no output"
        return GrubbyStep(keep, problems=(
            f"`{info}` (distros.toml bootloader_info) listed no boot entry (exit {files.boot_entries_exit}: {said}): "
            "the host stage reads every entry's arguments before changing any; fix the boot loader configuration "
            "(`grubby --info=ALL` must list the installed kernels), then re-run",))  # fmt: skip
    problems: list[str] = []
    harmful: dict[str, list[str]] = {}
    for entry in entries:
        for token in entry.args:
            if spec.forbidden_on(token):
                harmful.setdefault(token, []).append(entry.name)
    for token, where in harmful.items():
        rule = spec.forbidden_on(token)
        assert rule is not None
        problems.append(
            f"{token} in the boot entries of {', '.join(where)} (`{info}`): {rule.why}. ccfactory does not change "
            f"kernel arguments it did not add: remove it (grubby --update-kernel=ALL --remove-args={shlex.quote(token)}), "
            "then re-run"
        )
    wanted = spec.cmdline_tokens
    wanted_keys = {arg_key(t): t for t in wanted}
    for entry in entries:
        for token in entry.args:
            want = wanted_keys.get(arg_key(token))
            if want is not None and token != want and token not in before and not spec.forbidden_on(token):
                problems.append(
                    f"{token} in the boot entry of {entry.name} (`{info}`) is not the {want} the {spec.name} host "
                    f"needs, and grubby --args would overwrite the operator's value: change it to {want} "
                    f"(grubby --update-kernel=ALL --args={shlex.quote(want)}) or remove it, then re-run"
                )
    add = tuple(t for t in wanted if any(t not in e.args for e in entries))
    remove = tuple(t for t in before if t not in wanted and any(t in e.args for e in entries))
    owned_now = tuple(t for t in wanted if t in before or t in add)
    owned = OwnedFile(OWNED_ARGS, render_owned_args(owned_now, SOURCE), files.owned_args)
    return GrubbyStep(owned, add, remove, tuple(problems))


def _modprobe_findings(spec: TeeSpec, files: HostBootFiles) -> list[str]:
    """Operator modprobe.d settings that turn the TEE (or a module it needs) off."""
    problems: list[str] = []
    operator = [(p, t) for p, t in files.modprobe if p not in OWNED]
    effective = parse_modprobe_d(operator).files  # same-name overrides between directories applied
    texts = dict(operator)
    for path in effective:
        one = parse_modprobe_d([(path, texts[path])])
        for rule in spec.forbidden:
            mp = rule.module_param
            if mp is None:
                continue
            for opt in one.options:
                if opt.module == mp[0] and norm(opt.key) == mp[1] and rule.matches(rule.key, opt.value):
                    problems.append(
                        f"options {opt.module} {opt.key}={opt.value} in {path}: {rule.why}. ccfactory does not edit "
                        f"files it does not own: remove it there, then re-run"
                    )
        for module in spec.required_modules:
            install = (one.install_command(module) or "").split()
            if one.is_blacklisted(module) or (install and install[0] in _DISABLING_INSTALL):
                how = "blacklists" if one.is_blacklisted(module) else f"disables (install {module} {' '.join(install)})"
                problems.append(f"{path} {how} {module}, which {spec.name} needs: remove that line, then re-run")
    return problems


def _running_diffs(spec: TeeSpec, status: TeeStatus) -> list[str]:
    """How the running kernel differs from the configured boot state."""
    diffs = []
    missing = [t for t in spec.cmdline_tokens if not status.cmdline.has_token(t)]
    if missing:
        diffs.append(f"kernel command line lacks {' '.join(missing)}")
    for key, value in status.cmdline.params:
        if spec.forbidden_on(f"{key}={value}" if value is not None else key):
            diffs.append(f"kernel command line has {key}={value}")
    for opt in spec.options:
        want = parse_param_bool(opt.value)
        now = status.inputs.param(opt.module, opt.param)
        if now != want:
            shown = {True: "Y", False: "N", None: "missing"}[now]
            diffs.append(f"{opt.module}.{opt.param} is {shown} (configured {opt.value})")
    loaded = sorted(set(spec.gpu_modules) & set(status.inputs.modules))
    if loaded:
        diffs.append(f"host GPU driver loaded: {', '.join(loaded)}")
    return diffs


def plan_host(
    cfg: NodeConfig,
    info: NodeOsInfo,
    status: TeeStatus,
    files: HostBootFiles,
    distro: Distro | None,
) -> HostPlan:
    """Everything the host stage decides for one TEE host (``cfg.tee`` is ``snp`` or ``tdx``)."""
    if distro is None:
        return HostPlan(
            problems=(
                f"{info.os_id or 'unknown OS'} {info.os_version} is not a supported distribution (supported: "
                f"{supported_list()}); the host stage needs its bootloader and initramfs commands "
                "(ccfactory/data/distros.toml): reinstall the node with a supported release",
            )
        )
    try:
        spec = tee_spec(cfg.tee, gpus=cfg.has_gpus)
    except KeyError:
        return HostPlan(problems=(f"the host stage has no configuration for tee {cfg.tee!r} (roles/host/boot.toml)",))
    try:
        overlays = site_overlays(cfg)
    except TemplateOverlayError as e:
        return HostPlan(problems=(str(e),))

    problems, notes = kernel_findings(cfg, info, files, distro.family)
    if info.cpu_vendor and info.cpu_vendor != spec.cpu_vendor:
        problems.append(
            f"tee is {cfg.tee} ({spec.name}) but the CPU is {info.cpu_vendor}, not {spec.cpu_vendor}: "
            "fix tee (or the snp/tdx group) in the inventory"
        )
    grubby = _grubby_step(spec, files, distro) if distro.cmdline_method == "grubby" else None
    if grubby is not None:
        dropin = OWNED_ARGS
        cmdline_file = grubby.owned
        problems += list(grubby.problems)
        problems += _default_grub_findings(spec, files)
    else:
        dropin = distro.grub_dropin
        cmdline_file = OwnedFile(dropin, render_dropin(spec, overlays), files.grub_file(dropin))
    owned = (
        cmdline_file,
        OwnedFile(TEE_CONF, render_tee_conf(spec, overlays), files.modprobe_file(TEE_CONF)),
        OwnedFile(GPU_CONF, render_gpu_conf(spec, overlays), files.modprobe_file(GPU_CONF)),
    )
    if grubby is None:
        problems += _grub_findings(spec, files, owned[0].wanted, distro)
    problems += _modprobe_findings(spec, files)

    if grubby is None and not files.has_tool(distro.update_bootloader):
        problems.append(
            f"{distro.tools()[0]} is missing on this {distro.id} host (distros.toml: "
            f"update_bootloader = {distro.update_bootloader!r}): install GRUB (grub-pc or grub-efi-amd64)"
        )
    initramfs = initramfs_step(distro, files.tools, files.initramfs_images)
    problems += [initramfs.problem] if initramfs.problem else []
    notes += [initramfs.note] if initramfs.note else []

    if problems:
        return HostPlan(spec, dropin, tuple(problems), tuple(notes), owned)

    diffs = _running_diffs(spec, status)
    firmware = firmware_failures(status, cfg.tee, spec.firmware_checks)
    pending = marker_pending(files.marker, info.boot_id)
    stale = files.marker is not None and not pending
    bootloader_command = grubby.command(distro) if grubby is not None else distro.update_bootloader
    grub_changes = owned[0].changes or bool(grubby is not None and bootloader_command)
    modprobe_changes = owned[1].changes or owned[2].changes
    changes = grub_changes or modprobe_changes
    needs_reboot = bool(diffs) and (changes or pending) and not firmware
    not_in_effect = ""
    if diffs and (changes or pending) and firmware:
        not_in_effect = (
            f"no reboot: {spec.short} is still off in BIOS, which a reboot cannot fix; run the firmware stage, "
            "then this stage again"
        )
    reason = ""
    if needs_reboot:
        why = "host boot configuration changed" if changes else "host boot configuration written before an unfinished reboot"
        reason = f"{why}: {'; '.join(diffs)}"
    return HostPlan(
        spec=spec,
        dropin=dropin,
        notes=tuple(notes),
        files=owned,
        # grubby: only the argument changes (the entries are read back, a pending reboot needs none)
        update_bootloader=bootloader_command if (grub_changes or pending) else None,
        update_initramfs=initramfs.command if (modprobe_changes or pending) else None,
        running_diffs=tuple(diffs),
        firmware=tuple(str(c) for c in firmware),
        pending=pending,
        stale_marker=stale,
        needs_reboot=needs_reboot,
        reboot_if_bios_on=bool(not_in_effect),
        reboot_reason=reason or (f"host boot configuration changed: {'; '.join(diffs)}" if not_in_effect else ""),
        not_in_effect=not_in_effect,
        record_after_bootloader=grubby is not None,
    )


__all__ = ["DROPIN", "GPU_CONF", "OWNED_ARGS", "REBOOT_MARKER", "TEE_CONF", "HostPlan", "OwnedFile", "plan_host"]
