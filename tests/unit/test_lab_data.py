"""Lab data and small pure pieces: profiles, apt sources, GPU state, inventory, addresses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccfactory.lab import gpustate
from ccfactory.lab.aptproxy import render_config
from ccfactory.lab.aptsources import lab_sources, parse_deb822, parse_one_line, sources_for_suite
from ccfactory.lab.errors import LabError
from ccfactory.lab.features import local_platform_features_for, platform_features, write_local_platform_features
from ccfactory.lab.hwprofile import load_profile, profile_names
from ccfactory.lab.hwwriter import write_hardware
from ccfactory.lab.inventory import HOST_KEYS, render_inventory
from ccfactory.lab.manager import plan_nodes
from ccfactory.lab.network import bmc_address, node_address, veth_name
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.render import CharDevice, Directory, Symlink

# ------------------------------------------------------------------ profiles


def test_packaged_profiles():
    assert {"amd-snp-hgx", "intel-tdx", "plain"} <= set(profile_names())
    amd = load_profile("amd-snp-hgx")
    assert (amd.tee, amd.gpu_count, amd.gpu_model, amd.bmc_vendor) == ("snp", 8, "H100", "supermicro")
    assert [d.vendor_device for d in amd.pci if d.role == "nvswitch"] == ["10de:22a3"] * 4
    assert [d.vendor_device for d in amd.pci if d.role == "psp"] == ["1022:14ca"]
    tdx = load_profile("intel-tdx")
    assert (tdx.tee, tdx.gpu_count, tdx.gpu_model) == ("tdx", 2, "B200")
    plain = load_profile("plain")
    assert (plain.tee, plain.gpu_count, plain.pci) == ("none", 0, ())


def test_gpu_models_are_in_the_projects_gpu_table():
    from ccfactory.gpus import gpu_by_device_id

    for name in profile_names():
        for d in load_profile(name).gpus:
            assert gpu_by_device_id(f"{d.device:04x}").model == d.model


@pytest.mark.parametrize("name", ["nope", "../etc/passwd", "Plain"])
def test_unknown_profile_lists_known_ones(name):
    with pytest.raises(LabError, match="amd-snp-hgx"):
        load_profile(name)


# ------------------------------------------------------------------ apt sources


DEB822 = """\
Types: deb
# http://snapshot.example.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main contrib

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def test_deb822_and_suite_filter():
    srcs = sources_for_suite(parse_deb822(DEB822), "bookworm")
    assert [s.one_line() for s in srcs] == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example.org/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example.org/debian bookworm-updates main",
        "deb http://mirror.example.org/debian-security bookworm-security main contrib",
    ]


def test_one_line_format():
    srcs = parse_one_line("deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib # x\n# deb http://c/ d e\n")
    assert srcs[0].one_line() == "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib"
    assert len(srcs) == 1


def test_lab_sources_reads_the_hosts_files(tmp_path):
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(DEB822)
    (d / "old.list.disabled").write_text("deb http://nope/ bookworm main\n")
    assert len(lab_sources("bookworm", tmp_path)) == 3
    with pytest.raises(LabError, match="no 'deb' entry for trixie"):
        lab_sources("trixie", tmp_path)


def test_apt_proxy_config_has_no_remapping_and_narrow_passthrough():
    conf = render_config(Path("/lab/acng"), parse_deb822(DEB822))
    assert "Remap" not in conf
    assert "BindAddress: 10.199.0.1" in conf
    assert "mirror\\.example\\.org" in conf and ".*" not in conf


# ------------------------------------------------------------------ GPU state


def test_gpu_state_file(tmp_path):
    prof = load_profile("amd-snp-hgx")
    st = gpustate.ensure_gpu_state(tmp_path, "node1", prof)
    assert len(st.devices) == 12 and st.devices["0000:18:00.0"].cc_mode == "off"
    assert st.devices["0000:c5:00.0"].kind == "nvswitch"
    path = gpustate.state_path(tmp_path, "node1")
    raw = json.loads(path.read_text())
    raw["devices"]["0000:18:00.0"]["pending_cc_mode"] = "on"
    path.write_text(json.dumps(raw))
    st = gpustate.apply_pending_on_reset(tmp_path, "node1")
    assert st.devices["0000:18:00.0"].cc_mode == "on" and st.devices["0000:18:00.0"].pending_cc_mode is None
    assert gpustate.ensure_gpu_state(tmp_path, "node1", prof).devices["0000:18:00.0"].cc_mode == "on"  # kept


def test_gpu_state_rejects_bad_modes(tmp_path):
    path = gpustate.state_path(tmp_path, "n")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "devices": {"0000:18:00.0": {"kind": "gpu", "model": "H100", "device_id": "2330", "cc_mode": "maybe"}}}))
    with pytest.raises(LabError, match="cc_mode must be one of"):
        gpustate.load_gpu_state(tmp_path, "n")


# ------------------------------------------------------------------ platform features fallback


def test_local_platform_features(tmp_path):
    assert local_platform_features_for(tmp_path, "node1") == PlatformFeatures()
    write_local_platform_features(tmp_path, "node1", PlatformFeatures(smee=True, sev_es_asid_limit=100))
    assert platform_features(tmp_path, "node1", "local").sev_es_asid_limit == 100
    (tmp_path / "nodes/node1/platform.json").write_text('{"smee": true, "bogus": 1}')
    with pytest.raises(LabError, match="unknown PlatformFeatures field"):
        local_platform_features_for(tmp_path, "node1")


# ------------------------------------------------------------------ writer


def test_writer_places_roots_proc_and_devices(tmp_path):
    files = {
        "/sys/module/kvm_amd/parameters/sev_snp": "Y\n",
        "/sys/bus/pci/devices/0000:18:00.0": Symlink("../0000:18:00.0"),
        "/sys/bus/pci/0000:18:00.0/config": bytes(256),
        "/sys/firmware": Directory(),
        "/proc/cmdline": "ro quiet\n",
        "/proc/no-such-file-on-any-host": "x\n",
        "/dev/sev": CharDevice(),
        "/var/log/ccfactory-lab/dmesg": "[    0.000000] hi\n",
    }
    hw, root = tmp_path / "hw", tmp_path / "root"
    args = write_hardware(files, hw, root)
    assert (hw / "sys/module/kvm_amd/parameters/sev_snp").read_text() == "Y\n"
    assert (hw / "sys/bus/pci/devices/0000:18:00.0").readlink() == Path("../0000:18:00.0")
    assert (root / "var/lib/ccfactory-lab/hw/proc/cmdline").read_text() == "ro quiet\n"
    assert f"--bind-ro={hw}/sys/module:/sys/module" in args
    assert "--bind-ro=/var/lib/ccfactory-lab/hw/proc/cmdline:/proc/cmdline" in args
    assert not any("no-such-file" in a for a in args)  # procfs has no mkdir: skipped
    assert "--bind=/dev/null:/dev/sev" in args
    with pytest.raises(LabError, match="outside the lab's hardware roots"):
        write_hardware({"/etc/passwd": "x"}, hw, root)


# ------------------------------------------------------------------ plan, addresses, inventory


def test_default_plan_cycles_profiles():
    plan = plan_nodes(4)
    assert [(n.name, n.profile, n.address, n.bmc_address) for n in plan] == [
        ("node1", "amd-snp-hgx", "10.199.0.11", "10.199.1.11"),
        ("node2", "intel-tdx", "10.199.0.12", "10.199.1.12"),
        ("node3", "plain", "10.199.0.13", "10.199.1.13"),
        ("node4", "amd-snp-hgx", "10.199.0.14", "10.199.1.14"),
    ]
    assert [n.vendor for n in plan_nodes(2, ["plain"], ["dell", "hpe"])] == ["dell", "hpe"]
    with pytest.raises(LabError, match="unknown BMC vendor"):
        plan_nodes(1, vendors=["acme"])


def test_addresses():
    assert node_address(1) == "10.199.0.11" and bmc_address(200) == "10.199.1.210"
    assert len(veth_name("node10")) <= 15
    with pytest.raises(LabError):
        node_address(0)


def _host(tee, gpus, model):
    return {
        "ssh_user": "root", "ssh_key": "/l/keys/id_ed25519", "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no", "lab": True, "lab_dir": "/l", "tee": tee, "gpu_count": gpus,
        "gpu_model": model, "gpu_cc_mode": "on" if gpus else "off", "bmc_vendor": "dell",
        "bmc_address": "10.199.1.11", "bmc_port": 443, "bmc_username": "root",
        "bmc_password_file": "/l/secrets/p", "bmc_ca_bundle": "/l/pki/lab-ca.pem", "bmc_verify_tls": True,
    }  # fmt: skip


def test_inventory_groups_and_keys(tmp_path):
    hosts = [
        ("10.199.0.11", _host("snp", 8, "H100"), ["workers", "snp", "gpu"]),
        ("10.199.0.12", _host("tdx", 2, "B200"), ["workers", "tdx", "gpu"]),
        ("10.199.0.13", _host("none", 0, None), ["kbs"]),
    ]
    ns: dict = {}
    exec(render_inventory(hosts, tmp_path), ns)
    assert [h for h, _ in ns["workers"]] == ["10.199.0.11", "10.199.0.12"]
    assert [h for h, _ in ns["kbs"]] == ["10.199.0.13"]
    assert [h for h, _ in ns["gpu"]] == ["10.199.0.11", "10.199.0.12"]
    assert set(ns["snp"][0][1]) == set(HOST_KEYS)


def test_inventory_passes_the_projects_validation(tmp_path):
    """The lead's NodeConfig validation accepts the lab's host data (lab.json is checked too)."""
    from ccfactory.config import load_node_config
    from lab_standin import stand_in_lab

    # the lab gate proves a running lab from live state: stand one in (tests/lab_standin.py)
    stand_in_lab(tmp_path, {"node1": "10.199.0.11", "node3": "10.199.0.13"},
                 bmcs={"node1": "10.199.1.11", "node3": "10.199.1.13"})
    data = _host("snp", 8, "H100") | {"lab_dir": str(tmp_path)}  # ssh_* are pyinfra connector keys
    cfg = load_node_config("10.199.0.11", ("workers", "snp", "gpu"), data, check_files=False)
    assert cfg.tee == "snp"
    plain = _host("none", 0, None) | {"lab_dir": str(tmp_path), "bmc_address": "10.199.1.13"}
    assert load_node_config("10.199.0.13", ("kbs",), plain, check_files=False).tee == "none"


# ------------------------------------------------------------------ host tools


def test_missing_host_tools_name_their_apt_package(monkeypatch):
    from ccfactory.lab import hostdeps

    monkeypatch.setattr(hostdeps, "which", lambda name: None if name in ("systemd-nspawn", "mmdebstrap") else "/x")
    lines = hostdeps.check_host()
    assert lines == [
        "missing systemd-nspawn (runs each node): apt-get install systemd-container",
        "missing mmdebstrap (builds the node root filesystem): apt-get install mmdebstrap",
    ]
    monkeypatch.setattr(hostdeps.os, "geteuid", lambda: 0)
    with pytest.raises(LabError, match="apt-get install -y --no-install-recommends mmdebstrap systemd-container"):
        hostdeps.require_host()
