"""Minimum host kernels per TEE and distribution, as data (``roles/host/kernels.toml``).

Example::

    >>> results = check_host_kernel("snp", "6.8.0-45-generic", "ubuntu", "24.04")
    >>> [(r.name, r.severity) for r in results if r.ok is False]  # doctest: +NORMALIZE_WHITESPACE
    [('host_kernel>=6.11', 'error'), ('host_kernel>=6.16.1', 'warning'),
     ('host_kernel>=6.17', 'warning')]
    >>> print(results[0].hint[:60])
    install a kernel >= 6.11 and reboot into it: Ubuntu 25.10 an
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import tomllib

from ccfactory.parsers.checks import ERROR, WARNING, CheckResult
from ccfactory.parsers.kernel import kernel_version

TEE_NAMES = {"snp": "SEV-SNP", "tdx": "TDX"}


@dataclass(frozen=True)
class KernelMinimum:
    tee: str  # snp, tdx or *
    distro: str  # os-release ID or *
    level: str  # required or recommended
    min: str
    why: str
    source: str
    family: str = "*"  # distros.toml `family` (rhel matches RHEL, Rocky, AlmaLinux) or *

    @property
    def version(self) -> tuple[int, int, int]:
        v = kernel_version(self.min)
        assert v is not None, f"kernels.toml: bad version {self.min!r}"
        return v

    def applies(self, tee: str, os_id: str, family: str = "") -> bool:
        return self.tee in ("*", tee) and self.distro in ("*", os_id) and self.family in ("*", family)


@cache
def _table() -> tuple[tuple[KernelMinimum, ...], dict[str, str], dict[str, str]]:
    raw = tomllib.loads(resources.files("ccfactory.roles.host").joinpath("kernels.toml").read_text())
    rows = tuple(KernelMinimum(**row) for row in raw["kernel"])
    return rows, dict(raw.get("fix", {})), dict(raw.get("fix_family", {}))


def kernel_minimums() -> tuple[KernelMinimum, ...]:
    return _table()[0]


def fix_for(os_id: str, minimum: str, family: str = "") -> str:
    """The fix text for ``os_id`` (``[fix]``), else for its family (``[fix_family]``: ``rhel`` for
    Rocky), else the ``*`` one."""
    _, fixes, by_family = _table()
    text = fixes.get(os_id) or by_family.get(family) or fixes.get("*", "install a kernel >= {min}")
    return text.format(min=minimum)


def check_host_kernel(tee: str, release: str, os_id: str = "", os_version: str = "", family: str = "") -> tuple[CheckResult, ...]:
    """Compare ``uname -r`` with every minimum for this TEE and distribution.

    Returns one ``host_kernel>=<min>`` result per applicable row: a failed ``required`` row is an
    error, a failed ``recommended`` row a warning; an unparsable release is unknown.
    ``os_version`` is accepted for rows keyed by release in the future; today rows are per distro.
    """
    del os_version  # rows are per distribution today
    current = kernel_version(release)
    tee_name = TEE_NAMES.get(tee, tee)
    results = []
    for row in kernel_minimums():
        if not row.applies(tee, os_id, family):
            continue
        name = f"host_kernel>={row.min}"
        if current is None:
            results.append(CheckResult(name, None, f"cannot read a version from kernel release {release!r}"))
            continue
        ok = current >= row.version
        severity = ERROR if row.level == "required" else WARNING
        if ok:
            detail = f"kernel {release} >= {row.min} ({row.level} for {tee_name}: {row.why})"
            results.append(CheckResult(name, True, detail, severity=severity))
        else:
            detail = (
                f"kernel {release} is older than {row.min}, {row.level} for {tee_name} hosts ({row.why}; {row.source})"
            )
            results.append(CheckResult(name, False, detail, fix_for(os_id, row.min, family), severity))
    return tuple(results)
