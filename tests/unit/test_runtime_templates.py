"""Runtime templates rendered and parsed by real parsers (tomllib, json), and the config merges."""

from __future__ import annotations

import json
import tomllib

import pytest

from ccfactory.roles.runtime.kata import render_shim_dropin
from ccfactory.coco import containerd_config as cc
from ccfactory.coco import spec
from ccfactory.roles.runtime import k8s
from ccfactory.coco.containerd_config import Handler

HANDLERS = [Handler.for_shim("qemu-snp"), Handler.for_shim("qemu-nvidia-gpu-snp")]


@pytest.mark.parametrize("version,plugin", [(2, "io.containerd.grpc.v1.cri"), (3, "io.containerd.cri.v1.runtime")])
def test_dropin_is_toml_with_every_handler_field(version, plugin):
    doc = tomllib.loads(cc.render_dropin(HANDLERS, version))
    assert doc["version"] == version
    runtimes = doc["plugins"][plugin]["containerd"]["runtimes"]
    snp = runtimes["kata-qemu-nvidia-gpu-snp"]
    assert snp["runtime_type"] == "io.containerd.kata-qemu-nvidia-gpu-snp.v2"
    assert snp["runtime_path"] == "/opt/kata/bin/containerd-shim-kata-v2"
    assert snp["pod_annotations"] == ["io.katacontainers.*"] and snp["privileged_without_host_devices"] is True
    assert snp["options"]["ConfigPath"].endswith("runtimes/qemu-nvidia-gpu-snp/configuration-qemu-nvidia-gpu-snp.toml")
    assert "snapshotter" not in snp
    assert cc.owned_handlers(cc.render_dropin(HANDLERS, version)) == ["kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"]


def test_guest_pull_adds_the_snapshotter_v3_and_v2():
    hs = [Handler.for_shim("qemu-snp", spec.NYDUS_SNAPSHOTTER)]
    v3 = tomllib.loads(cc.render_dropin(hs, 3, guest_pull=True))
    assert v3["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kata-qemu-snp"]["snapshotter"] == "nydus-for-kata-tee"
    assert v3["plugins"]["io.containerd.cri.v1.images"]["runtime_platforms"]["kata-qemu-snp"]["snapshotter"] == "nydus-for-kata-tee"
    assert v3["plugins"]["io.containerd.cri.v1.images"]["disable_snapshot_annotations"] is False
    assert v3["proxy_plugins"]["nydus-for-kata-tee"] == {
        "type": "snapshot", "address": spec.NYDUS_ADDRESS, "exports": {"root": "/var/lib/nydus-for-kata-tee"}
    }
    v2 = tomllib.loads(cc.render_dropin(hs, 2, guest_pull=True))
    assert v2["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["disable_snapshot_annotations"] is False


OPERATOR_V2 = """\
# operator's own comment
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
"""


def test_main_config_mode_keeps_the_operators_settings_and_removes_old_handlers():
    first = cc.main_config_with_handlers(OPERATOR_V2, "", HANDLERS, 2)
    doc = tomllib.loads(first)
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.9" and doc["root"] == "/var/lib/containerd"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert set(cri["containerd"]["runtimes"]) == {"runc", "kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"}
    assert first.startswith("# Managed by ccfactory") and cc.owned_handlers(first) == ["kata-qemu-snp", "kata-qemu-nvidia-gpu-snp"]
    second = cc.main_config_with_handlers(first, "", HANDLERS[:1], 2)
    assert set(tomllib.loads(second)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]) == {"runc", "kata-qemu-snp"}
    assert cc.main_config_with_handlers(second, "", HANDLERS[:1], 2) == second  # converged


def test_main_config_mode_without_a_file_starts_from_containerd_defaults():
    default = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "runc"\n'
    doc = tomllib.loads(cc.main_config_with_handlers(None, default, HANDLERS[:1], 2))
    assert doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"] == "runc"


def test_dropin_mode_adds_only_the_import_and_keeps_comments():
    text = "# keep me\nversion = 3\n\n[plugins.'io.containerd.cri.v1.runtime']\n  x = 1\n"
    out = cc.main_config_importing(text)
    assert out.startswith("# keep me\nversion = 3\n") and tomllib.loads(out)["imports"] == [cc.DROPIN]
    assert cc.main_config_importing(out) == out
    both = cc.main_config_importing('version = 3\nimports = ["/etc/containerd/other.toml"]\n')
    assert tomllib.loads(both)["imports"] == ["/etc/containerd/other.toml", cc.DROPIN]
    globbed = 'version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    assert cc.main_config_importing(globbed) == globbed
    assert tomllib.loads(cc.main_config_without_import(both))["imports"] == ["/etc/containerd/other.toml"]


def test_desired_files_and_difference():
    files = cc.desired_files(drop_in=True, main_current=None, dropin_current=None, default_config="",
                             handlers=HANDLERS, config_version=3)
    assert files.mode == "drop-in" and set(files.files) == {cc.DROPIN, cc.MAIN_CONFIG}
    assert files.differs_from(dict(files.files)) == []
    main = cc.desired_files(drop_in=False, main_current=OPERATOR_V2, dropin_current="old", default_config="",
                            handlers=HANDLERS, config_version=2)
    assert main.files[cc.DROPIN] is None  # a leftover drop-in is removed in main-config mode


@pytest.mark.parametrize("shim", ["qemu-snp", "qemu-tdx", "qemu-nvidia-gpu-snp", "qemu-nvidia-gpu-tdx"])
def test_kata_dropin_is_toml(shim):
    s = spec.shim_settings(shim, spec.KataDefaults(), ("agent.aa_kbc_params=cc_kbc::https://kbs",))
    doc = tomllib.loads(render_shim_dropin(s, "cgroup_no_v1=all"))
    hv = doc["hypervisor"]["qemu"]
    assert hv["confidential_guest"] is True and hv["firmware"] == s.firmware
    assert hv["kernel_params"] == "cgroup_no_v1=all agent.aa_kbc_params=cc_kbc::https://kbs"
    assert doc["agent"]["kata"]["dial_timeout"] == s.dial_timeout
    assert doc["runtime"]["create_container_timeout"] == s.create_container_timeout
    assert hv["enable_annotations"] == list(s.enable_annotations)
    assert ("cold_plug_vfio" in hv) == ("gpu" in shim)
    assert (hv.get("snp_guest_policy") == 196608) == shim.endswith("snp")
    assert ("tdx_quote_generation_service_socket_port" in hv) == shim.endswith("tdx")


def test_runtimeclass_and_node_manifests_parse(tmp_path):
    paths = k8s.write_manifests(tmp_path, "gpu-01", ["qemu-snp", "qemu-nvidia-gpu-snp"])
    docs = [json.loads(p.read_text()) for p in paths]
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        yaml = None
    if yaml:
        assert [yaml.safe_load(p.read_text()) for p in paths] == docs
    rc = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RuntimeClass"}
    gpu = rc["kata-qemu-nvidia-gpu-snp"]
    assert gpu["apiVersion"] == "node.k8s.io/v1" and gpu["handler"] == "kata-qemu-nvidia-gpu-snp"
    assert gpu["overhead"]["podFixed"] == {"memory": "10240Mi", "cpu": "1.0"}
    assert gpu["scheduling"]["nodeSelector"]["nvidia.com/cc.ready.state"] == "true"
    assert gpu["scheduling"]["nodeSelector"]["amd.feature.node.kubernetes.io/snp"] == "true"
    node = next(d for d in docs if d["kind"] == "Node")
    assert node["metadata"]["labels"] == {"ccfactory.io/kata-runtime.kata-qemu-snp": "true",
                                          "ccfactory.io/kata-runtime.kata-qemu-nvidia-gpu-snp": "true"}
    assert k8s.write_manifests(tmp_path, "gpu-01", ["qemu-snp", "qemu-nvidia-gpu-snp"]) == paths


def test_containerd_service_template_is_a_unit():
    import configparser

    from ccfactory.templating import render

    text = render("runtime/containerd.service.j2", ccfactory_source="x")
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.read_string(text)
    assert parser["Service"]["ExecStart"] == "/usr/local/bin/containerd" and parser["Service"]["Type"] == "notify"
