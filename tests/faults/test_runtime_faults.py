"""Runtime-stage faults without the lab: the operation's safe-change path driven against a
scripted host (what containerd answers is scripted, every command ccfactory sends is recorded),
a bad checksum, a Kata needing a newer containerd, a GPU shim on a node without GPUs.

The same faults run for real against Debian's containerd in tests/lab/test_runtime_stage.py.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from ccfactory.bom import Artifact
from ccfactory.bom.fetch import ChecksumMismatch, cache_path, fetch_artifact
from ccfactory.coco import spec
from ccfactory.coco.containerd_config import Handler
from ccfactory.config import ArtifactSource
from ccfactory.roles.runtime import containerd as ops
from ccfactory.parsers.sections import MARKER

HANDLERS = [Handler.for_shim("qemu-snp")]
MAIN = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\nruntime_type = "io.containerd.runc.v2"\n'


def _dump(handlers) -> list[str]:
    lines = ["version = 2"]
    for h in handlers:
        lines += [f'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{h}]', f'runtime_type = "io.containerd.{h}.v2"']
    return lines


def probe(active=True, handlers=("runc",), cri="ok", main=MAIN):
    return [
        f"{MARKER}version", "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
        f"{MARKER}binary", "/usr/bin/containerd", f"{MARKER}active", "active" if active else "failed",
        f"{MARKER}enabled", "enabled", f"{MARKER}candidate", "1.6.20", f"{MARKER}main", *main.splitlines(),
        f"{MARKER}dropin-missing", f"{MARKER}dump", *_dump(handlers), f"{MARKER}dump-exit 0",
        f"{MARKER}default", "version = 2", f"{MARKER}cri", cri if active else "", f"{MARKER}links",
    ]  # fmt: skip


class ScriptedHost:
    """Answers ccfactory's commands like a node whose containerd behaves as scripted."""

    def __init__(self, validate_error: str = "", healthy_after_restart: bool = True):
        self.commands: list[str] = []
        self.validate_error = validate_error
        self.healthy_after_restart = healthy_after_restart
        self.restarts = 0
        self.restored = False
        self.logs: list[str] = []

    def run_shell_command(self, command, print_output=False, **kw):  # noqa: ARG002
        text = str(command.get_raw_value() if hasattr(command, "get_raw_value") else command)
        self.commands.append(text)
        out: list[str] = []
        ok = True
        if "config dump 2>&1" in text and ".ccfactory-new" in text:
            ok = not self.validate_error
            out = [self.validate_error] if self.validate_error else _dump(["runc", "kata-qemu-snp"])
        elif "### ccfactory:version" in text or "ccfactory:version" in text:
            if self.restarts == 0:
                out = probe()
            elif self.restarts == 1:
                out = probe(active=True, handlers=("runc", "kata-qemu-snp"), cri="ok" if self.healthy_after_restart else "error")
            else:
                out = probe()
        elif text.startswith("systemctl restart"):
            self.restarts += 1
        elif "ctr --address" in text:
            ok = self.healthy_after_restart or self.restarts != 1
        elif "journalctl" in text:
            out = ['level=warning msg="failed to load plugin io.containerd.grpc.v1.cri" error="invalid plugin config"']
        elif ".ccfactory-prev" in text and "cp -p" in text and "elif" in text:
            self.restored = True
        return ok, SimpleNamespace(output_lines=out)

    def log_styled(self, message, **kw):  # noqa: ARG002
        self.logs.append(message)

    def log(self, message, **kw):  # noqa: ARG002
        self.logs.append(message)


def apply(h: ScriptedHost) -> bool:
    state = SimpleNamespace(print_output=False)
    return ops._apply(state, h, {}, HANDLERS, False, 2, False, (), [], 0.5)


def test_config_containerd_rejects_is_never_swapped_and_containerd_not_restarted():
    h = ScriptedHost(validate_error='containerd: failed to load TOML: toml: cannot load TOML value of type int64 into a Go string')
    assert apply(h) is False
    assert h.restarts == 0
    assert not any("/etc/containerd/config.toml.tmp" in c for c in h.commands), "the live file was touched"
    assert any("containerd rejected the new configuration" in m and "cannot load TOML value of type int64" in m for m in h.logs)


def test_unhealthy_after_restart_is_rolled_back_and_checked_again():
    h = ScriptedHost(healthy_after_restart=False)
    assert apply(h) is False
    assert h.restored and h.restarts == 2
    message = h.logs[-1]
    assert "rolled back: containerd is running again on the previous configuration" in message
    assert "the CRI plugin is error" in message and "failed to load plugin io.containerd.grpc.v1.cri" in message


def test_healthy_change_keeps_the_previous_file():
    h = ScriptedHost()
    assert apply(h) is True
    assert h.restarts == 1 and not h.restored
    assert any("config.toml.ccfactory-prev" in c and "cp -p" in c for c in h.commands)
    assert any("config.toml.ccfactory-orig" in c for c in h.commands)


def test_wrong_checksum_caches_nothing(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "kata-static-x.tar.xz").write_bytes(b"not the pinned release")
    wrong = Artifact(name="kata-static", version="x", filename="kata-static-x.tar.xz", url="https://example/x",
                     sha256=hashlib.sha256(b"pinned").hexdigest(), source="test", pin="upstream-checksum-file")
    source = ArtifactSource(kind="local", directory=str(src), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ChecksumMismatch, match="does not match the BOM's"):
        fetch_artifact(wrong, source)
    assert not cache_path(wrong, source).exists()
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_kata_needing_newer_containerd_than_anything_reachable():
    need = spec.kata_requirement("4.1.0")
    choice = spec.choose_containerd("1.6.20", "1.6.20", None, "the BOM's containerd could not be fetched: Could not resolve host",
                                    need.min_containerd, "kata-static 4.1.0")
    assert choice.action == "fail"
    assert "needs containerd >= 1.7: installed 1.6.20, the distribution offers 1.6.20" in choice.problems[0]
    assert "Could not resolve host" in choice.problems[0]


def test_gpu_shim_on_node_without_gpus():
    _, problems = spec.select_shims("snp", 0, 0, ("qemu-snp", "qemu-nvidia-gpu-snp"))
    assert problems == [
        "GPU shim qemu-nvidia-gpu-snp requested on a node without GPUs (inventory gpu_count 0, 0 NVIDIA GPU(s) found); "
        "remove it, or fix gpu_count and run the gpu stage first"
    ]
