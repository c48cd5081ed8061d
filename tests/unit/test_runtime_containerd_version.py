"""The containerd drop-in follows the root config's version, checked against containerd's own
load rules (containerd@v2.3.4:cmd/containerd/server/config/config.go), modelled here:

* config.go:474-481: the first file loaded (the root) fixes ``rootConfigVersion``; a later file
  with a higher ``version`` fails with "drop-in config version N higher than root config version M";
* config.go:483-506: a file with a lower version than the newest (``out.Version``, 4 at v2.3.4:
  version/version.go:41) is migrated one version at a time, the CRI runtime plugin moving
  ``io.containerd.grpc.v1.cri`` to ``io.containerd.cri.v1.runtime``
  (plugins/cri/runtime/plugin.go:204-219);
* config.go:604-628: maps merge by key (the runtimes of every file end up side by side).

kata-deploy picks the plugin id the same way (kata-containers@4.1.0:
tools/packaging/kata-deploy/binary/src/runtime/containerd.rs:93-107).
"""

from __future__ import annotations

import copy
import tomllib

import pytest

from ccfactory.coco import containerd_config as cc
from ccfactory.coco.containerd_config import Handler

CONFIG_VERSION = 4  # containerd@v2.3.4:version/version.go:41
HANDLERS = [Handler.for_shim("qemu-snp"), Handler.for_shim("qemu-nvidia-gpu-snp")]


class ContainerdLoadError(Exception):
    pass


def _merge(to: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(to.get(k), dict):
            _merge(to[k], v)
        else:
            to[k] = copy.deepcopy(v)


def _migrate_cri(doc: dict) -> None:
    """v2 -> v3: the CRI runtime settings move to io.containerd.cri.v1.runtime (plugin.go:204-219)."""
    plugins = doc.setdefault("plugins", {})
    src = plugins.get("io.containerd.grpc.v1.cri")
    if isinstance(src, dict) and "containerd" in src:
        dst = plugins.setdefault("io.containerd.cri.v1.runtime", {})
        _merge(dst.setdefault("containerd", {}), src["containerd"])


def containerd_2_3_load(files: dict[str, str], root: str) -> dict:
    """containerd 2.3.4's LoadConfigWithPlugins over ``files`` (path -> text), for the CRI parts."""
    out: dict = {"version": CONFIG_VERSION}
    pending, loaded, root_version = [root], set(), 0
    while pending:
        path, pending = pending[0], pending[1:]
        if path in loaded:
            continue
        doc = tomllib.loads(files[path])
        version = doc.get("version", 0)
        if root_version == 0:
            root_version = version
        if version > root_version:
            raise ContainerdLoadError(f"drop-in config version {version} higher than root config version {root_version}")
        if version < CONFIG_VERSION:
            if version < 2 and "cri" in doc.get("plugins", {}):  # v1Migrate: short ids to URIs
                doc["plugins"]["io.containerd.grpc.v1.cri"] = doc["plugins"].pop("cri")
            if version < 3:
                _migrate_cri(doc)
        doc.pop("version", None)
        _merge(out, {k: v for k, v in doc.items() if k != "imports"})
        loaded.add(path)
        pending += list(doc.get("imports", []))
    return out


def runtimes(effective: dict) -> dict:
    return effective.get("plugins", {}).get("io.containerd.cri.v1.runtime", {}).get("containerd", {}).get("runtimes", {})


OPERATOR_ROOTS = {
    2: 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\nruntime_type = "io.containerd.runc.v2"\n',
    3: "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\nruntime_type = 'io.containerd.runc.v2'\n",
    4: "version = 4\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\nruntime_type = 'io.containerd.runc.v2'\n",
}


@pytest.mark.parametrize("root_version", [2, 3, 4])
def test_dropin_loads_under_every_root_version_and_keeps_the_operators_runtimes(root_version):
    root = OPERATOR_ROOTS[root_version]
    files = cc.desired_files(drop_in=True, main_current=root, dropin_current=None, default_config="",
                             handlers=HANDLERS, config_version=3).files
    dropin = tomllib.loads(files[cc.DROPIN])
    assert dropin["version"] == root_version  # follows the root, never higher
    assert list(dropin["plugins"]) == [cc.CRI_PLUGIN_BY_VERSION[root_version]]
    effective = containerd_2_3_load(files, cc.MAIN_CONFIG)
    assert set(runtimes(effective)) == {"runc", "kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"}
    assert runtimes(effective)["kata-qemu-snp"]["options"]["ConfigPath"].endswith("configuration-qemu-snp.toml")


def test_the_old_always_version_3_dropin_is_refused_by_containerd_under_a_version_2_root():
    old = cc.render_dropin(HANDLERS, 3)  # what ccfactory wrote before: version 3 whatever the root
    files = {cc.MAIN_CONFIG: cc.main_config_importing(OPERATOR_ROOTS[2]), cc.DROPIN: old}
    with pytest.raises(ContainerdLoadError, match="drop-in config version 3 higher than root config version 2"):
        containerd_2_3_load(files, cc.MAIN_CONFIG)


def test_no_root_config_gets_the_containerd_version_default():
    files = cc.desired_files(drop_in=True, main_current=None, dropin_current=None, default_config="",
                             handlers=HANDLERS, config_version=3).files
    assert tomllib.loads(files[cc.MAIN_CONFIG])["version"] == 3
    assert tomllib.loads(files[cc.DROPIN])["version"] == 3
    assert set(runtimes(containerd_2_3_load(files, cc.MAIN_CONFIG))) == {"kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"}


def test_root_without_version_is_version_1_and_gets_the_legacy_plugin_id():
    root = 'root = "/var/lib/containerd"\n'
    files = cc.desired_files(drop_in=True, main_current=root, dropin_current=None, default_config="",
                             handlers=HANDLERS, config_version=3).files
    dropin = tomllib.loads(files[cc.DROPIN])
    assert dropin["version"] == 1 and list(dropin["plugins"]) == ["cri"]
    assert set(runtimes(containerd_2_3_load(files, cc.MAIN_CONFIG))) == {"kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"}


def test_main_config_mode_refuses_a_version_1_root_with_the_fix():
    problem = cc.root_config_problem('[plugins.cri]\nsandbox_image = "x"\n', drop_in=False, config_version=2)
    assert "version 1 config" in problem and "containerd config migrate" in problem
    assert cc.root_config_problem(OPERATOR_ROOTS[2], drop_in=False, config_version=2) == ""
    assert "not valid TOML" in cc.root_config_problem("version = [", drop_in=True, config_version=3)


def test_dropin_is_written_by_the_serializer_not_by_pasting():
    evil = Handler(name='kata"x', shim="qemu-snp", runtime_type="io.containerd.kata-qemu-snp.v2",
                   runtime_path='/opt/kata/bin/a"\n[evil]', config_path="/c")
    doc = tomllib.loads(cc.render_dropin([evil], 3))
    table = doc["plugins"][cc.V3_RUNTIME]["containerd"]["runtimes"]['kata"x']
    assert table["runtime_path"] == '/opt/kata/bin/a"\n[evil]' and "evil" not in doc
