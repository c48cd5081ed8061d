"""The lab's container registry: the Trustee stand-in as an OCI image, pulled by digest.

Upstream ships Trustee as container images only, so a real KBS host runs
``<image>@sha256:<digest>`` under podman. The lab exercises that same path with the
real engines: Debian's ``docker-registry`` (the CNCF distribution registry) listens on
the lab bridge, ``skopeo`` pushes an image built here, podman on the KBS node pulls it by
digest and runs it under the same systemd unit as on a real host. What differs is only
the image (the stand-in, not Trustee) and the registry (plain HTTP on the bridge: nodes
list it as insecure in a lab-only ``registries.conf.d`` file of the node image).

The image: a Debian ``extract`` root filesystem with ``python3-minimal`` and
``python3-cryptography`` (mmdebstrap, through the lab's apt proxy, cached by recipe),
plus the stand-in at ``/opt/ccflab-trustee`` and ``/usr/local/bin/kbs`` (the path of
``kbs`` in upstream's image, ``trustee@v0.21.0:kbs/docker/Dockerfile:79``). One layer,
packed deterministically (sorted entries, mtime 0, numeric owners, gzip mtime 0): the
same inputs give the same digest. ``start`` returns the BOM overlay entry that pins it.

Example::

    entry = registry.start(lab, lab_sources())   # {"name": "trustee", "kind": "oci-image", ...}
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from ccfactory.lab import network, proc, rootfs
from ccfactory.lab.aptsources import AptSource
from ccfactory.lab.errors import LabError
from ccfactory.lab.hostdeps import which

log = logging.getLogger("ccfactory.lab")

PORT = network.REGISTRY_PORT
REPOSITORY = "ccfactory-lab/trustee-kbs"
IMAGE_PACKAGES = ("python3-minimal", "python3-cryptography")
IMAGE_RECIPE_VERSION = 1
STANDIN_ROOT = "opt/ccflab-trustee"
START_TIMEOUT = 15.0
SKIP_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/locale/", "var/cache/apt/", "var/lib/apt/lists/")


def address() -> str:
    return f"{network.LAB_GATEWAY}:{PORT}"


def _dir(lab: Path) -> Path:
    return lab / "registry"


def pidfile(lab: Path) -> Path:
    return lab / "run" / "registry.pid"


# ------------------------------------------------------------------ the image


def _rootfs(lab: Path, sources: list[AptSource]) -> Path:
    recipe = {"v": IMAGE_RECIPE_VERSION, "packages": IMAGE_PACKAGES, "sources": [s.one_line() for s in sources]}
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    target = _dir(lab) / f"rootfs-{h}"
    if (target / ".ccfactory-image-rootfs").is_file():
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    logfile = lab / "logs" / "registry-image.log"
    log.info("registry: building the stand-in image's root filesystem (about 10 s; log %s)", logfile)
    rootfs.mmdebstrap(tmp, variant="extract", packages=IMAGE_PACKAGES, sources=sources, logfile=logfile,
                      what="the Trustee stand-in image")  # fmt: skip
    (tmp / ".ccfactory-image-rootfs").write_text(json.dumps(recipe) + "\n")
    for old in _dir(lab).glob("rootfs-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(target)
    return target


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes | None = None) -> None:
    info.mtime, info.uname, info.gname = 0, "", ""
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def layer_tar(rootfs: Path, standin: dict[str, bytes], executables: frozenset[str]) -> bytes:
    """The image's one layer (uncompressed tar), deterministic for the same inputs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*"), key=lambda p: p.relative_to(rootfs).as_posix()):
            rel = path.relative_to(rootfs).as_posix()
            if rel.startswith(".ccfactory") or rel.startswith(SKIP_PREFIXES) or path.suffix == ".pyc":
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            if info.isreg():
                _add(tar, info, path.read_bytes())
            elif info.isdir() or info.issym() or info.islnk():
                _add(tar, info)
        dirs = sorted({Path(STANDIN_ROOT, rel).parent.as_posix() for rel in standin} | {"opt", STANDIN_ROOT})
        for d in sorted(set(dirs) | {p for parent in dirs for p in _parents(parent)}):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            _add(tar, info)
        for rel, data in sorted(standin.items()):
            info = tarfile.TarInfo(f"{STANDIN_ROOT}/{rel}")
            info.size, info.mode = len(data), 0o755 if rel in executables else 0o644
            _add(tar, info, data)
        link = tarfile.TarInfo("usr/local/bin/kbs")
        link.type, link.linkname, link.mode = tarfile.SYMTYPE, f"/{STANDIN_ROOT}/bin/kbs", 0o777
        _add(tar, link)
    return buf.getvalue()


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_oci_layout(out: Path, layer: bytes, tag: str) -> str:
    """An OCI image layout (image-spec v1.1) with one layer; returns the manifest digest."""
    shutil.rmtree(out, ignore_errors=True)
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    compressed = gzip.compress(layer, compresslevel=6, mtime=0)
    config = _canonical({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    })  # fmt: skip
    manifest = _canonical({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(compressed),
                    "size": len(compressed)}],
    })  # fmt: skip
    digest = blob(manifest)
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": digest, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}  # fmt: skip
    (out / "index.json").write_bytes(_canonical(index))
    (out / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return digest


# ------------------------------------------------------------------ the registry process


def _reachable() -> bool:
    return proc.listening(network.LAB_GATEWAY, PORT)


def _start_registry(lab: Path) -> None:
    if proc.read_pidfile(pidfile(lab)) and _reachable():
        return
    stop(lab)
    exe = which("docker-registry")
    if not exe:
        raise LabError("missing docker-registry (the lab's image registry): apt-get install docker-registry")
    data = _dir(lab) / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = _dir(lab) / "config.yml"
    # distribution's configuration format (YAML; JSON is YAML)
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(data)}, "delete": {"enabled": True}},
        "http": {"addr": address()},
    }, indent=1) + "\n")  # fmt: skip
    pid = proc.spawn([exe, "serve", str(config)], logfile=lab / "logs" / "registry.log")
    proc.write_pidfile(pidfile(lab), pid)
    deadline = time.monotonic() + START_TIMEOUT
    while not _reachable():
        if not proc.alive(pid) or time.monotonic() > deadline:
            stop(lab)
            tail = (lab / "logs" / "registry.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise LabError(f"the lab registry did not start on {address()}: {' | '.join(tail) or 'no output'}")
        time.sleep(0.1)


def stop(lab_dir: str | os.PathLike) -> None:
    lab = Path(lab_dir)
    proc.stop(proc.read_pidfile(pidfile(lab)), timeout=5, what="lab registry")
    pidfile(lab).unlink(missing_ok=True)


def _push(layout: Path, tag: str) -> None:
    exe = which("skopeo")
    if not exe:
        raise LabError("missing skopeo (pushes the stand-in image): apt-get install skopeo")
    dest = f"docker://{address()}/{REPOSITORY}:{tag}"
    result = subprocess.run([exe, "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", dest],
                            capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    if result.returncode != 0:
        raise LabError(f"skopeo copy to {dest} failed: {result.stderr.strip()[-400:]}")


def start(lab_dir: str | os.PathLike, sources: list[AptSource]) -> dict:
    """Build the stand-in image, run the registry, push; returns the lab BOM overlay entry."""
    from ccfactory.bom.pin import PinError, RegistryAccess, resolve_oci_digest
    from ccfactory.lab.standins.trustee import ENTRY, VERSION, program_files

    lab = Path(lab_dir).resolve()
    rootfs = _rootfs(lab, sources)
    layer = layer_tar(rootfs, program_files(), frozenset({ENTRY}))
    tag = VERSION
    layout = _dir(lab) / "oci"
    digest = write_oci_layout(layout, layer, tag)
    _start_registry(lab)
    image = f"{address()}/{REPOSITORY}"
    try:
        served = resolve_oci_digest(image, tag, RegistryAccess(plain_http=True, timeout=5))
    except PinError:
        served = ""
    if served != digest:
        _push(layout, tag)
        try:
            served = resolve_oci_digest(image, tag, RegistryAccess(plain_http=True, timeout=5))
        except PinError as exc:
            raise LabError(f"the lab registry does not serve the pushed image: {exc}") from None
    if served != digest:
        raise LabError(f"the lab registry serves {served} for {image}:{tag}, not the built {digest}")
    return {
        "name": "trustee", "version": VERSION, "kind": "oci-image", "pin": "lab-stand-in",
        "image": image, "tag": tag, "digest": digest,
        "source": "lab stand-in image built by ccfactory.lab.registry, pushed to the lab registry",
        "note": "lab only: the Trustee stand-in (sample evidence only), not Trustee",
    }  # fmt: skip
