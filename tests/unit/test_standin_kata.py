"""The kata-static lab stand-in: real layout, deterministic tarball, kata-runtime formats."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import re
import tomllib
from pathlib import Path

import pytest

from ccfactory.lab import artifacts
from ccfactory.lab.standins import kata_static
from ccfactory.roles.runtime import tarball_requires

pytestmark = []


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    data = artifacts.tarball_bytes(kata_static.standin())
    root = tmp_path_factory.mktemp("kata")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(root, filter="tar")
    return root / "opt" / "kata"


def test_registered_and_deterministic():
    entry = next(s for s in artifacts.standins() if s.name == "kata-static")
    assert entry.filename == f"kata-static-{kata_static.VERSION}-amd64.tar.xz"
    assert artifacts.tarball_bytes(entry) == artifacts.tarball_bytes(entry)


def test_layout(tree):
    for rel in ("bin/containerd-shim-kata-v2", "bin/kata-runtime", "bin/qemu-system-x86_64-snp-experimental",
                "share/ovmf/AMDSEV.fd", "share/ovmf/OVMF.inteltdx.fd", "share/kata-containers/vmlinuz-nvidia-gpu.container",
                "share/kata-containers/kata-containers-nvidia-gpu-confidential.img"):
        assert (tree / rel).exists(), rel
    assert (tree / "bin/kata-runtime").stat().st_mode & 0o111


@pytest.mark.parametrize("shim", sorted(kata_static.SHIMS))
def test_configurations_have_the_upstream_structure(tree, shim):
    doc = tomllib.loads((tree / f"share/defaults/kata-containers/configuration-{shim}.toml").read_text())
    assert set(doc) == {"hypervisor", "factory", "agent", "runtime"} and set(doc["agent"]) == {"kata"}
    hv = doc["hypervisor"]["qemu"]
    for key in ("path", "kernel", "image", "firmware", "kernel_params", "default_memory", "default_vcpus",
                "confidential_guest", "enable_annotations", "cold_plug_vfio", "shared_fs", "rootfs_type"):
        assert key in hv, key
    assert "create_container_timeout" in doc["runtime"] and "dial_timeout" in doc["agent"]["kata"]
    if shim == "qemu-nvidia-gpu-snp":
        assert hv["path"].endswith("qemu-system-x86_64-snp-experimental") and hv["snp_guest_policy"] == 196608
        assert hv["cold_plug_vfio"] == "root-port" and hv["rootfs_type"] == "erofs" and hv["sev_snp_guest"] is True
    if shim == "qemu-tdx":
        assert hv["firmware"].endswith("OVMF.inteltdx.fd") and hv["tdx_quote_generation_service_socket_port"] == 0


def _kata_runtime(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(tree / "bin/kata-runtime"), *args], capture_output=True, text=True)


def test_version_output_format(tree):
    out = _kata_runtime(tree, "--version").stdout.splitlines()
    assert out[0] == f"kata-runtime  : {kata_static.VERSION}"
    assert out[1].startswith("   commit   : ") and out[2].startswith("   OCI specs: ")


def test_env_reads_config_d_dropins_in_order(tree, tmp_path):
    shim_dir = tmp_path / "runtimes" / "qemu-snp"
    (shim_dir / "config.d").mkdir(parents=True)
    config = shim_dir / "configuration-qemu-snp.toml"
    config.write_text((tree / "share/defaults/kata-containers/configuration-qemu-snp.toml").read_text())
    (shim_dir / "config.d" / "50-ccfactory.toml").write_text('[hypervisor.qemu]\ndefault_memory = 4096\nkernel_params = "a=1"\n')
    (shim_dir / "config.d" / "90-site.toml").write_text("[hypervisor.qemu]\ndefault_memory = 6144\n")
    env = json.loads(_kata_runtime(tree, "--config", str(config), "env", "--json").stdout)
    assert env["Hypervisor"]["DefaultMemory"] == 6144 and env["Kernel"]["Parameters"] == "a=1"
    assert env["Runtime"]["Config"]["Path"] == str(config)
    assert [Path(p).name for p in env["Runtime"]["Config"]["DropIns"]] == ["50-ccfactory.toml", "90-site.toml"]
    toml_env = _kata_runtime(tree, "--config", str(config), "env").stdout
    assert "[Hypervisor]" in toml_env and "[Runtime.Config]" in toml_env


def test_check_names_a_missing_tee(tree):
    r = _kata_runtime(tree, "--config", str(tree / "share/defaults/kata-containers/configuration-qemu-snp.toml"), "check")
    # the test machine has no SEV-SNP: the stand-in says so like kata-runtime (ERRO lines, exit 1)
    if r.returncode:
        assert "System is not capable of running Kata Containers" in r.stderr
    else:
        assert "System is capable of running Kata Containers" in r.stdout


def test_metadata_declares_its_containerd_minimum(tmp_path):
    path = tmp_path / kata_static.FILENAME
    path.write_bytes(artifacts.tarball_bytes(kata_static.standin()))
    assert tarball_requires(str(path)) == {"containerd": "1.6"}
    assert tarball_requires(str(tmp_path / "x.tar.zst")) is None


DOCS = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"
_SETTING = re.compile(r"^`(?P<key>[a-z_.]+)` = `(?P<value>.+)` on (?P<shims>[a-z0-9, -]+)$")


def _contract_rows() -> list[list[str]]:
    section = DOCS.read_text().split("## Kata stand-in contract", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[0] != "behaviour"]


def test_contract_table_rows_cite_upstream_and_name_a_real_test():
    rows = _contract_rows()
    assert len(rows) >= 25
    root = Path(__file__).resolve().parents[2]
    for behaviour, upstream, _standin, test in rows:
        assert upstream == "—" or upstream.startswith("`kata-containers@4.1.0:"), behaviour
        path, _, name = test.split("`")[1].partition("::")
        assert (root / path).is_file(), test
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", (root / path).read_text(), re.M), test


def test_standin_matches_the_contract_table(tree):
    checked = 0
    for behaviour, *_ in _contract_rows():
        m = _SETTING.match(behaviour)
        if not m:
            continue
        want = tomllib.loads(f"v = {m['value']}")["v"]
        section, key = m["key"].rsplit(".", 1)
        for shim in (s.strip() for s in m["shims"].split(",")):
            doc = tomllib.loads((tree / f"share/defaults/kata-containers/configuration-{shim}.toml").read_text())
            table = doc
            for part in section.split("."):
                table = table[part]
            assert table.get(key) == want, f"{shim}: {m['key']} is {table.get(key)!r}, Kata 4.1.0 ships {want!r}"
            checked += 1
    assert checked >= 60
