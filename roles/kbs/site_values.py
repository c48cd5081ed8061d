"""The site's reference values, assembled from what each worker reports and what ccfactory installed.

For each SNP worker (``ccfactory.kbs.refvalues`` says how each value is checked):

* ``snp_launch_measurement``, one per SNP shim (CPU, GPU): **computed** with sev-snp-measure
  (``ccfactory.roles.kbs.snp_measure``) over the guest assets of the kata-static tarball the BOM pins
  (the bytes the runtime stage installed, checksum-verified), with the shim's effective
  configuration (upstream file + ccfactory's drop-in) and the command line of the runtime's
  own log of a guest of that shim;
* ``snp_bootloader``, ``snp_microcode``, ``snp_snp_svn``, ``snp_tee_svn``: the reported TCB
  **read from the host** (``ccfactory.roles.kbs.snp_host``), ``snp_smt_enabled`` from the kernel;
* ``snp_guest_abi_*``, ``snp_smt_allowed``, ``snp_single_socket``: from the site's guest
  policy ``runtime_snp_guest_policy``;
* ``snp_tsme_enabled``: not readable from the firmware interface; the operator sets it in
  ``kbs_reference_values`` (else it stays pending and the configuration claim falls back to 3).

A value that cannot be obtained yet is *pending* with the reason and what to do; nothing is
guessed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ccfactory.kbs import refvalues as rv
from ccfactory.roles.kbs import snp_host
from ccfactory.roles.kbs import snp_measure as sm
ASSET_DIRS = ("opt/kata/share/kata-containers", "opt/kata/share/ovmf")  # kata-static layout: ./opt/kata/...
SKIP = ("*.img",)  # rootfs disk images are not measured (their verity root hash is in the command line)


class AssetError(RuntimeError):
    """The guest assets cannot be taken from the kata-static tarball."""


def guest_assets(tarball: str, sha256: str, cache_root: Path) -> Path:
    """The kernel/initrd/firmware part of the pinned kata-static tarball, unpacked once into
    ``cache_root/<sha256>`` (GNU tar; ``.tar.zst`` needs ``zstd`` on the controller)."""
    root = cache_root / sha256
    if (root / ".complete").exists():
        return root
    if not shutil.which("tar"):
        raise AssetError("tar is not installed on the controller")
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache_root))
    try:
        args = ["tar", "-xf", tarball, "-C", str(work), "--no-same-owner", "--wildcards"]
        args += [f"--exclude={pattern}" for pattern in SKIP]
        args += list(ASSET_DIRS)
        done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            retry = [a.replace("opt/kata", "./opt/kata", 1) if a.startswith("opt/kata") else a for a in args]
            done = subprocess.run(retry, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            hint = "; install zstd on the controller" if tarball.endswith(".zst") else ""
            raise AssetError(f"cannot unpack the guest assets of {tarball}: {done.stderr.strip()[:300]}{hint}")
        (work / ".complete").write_text(sha256 + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(work, root)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return root


def local_path(root: Path, node_path: str) -> str:
    """Where ``node_path`` (``/opt/kata/...`` on the node) is in the unpacked assets, symlinks
    followed inside ``root`` only."""
    rel = PurePosixPath(node_path)
    if not rel.is_absolute():
        raise AssetError(f"{node_path}: the Kata configuration names a relative path")
    current = root
    parts = list(rel.parts[1:])
    hops = 0
    while parts:
        current = current / parts.pop(0)
        if current.is_symlink():
            hops += 1
            if hops > 40:
                raise AssetError(f"{node_path}: too many symbolic links")
            target = PurePosixPath(os.readlink(current))
            if target.is_absolute():
                current, parts = root, list(target.parts[1:]) + parts
            else:
                current, parts = current.parent, list(target.parts) + parts
    resolved = Path(os.path.normpath(current))
    if root.resolve() not in resolved.resolve().parents and resolved.resolve() != root.resolve():
        raise AssetError(f"{node_path}: leads out of the kata-static assets")
    if not resolved.is_file():
        raise AssetError(f"{node_path}: not in the pinned kata-static tarball (is the node's /opt/kata from the BOM?)")
    return str(resolved)


@dataclass(frozen=True)
class ShimInputs:
    """What one SNP shim of one worker reports: its config files' texts (main, then drop-ins in
    directory order) and the runtime's log lines of QEMU launches (newest last)."""

    shim: str
    config_texts: Sequence[str]
    runtime_log: str


@dataclass(frozen=True)
class SnpWorker:
    name: str
    guest_policy: int
    platform_answer: str  # snp_host.READER's output
    cpuinfo: str
    smt_active: str
    shims: Sequence[ShimInputs] = ()


@dataclass
class Collected:
    references: list[rv.Reference] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def measured_shim(worker: str, inputs: ShimInputs, assets: Path | None) -> rv.Reference:
    """``snp_launch_measurement`` of one shim (raises ``MeasureError``/``AssetError`` with the reason)."""
    if not inputs.config_texts:
        raise sm.MeasureError(f"the shim {inputs.shim} has no configuration on the node yet; fix: run the runtime stage")
    config = sm.effective_kata_config(inputs.config_texts[0], inputs.config_texts[1:])
    launch = sm.launch_from_config(config, inputs.runtime_log)
    if assets is None:
        raise AssetError("the kata-static tarball of the BOM is not on the controller")
    local = sm.SnpLaunch(
        ovmf=local_path(assets, launch.ovmf), kernel=local_path(assets, launch.kernel),
        initrd=local_path(assets, launch.initrd) if launch.initrd else "", append=launch.append, vcpus=launch.vcpus,
        vcpu_type=launch.vcpu_type, guest_features=launch.guest_features, origins=launch.origins,
    )  # fmt: skip
    digest = sm.measure(local)
    return rv.snp_executables_value(digest, f"{worker}/{inputs.shim}", launch.describe())


def snp_worker_values(worker: SnpWorker, assets: Path | None) -> Collected:
    out = Collected()
    try:
        out.references += rv.snp_configuration_values(
            worker.guest_policy, worker.name, smt_enabled=snp_host.smt_active(worker.smt_active),
            tsme_enabled=None, platform_source="/sys/devices/system/cpu/smt/active")  # fmt: skip
        out.pending.append(f"{worker.name}: snp_tsme_enabled: the SEV firmware interface does not report TSME; "
                           "set it in kbs_reference_values (true when the BIOS enables TSME)")  # fmt: skip
    except (rv.ReferenceValueError, snp_host.SnpHostError) as exc:
        out.pending.append(f"{worker.name}: configuration values: {exc}")
    try:
        generation = snp_host.generation_of(*snp_host.cpu_family_model(worker.cpuinfo))
        status = snp_host.parse_platform_status(worker.platform_answer, generation)
        source = f"SNP_PLATFORM_STATUS reported TCB on {worker.name} ({generation}, firmware {status.api_major}.{status.api_minor} build {status.build_id})"
        out.references += rv.snp_hardware_values(status.reported_tcb, worker.name, source)
    except snp_host.SnpHostError as exc:
        out.pending.append(f"{worker.name}: reported TCB: {exc}")
    for inputs in worker.shims:
        try:
            out.references.append(measured_shim(worker.name, inputs, assets))
        except (sm.MeasureError, AssetError, ValueError) as exc:
            out.pending.append(f"{worker.name}/{inputs.shim}: snp_launch_measurement: {exc}")
    return out


def site_reference_set(workers: Sequence[SnpWorker], assets: Path | None) -> rv.ReferenceSet:
    refs = rv.ReferenceSet()
    for worker in workers:
        got = snp_worker_values(worker, assets)
        refs.add(got.references)
        refs.pending += got.pending
    return refs


def registered_values(refs: rv.ReferenceSet, overrides: Mapping, shapes: Mapping[str, str]) -> dict:
    """What RVPS must hold: computed/read values, the operator's per name on top."""
    return refs.values(shapes, overrides=overrides)
