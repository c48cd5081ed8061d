"""The site's reference values from worker reports and the pinned kata-static assets, end to end:
tarball -> unpacked guest assets -> effective shim config + runtime log -> sev-snp-measure ->
RVPS values -> Trustee's default CPU policy (regorus) affirms a guest launched that way."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import trustee_claims  # noqa: E402
from test_kbs_snp_host import REPORTED_TCB, status_answer  # noqa: E402
from test_kbs_snp_measure import APPEND, OVMF, SNP_CONFIG, journal_line  # noqa: E402

from ccfactory.kbs import refvalues as rv  # noqa: E402
from ccfactory.roles.kbs import site_values as sv  # noqa: E402
from ccfactory.roles.kbs import snp_measure as sm  # noqa: E402

POLICY = (trustee_claims.FIXTURES / "ear_default_policy_cpu.rego").read_text()
KERNEL = b"a guest kernel, bytes as kata-static ships them"
CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
DROPIN = """
[hypervisor.qemu]
firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
sev_snp_guest = true
snp_guest_policy = 196608
default_vcpus = 2
"""


def kata_static(tmp_path: Path) -> tuple[str, str]:
    """A tarball in kata-static's layout: ./opt/kata/share/{ovmf,kata-containers}, the kernel a
    relative symlink as upstream ships it, a rootfs image that must not be unpacked."""
    path = tmp_path / "kata-static-test-amd64.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        def add(name: str, data: bytes):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("opt/kata/share/ovmf/AMDSEV.fd", Path(OVMF).read_bytes())
        add("opt/kata/share/kata-containers/vmlinuz-6.12-confidential", KERNEL)
        link = tarfile.TarInfo("./opt/kata/share/kata-containers/vmlinuz-confidential.container")
        link.type, link.linkname = tarfile.SYMTYPE, "vmlinuz-6.12-confidential"
        tar.addfile(link)
        add("opt/kata/share/kata-containers/kata-containers-confidential.img", b"rootfs")
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


NODE_KERNEL = "/opt/kata/share/kata-containers/vmlinuz-confidential.container"
NODE_OVMF = "/opt/kata/share/ovmf/AMDSEV.fd"


def worker(shim_log: str, answer: str | None = None) -> sv.SnpWorker:
    return sv.SnpWorker(
        name="w1", guest_policy=0x3001F, platform_answer=answer or status_answer(REPORTED_TCB), cpuinfo=CPUINFO,
        smt_active="1\n", shims=(sv.ShimInputs("qemu-snp", (SNP_CONFIG, DROPIN), shim_log),),
    )  # fmt: skip


def test_assets_are_unpacked_once_without_disk_images(tmp_path):
    tarball, digest = kata_static(tmp_path)
    root = sv.guest_assets(tarball, digest, tmp_path / "cache")
    assert Path(sv.local_path(root, NODE_KERNEL)).read_bytes() == KERNEL
    assert not (root / "opt/kata/share/kata-containers/kata-containers-confidential.img").exists()
    (root / "marker").write_text("kept")
    assert sv.guest_assets(tarball, digest, tmp_path / "cache") == root and (root / "marker").exists()
    with pytest.raises(sv.AssetError, match="not in the pinned kata-static"):
        sv.local_path(root, "/opt/kata/share/kata-containers/vmlinuz-other")


def test_site_values_affirm_a_guest_launched_as_configured(tmp_path):
    tarball, digest = kata_static(tmp_path)
    assets = sv.guest_assets(tarball, digest, tmp_path / "cache")
    log = journal_line(NODE_KERNEL, NODE_OVMF, APPEND)
    refs = sv.site_reference_set([worker(log)], assets)
    by_name = {r.name: r for r in refs.references}
    assert by_name["snp_launch_measurement"].origin == rv.COMPUTED
    assert "append: runtime log" in by_name["snp_launch_measurement"].source
    assert by_name["snp_microcode"].origin == rv.HOST and by_name["snp_smt_allowed"].origin == rv.SITE_POLICY
    assert any("snp_tsme_enabled" in p for p in refs.pending)  # never guessed
    values = sv.registered_values(refs, {"snp_tsme_enabled": False}, rv.DEFAULT_CPU_SHAPES)
    # what the guest would report: the digest of the same bytes and settings
    expected = sm.measure(sm.SnpLaunch(OVMF, str(assets / "opt/kata/share/kata-containers/vmlinuz-6.12-confidential"),
                                       "", APPEND, 2))  # fmt: skip
    assert values["snp_launch_measurement"] == [expected]
    claims = trustee_claims.snp_claims() | {"measurement": expected}
    result = rv.appraise(POLICY, rv.as_policy_input("snp", claims), values)
    assert (result.status, result.trust_vector["configuration"]) == ("affirming", 2)
    # a guest of another command line is not
    other = sm.measure(sm.SnpLaunch(OVMF, str(assets / "opt/kata/share/kata-containers/vmlinuz-6.12-confidential"),
                                    "", APPEND + " agent.debug_console", 2))  # fmt: skip
    assert rv.appraise(POLICY, rv.as_policy_input("snp", claims | {"measurement": other}), values).status != "affirming"


def test_missing_inputs_are_pending_with_the_reason(tmp_path):
    refs = sv.site_reference_set([worker("nothing logged yet\n", answer="error No such file or directory firmware error 0")], None)
    assert not [r for r in refs.references if r.name in ("snp_launch_measurement", "snp_microcode")]
    text = "\n".join(refs.pending)
    assert "w1/qemu-snp: snp_launch_measurement: no 'launching <qemu> with" in text
    assert "w1: reported TCB: SNP_PLATFORM_STATUS on /dev/sev failed" in text
