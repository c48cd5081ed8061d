"""The runtime stage on RHEL 9 and Ubuntu 24.04 hosts, on pyinfra's ``@fake`` connector.

Which package manager and package names the stage uses come from ``distros.toml``: apt on
Ubuntu (the release's ``containerd`` package when its candidate meets Kata's minimum), dnf on
RHEL, whose BaseOS/AppStream have no containerd package (``packages.containerd = ""``), so the
stage needs the BOM's pinned containerd release. The containerd fact is read-only: it reads
the package index and never refreshes it (the last test below).
Candidate versions: Ubuntu 24.04 (noble) released with containerd 1.7.12-0ubuntu4
(launchpad.net/ubuntu/+source/containerd), as its archive lists it.
"""

from __future__ import annotations

import pytest
from pyinfra.facts.server import Which

from ccfactory.facts.containerd import ContainerdRuntimes, ContainerdState, candidate_command, probe_command
from ccfactory.facts.gpu import NvidiaGpus
from ccfactory.facts.kata import KataInstall, KataState
from ccfactory.facts.node import NodeOs, NodeOsInfo
from ccfactory.lab import artifacts
from support import plan_role_on_fake_host
from lab_standin import stand_in_lab
from test_role_gpu import Facts, hgx

HOST = "@fake/node1"


class Defaults(Facts):
    """Facts from the table; any other fact (pyinfra's package, service, file facts) answers
    with its own default: nothing installed, no such file."""

    def __call__(self, cls, *args, **kwargs):
        if cls in self.table or cls.__name__ == "FileContents":
            return super().__call__(cls, *args, **kwargs)
        self.asked.append(cls)
        return cls().default() if hasattr(cls, "default") else None


def run_runtime(tmp_path, os_id, version, containerd: ContainerdState, which=()):
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    stand_in_lab(lab, {"node1": HOST})
    artifacts.build(lab, url="https://artifacts.lab.invalid")
    data = {
        "lab": True, "lab_dir": str(lab), "gpu_count": 8, "gpu_model": "H100", "artifact_source": "local",
        "artifact_dir": str(lab / "artifacts"), "artifact_cache_dir": str(tmp_path / "cache"),
        "runtime_output_dir": str(tmp_path / "out"), "fake_delay": 0, "fake_delay_jitter": 0,
    }  # fmt: skip
    asked: dict = {}

    def containerd_fact(**kw):
        asked.setdefault("containerd", kw)  # the role's own read (operations re-read it later)
        return containerd

    facts = Defaults({
        NodeOs: NodeOsInfo(os_id, version, "6.17.0", "AuthenticAMD", "none", "boot-2"),
        NvidiaGpus: hgx("vfio-pci"),
        ContainerdRuntimes: containerd_fact,
        KataInstall: KataState(),
        Which: lambda command, **kw: f"/usr/bin/{command}" if command in which else None,
    })  # fmt: skip
    from ccfactory.roles import runtime

    groups = {g: [HOST] for g in ("workers", "snp", "gpu")}
    ops, _ = plan_role_on_fake_host(HOST, data, groups, facts, runtime.apply, strip="Runtime | ")
    return ops, asked


def op(ops, name):
    return next(o for o in ops if o[0] == name)


def test_ubuntu_2404_installs_its_archives_containerd_with_apt(tmp_path):
    state = ContainerdState(candidate="1.7.12-0ubuntu4")
    ops, asked = run_runtime(tmp_path, "ubuntu", "24.04", state)
    assert asked["containerd"] == {"package_manager": "apt", "package": "containerd"}
    _, change, commands, _ = op(ops, "Runtime packages")
    text = " ".join(str(c) for c in commands)
    assert change and "apt-get update" in text and "containerd" in text and "dnf" not in text


def test_rhel9_has_no_containerd_package_so_the_boms_release_is_needed(tmp_path):
    state = ContainerdState()  # dnf: no containerd package is asked for (packages.containerd = "")
    ops, asked = run_runtime(tmp_path, "rhel", "9.4", state)
    assert asked["containerd"] == {"package_manager": "dnf", "package": ""}
    assert [o[0] for o in ops] == ["Runtime stage inputs"]  # the lab BOM pins no containerd
    message = ops[0][2][0].args[0]
    assert "none installed, the distribution offers none" in message and "the BOM's containerd" in message


def test_rhel9_keeps_an_installed_containerd_and_installs_nothing_with_dnf_or_apt(tmp_path):
    state = ContainerdState(installed=True, version="1.7.27", version_line="containerd containerd.io 1.7.27 x")
    ops, _ = run_runtime(tmp_path, "rhel", "9.4", state, which=("xz", "zstd", "runc"))
    names = [o[0] for o in ops]
    assert "Runtime packages" not in names and "containerd enabled and running" in names


def test_rhel9_installs_missing_tools_with_dnf_under_rhels_names(tmp_path):
    state = ContainerdState(installed=True, version="1.7.27", version_line="containerd containerd.io 1.7.27 x")
    ops, _ = run_runtime(tmp_path, "rhel", "9.4", state, which=("runc",))
    _, change, commands, _ = op(ops, "Runtime packages")
    text = " ".join(str(c) for c in commands)
    assert change and text.startswith("dnf install -y") and "xz-utils" not in text
    assert "dnf update" not in text  # pyinfra's dnf update=True would upgrade every package


def test_a_node_without_a_package_index_and_no_archive_version_fails_naming_the_refresh(tmp_path):
    ops, _ = run_runtime(tmp_path, "ubuntu", "24.04", ContainerdState(index_missing=True))
    message = ops[0][2][0].args[0]
    assert [o[0] for o in ops] == ["Runtime stage inputs"]
    assert "no apt package index" in message and "run `apt-get update` on the node" in message


def test_debian12_without_an_index_uses_the_archives_version_and_the_install_refreshes(tmp_path):
    ops, _ = run_runtime(tmp_path, "debian", "12", ContainerdState(index_missing=True))
    _, change, commands, _ = op(ops, "Runtime packages")
    text = " ".join(str(c) for c in commands)
    assert change and "apt-get update" in text and "containerd" in text


@pytest.mark.parametrize(("pm", "package"), [("apt", "containerd"), ("dnf", "containerd"), ("dnf", "")])
def test_the_containerd_fact_never_refreshes_an_index(pm, package):
    for command in (candidate_command(pm, package), probe_command(package_manager=pm, package=package)):
        assert "apt-get update" not in command and "makecache" not in command
        assert "dnf -C" in command or "dnf" not in command
