"""The kata-static stand-in's SNP firmware and its log of the QEMU launch (issue 20).

The stand-in logs, when a sandbox starts, the line Kata 4.1.0's Go runtime logs before it
starts QEMU (``logger.Infof("launching %s with: %v", path, params)``,
kata-containers@4.1.0:src/runtime/pkg/govmm/qemu/qemu.go:3591), through its syslog hook
(logrus TextFormatter, tag ``kata``: src/runtime/pkg/katautils/logger.go:24,66-77). The kbs
stage's collector (``ccfactory.roles.kbs.snp_measure``) must read that line and measure the
stand-in's firmware through the same code path as on a real site.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import re
import tarfile
from pathlib import Path

import pytest

from ccfactory.roles.kbs import site_values as sv
from ccfactory.roles.kbs import snp_measure as sm
from ccfactory.lab import artifacts
from ccfactory.lab.standins import kata_static

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_OVMF = ROOT / "tests/fixtures/sev-snp-measure/ovmf_AmdSev_suffix.bin"  # sev-snp-measure v0.0.13
DROPIN = 'hypervisor.qemu.default_vcpus = 2\nhypervisor.qemu.kernel_params = "cgroup_no_v1=all agent.x=1"\n'


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """The stand-in tarball unpacked the way the kbs stage unpacks the BOM's kata-static."""
    data = artifacts.tarball_bytes(kata_static.standin())
    tarball = tmp_path_factory.mktemp("tar") / kata_static.FILENAME
    tarball.write_bytes(data)
    return sv.guest_assets(str(tarball), hashlib.sha256(data).hexdigest(), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """The stand-in's kata-runtime program, loaded as a module (it imports nothing from ccfactory)."""
    with tarfile.open(fileobj=io.BytesIO(artifacts.tarball_bytes(kata_static.standin()))) as tar:
        text = tar.extractfile("opt/kata/bin/kata-runtime").read()
    path = tmp_path_factory.mktemp("bin") / "kata-runtime"
    path.write_bytes(text)
    assert not re.search(rb"^\s*(from|import) ccfactory", text, re.M)  # stand-ins import nothing from ccfactory
    loader = importlib.machinery.SourceFileLoader("kata_runtime_standin", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _config(shim: str, dropin: str = "") -> dict:
    return sm.effective_kata_config(kata_static.configuration(shim), [dropin] if dropin else [])


def _line(runtime, config, sandbox="c0ffee") -> str:
    path, args = runtime.launch_args(config, sandbox, "11111111-2222-3333-4444-555555555555")
    return runtime.launch_line(path, args, sandbox, "2026-01-02T03:04:05.123456+00:00", 4242)


def test_snp_firmware_is_sev_snp_measures_own_ovmf_data(assets):
    shipped = (assets / "opt/kata/share/ovmf/AMDSEV.fd").read_bytes()
    assert shipped == UPSTREAM_OVMF.read_bytes()
    sources = (ROOT / "src/ccfactory/lab/standins/kata_static/data/SOURCES.md").read_text()
    assert hashlib.sha256(shipped).hexdigest() in sources and "virtee/sev-snp-measure@v0.0.13" in sources
    # the path Kata 4.1.0's SNP configurations name (Makefile:165 FIRMWARESNPPATH)
    for shim in ("qemu-snp", "qemu-nvidia-gpu-snp"):
        assert _config(shim)["hypervisor"]["qemu"]["firmware"] == "/opt/kata/share/ovmf/AMDSEV.fd"


def test_launch_line_has_the_runtimes_syslog_format(runtime):
    line = _line(runtime, _config("qemu-snp"))
    assert re.fullmatch(
        r'time="2026-01-02T03:04:05\.123456\+00:00" level=info msg="launching /opt/kata/bin/qemu-system-x86_64 with: '
        r'\[-name sandbox-c0ffee,debug-threads=on -uuid \S+ -machine q35,accel=kvm,confidential-guest-support=snp .*\]" '
        r"name=containerd-shim-v2 pid=4242 sandbox=c0ffee source=virtcontainers/hypervisor subsystem=qmp", line)
    assert "sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=196608" in line


def test_command_line_is_composed_in_the_runtimes_order(runtime):
    hv = _config("qemu-snp", DROPIN)["hypervisor"]["qemu"]
    append = runtime.kernel_params(hv, debug=False)
    # qemu_amd64.go:64-77, hypervisor.go root params, quiet + systemd (qemu_arch_base.go:243-251),
    # panic=1 (qemu.go:153), no nr_cpus for a confidential guest, selinux=0, then the configuration's
    assert append.startswith("tsc=reliable no_timer_check rcupdate.rcu_expedited=1 ")
    assert " root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 quiet systemd.show_status=false panic=1 selinux=0 systemd.unit=kata-containers.target " in append
    assert append.endswith("systemd.mask=systemd-networkd.socket cgroup_no_v1=all agent.x=1")
    assert "nr_cpus" not in append
    plain = runtime.kernel_params(_config("qemu")["hypervisor"]["qemu"], debug=True)
    assert " debug systemd.show_status=true systemd.log_level=debug panic=1 nr_cpus=1 " in plain


@pytest.mark.parametrize("shim", ["qemu-snp", "qemu-nvidia-gpu-snp"])
def test_collector_measures_the_standins_launch_like_a_real_one(runtime, assets, shim):
    config = _config(shim, DROPIN)
    log = "\n".join([_line(runtime, _config("qemu-tdx"), "other"), _line(runtime, config), "unrelated line"])
    launch = sm.launch_from_config(config, log)
    assert launch.vcpus == 2 and launch.append == runtime.kernel_params(config["hypervisor"]["qemu"], False)
    assert launch.origins["append"] == sm.FROM_LOG and launch.origins["ovmf"] == sm.FROM_CONFIG
    ref = sv.measured_shim("lab-snp", sv.ShimInputs(shim, (kata_static.configuration(shim), DROPIN), log), assets)
    hv = config["hypervisor"]["qemu"]
    direct = sm.measure(sm.SnpLaunch(ovmf=str(UPSTREAM_OVMF), kernel=str(assets / hv["kernel"].lstrip("/")),
                                     initrd="", append=launch.append, vcpus=2))  # fmt: skip
    assert ref.value == direct and re.fullmatch(r"[0-9a-f]{96}", direct)
    # another vCPU count in the configuration: the log no longer matches, nothing is guessed
    with pytest.raises(sm.MeasureError, match="vcpus"):
        sm.launch_from_config(_config(shim, DROPIN.replace("= 2", "= 4")), log)
    # the same launch with 4 vCPUs logged and configured: another digest
    four = _config(shim, DROPIN.replace("= 2", "= 4"))
    other = sv.measured_shim("lab-snp", sv.ShimInputs(shim, (kata_static.configuration(shim), DROPIN.replace("= 2", "= 4")),
                                                      _line(runtime, four)), assets)  # fmt: skip
    assert other.value != ref.value
