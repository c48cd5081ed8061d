"""Supported host distributions, from ``ccfactory/data/distros.toml``.

Everything a stage does differently per distribution (the kernel command line mechanism and
its drop-in directory, the boot loader and initramfs commands, the package manager) is a field
of a row, with its source in the row's ``sources`` table. Roles read these fields; they never
test a distribution's name. An OEM adds a release by adding a row.

Example::

    >>> d = distro_for("rhel", "9.4")
    >>> d.update_initramfs, d.package_manager, d.bootloader_info
    ('dracut --regenerate-all --force', 'dnf', 'grubby --info=ALL')
    >>> d.package("containerd"), d.package("xz"), distro_for("debian", "12").package("xz")
    ('', 'xz', 'xz-utils')
    >>> distro_for("debian", "12").archive_containerd("12"), distro_for("debian", "13").archive_containerd("13")
    ('1.6.20', '')
    >>> distro_for("debian", "12").grub_dropin_dir
    '/etc/default/grub.d'
    >>> distro_for("centos", "7") is None
    True
    >>> r = distro_for("rocky", "9.4")  # like = "rhel": RHEL's fields, its own os-release ID
    >>> r.id, r.family, r.update_initramfs
    ('rocky', 'rhel', 'dracut --regenerate-all --force')
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources

CMDLINE_METHODS = ("grub-dropin", "grubby")
GRUB_DROPIN_NAME = "60-ccfactory.cfg"  # the host stage's file in grub_dropin_dir (sorts after 50-*.cfg)
# grubby hosts: the kernel arguments the host stage added (one per line), so that it removes only
# its own with --remove-args and never an operator's
GRUBBY_OWNED_ARGS = "/etc/ccfactory/kernel-args"
PACKAGE_MANAGERS = ("apt", "dnf")
PACKAGE_ROLES = ("containerd", "runc", "zstd", "xz")  # what [distro.packages] may name
OPTIONAL = {"bootloader_info": "", "packages": {}, "containerd_archive": {}, "like": ""}


class DistroTableError(ValueError):
    """distros.toml (or a site's copy) has a row ccfactory cannot use."""


@dataclass(frozen=True)
class Distro:
    id: str
    versions: tuple[str, ...]
    version_match: str  # exact | major
    family: str
    cmdline_method: str  # grub-dropin | grubby
    grub_dropin_dir: str  # "" when the boot loader reads no drop-ins
    update_bootloader: str
    update_initramfs: str
    initramfs_package: str
    package_manager: str  # apt | dnf
    refresh_index: str
    bootloader_info: str = ""  # grubby: prints every boot entry's args
    like: str = ""  # a rebuild of this earlier row's distribution: every field not given is that row's
    packages: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    containerd_archive: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def matches(self, os_id: str, version: str) -> bool:
        if self.id != os_id:
            return False
        if self.version_match == "major":
            version = version.split(".", 1)[0]
        return version in self.versions

    def tools(self) -> tuple[str, ...]:
        """The commands the host stage runs (first word of each), to check they exist first."""
        return tuple(shlex.split(c)[0] for c in (self.update_bootloader, self.update_initramfs))

    def package(self, role: str) -> str:
        """The package name for ``role`` (``PACKAGE_ROLES``); "" when the release's repositories have none."""
        return self.packages.get(role, "")

    def archive_containerd(self, version: str) -> str:
        """The containerd version release ``version``'s own archive offers ("" when not recorded)."""
        key = version.split(".", 1)[0] if self.version_match == "major" else version
        return self.containerd_archive.get(key, "")

    @property
    def grub_dropin(self) -> str:
        """Path of the host stage's owned command-line drop-in (grub-dropin only)."""
        return f"{self.grub_dropin_dir}/{GRUB_DROPIN_NAME}" if self.grub_dropin_dir else ""


def parse_distros(text: str, origin: str = "distros.toml") -> tuple[Distro, ...]:
    """Rows of a distros.toml; a missing field or an unknown method is an error naming row and field."""
    raw = tomllib.loads(text)
    names = [f.name for f in fields(Distro)]
    out = []
    earlier: dict[str, dict] = {}
    for i, row in enumerate(raw.get("distro", [])):
        where = f"{origin}: distro[{i}] ({row.get('id', '?')})"
        if row.get("like"):
            base = earlier.get(row["like"])
            if base is None:
                raise DistroTableError(f"{where}: like = {row['like']!r} names no earlier row; fix: put the row of "
                                       f"{row['like']!r} first, or give every field")  # fmt: skip
            inherited = {k: v for k, v in base.items() if k not in ("id", "versions", "like", "sources")}
            tables = {k: {**base.get(k, {}), **row.get(k, {})} for k in ("packages", "containerd_archive")}
            # a field the row gives itself keeps no source of the row it is like
            sources = {k: v for k, v in base.get("sources", {}).items() if k not in row}
            row = {**inherited, **row, **tables, "sources": {**sources, **row.get("sources", {})}}
        earlier.setdefault(row.get("id", "?"), row)
        missing = [n for n in names if n not in row and n != "sources" and n not in OPTIONAL]
        if missing:
            raise DistroTableError(f"{where}: missing {', '.join(missing)}; fix: add them (see the file's header)")
        unknown = sorted(set(row) - set(names))
        if unknown:
            raise DistroTableError(f"{where}: unknown field(s) {', '.join(unknown)}; fix: remove or rename them")
        checks = (("version_match", ("exact", "major")), ("cmdline_method", CMDLINE_METHODS),
                  ("package_manager", PACKAGE_MANAGERS))  # fmt: skip
        for key, allowed in checks:
            if row[key] not in allowed:
                raise DistroTableError(f"{where}: {key} = {row[key]!r}; fix: one of {', '.join(allowed)}")
        if row["cmdline_method"] == "grub-dropin" and not row["grub_dropin_dir"]:
            raise DistroTableError(f"{where}: cmdline_method grub-dropin needs grub_dropin_dir; fix: set it")
        if row["cmdline_method"] == "grubby" and not row.get("bootloader_info"):
            raise DistroTableError(f"{where}: cmdline_method grubby needs bootloader_info (the command that prints "
                                   "each boot entry's args); fix: set it")
        bad = sorted(set(row.get("packages", {})) - set(PACKAGE_ROLES))
        if bad:
            raise DistroTableError(f"{where}: packages: unknown {', '.join(bad)}; fix: one of {', '.join(PACKAGE_ROLES)}")
        tables = {k: dict(row.get(k, v)) for k, v in OPTIONAL.items() if isinstance(v, dict)}
        out.append(Distro(**{**row, **tables, "versions": tuple(row["versions"]), "sources": dict(row.get("sources", {}))}))
    return tuple(out)


@cache
def distros() -> tuple[Distro, ...]:
    return parse_distros(resources.files("ccfactory.data").joinpath("distros.toml").read_text())


def distro_for(os_id: str, version: str) -> Distro | None:
    """The supported distro matching os-release ID and VERSION_ID, or None."""
    return next((d for d in distros() if d.matches(os_id, version)), None)


def supported_list() -> str:
    return "; ".join(f"{d.id} {', '.join(d.versions)}" for d in distros())


@dataclass(frozen=True)
class InitramfsStep:
    """Whether and how a stage regenerates the initramfs after changing module settings."""

    command: str | None = None  # run it; None: nothing to run
    problem: str | None = None  # the stage must stop: the host boots an initramfs it cannot regenerate
    note: str | None = None  # why nothing runs


def initramfs_step(distro: Distro, tools: frozenset[str] | set[str], images: tuple[str, ...]) -> InitramfsStep:
    """The distribution's ``update_initramfs``, when its tool is on the host (``tools``: names found).

    A host without the tool but with initramfs images (``/boot/initrd.img-*``, ``/boot/initramfs-*``)
    is a problem, never a skip: modprobe.d settings would not reach the early boot. A host with
    neither reads modprobe.d from the root filesystem: nothing to regenerate, said as a note.
    """
    tool = distro.tools()[1]
    if tool in tools:
        return InitramfsStep(command=distro.update_initramfs)
    if images:
        return InitramfsStep(problem=(
            f"{tool} is missing but the host boots with an initramfs ({images[0]}), which must get the module "
            f"settings (distros.toml: update_initramfs = {distro.update_initramfs!r} for {distro.id}): install "
            f"{distro.initramfs_package}, or, if this host uses another generator, give its release a row of its own "
            "in distros.toml"
        ))  # fmt: skip
    return InitramfsStep(note=(
        f"no initramfs on this host (no image in /boot, no {tool}): modprobe.d is read from the root filesystem, "
        "nothing to regenerate"
    ))  # fmt: skip
