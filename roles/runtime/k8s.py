"""Kubernetes objects for the runtime stage: RuntimeClass per handler and node labels (pure).

RuntimeClass as kata-deploy's Helm chart writes it (``templates/runtimeclasses.yaml``;
cc-stack.md §4.4): ``handler`` = the containerd handler, ``overhead.podFixed`` and
``scheduling.nodeSelector``. Manifests are written as JSON documents (JSON is YAML, and
``kubectl apply -f`` reads both), so they are parsed with the standard library in tests.

Example::

    >>> rc = runtime_class("qemu-snp")
    >>> rc["handler"], rc["overhead"]["podFixed"]["memory"]
    ('kata-qemu-snp', '2048Mi')
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from ccfactory.coco import spec

MANAGED_BY = {"app.kubernetes.io/managed-by": "ccfactory"}


def runtime_class(shim: str) -> dict:
    tee = spec.shim_tee(shim)
    selector = dict(spec.NODE_SELECTOR.get(tee, {}))
    if spec.is_gpu_shim(shim):
        selector.update(spec.GPU_NODE_SELECTOR)
    selector[f"{spec.CCFACTORY_LABEL}.{spec.handler_name(shim)}"] = "true"
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": spec.handler_name(shim), "labels": dict(MANAGED_BY)},
        "handler": spec.handler_name(shim),
        "overhead": {"podFixed": dict(spec.OVERHEAD[shim])},
        "scheduling": {"nodeSelector": selector},
    }


def node_labels(shims: Iterable[str]) -> dict[str, str]:
    """Labels ccfactory puts on a node: one per Kata handler it serves."""
    return {f"{spec.CCFACTORY_LABEL}.{spec.handler_name(s)}": "true" for s in shims}


def node_manifest(node: str, shims: Iterable[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": node_labels(shims)}}


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def write_manifests(directory: Path, node: str, shims: Iterable[str]) -> list[Path]:
    """``runtimeclass-<handler>.yaml`` per shim and ``node-<node>.yaml`` (labels) into ``directory``."""
    shims = list(shims)
    paths = []
    for shim in shims:
        path = directory / f"runtimeclass-{spec.handler_name(shim)}.yaml"
        write_if_changed(path, dumps(runtime_class(shim)))
        paths.append(path)
    path = directory / f"node-labels-{node}.yaml"
    write_if_changed(path, dumps(node_manifest(node, shims)))
    paths.append(path)
    return paths


def kubectl(kubeconfig: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def pending(kubeconfig: str, paths: Iterable[Path]) -> tuple[bool, str]:
    """(differs, message): ``kubectl diff`` exits 0 when the cluster already matches, 1 when it differs."""
    args = ["diff"]
    for p in paths:
        args += ["-f", str(p)]
    try:
        r = kubectl(kubeconfig, *args)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return True, f"kubectl could not run: {exc}"
    if r.returncode == 0:
        return False, ""
    if r.returncode == 1:
        return True, r.stdout[-2000:]
    return True, (r.stderr or r.stdout).strip()[-800:]
