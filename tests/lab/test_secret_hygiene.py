"""Secret hygiene across the whole site deploy: no BMC password, KBS admin private key or KBS
resource secret appears in any output, log, report or rendered file, on the controller or on a
node, in raw, hex or base64 form; the admin private key exists only on the controller.

The lab is reset (fresh node disks, factory BIOS and GPU state) and the full site deployed cold
with ``pyinfra -y -vvv --debug``, then once more (the re-run's reads: BMC plans, KBS admin
checks); every byte of both outputs is kept. Then everything is searched:

controller: both runs' output, their readiness reports, the runtime stage's controller-side
    output (manifests, initdata report), the whole lab directory (BMC emulator logs and state,
    node consoles and supervisor logs, the KBS PKI directory, artifacts, apt proxy logs), minus
    the places that hold the secrets by design (listed in ``SECRET_STORES``; each is searched
    too, as a positive control that the search finds what it looks for);
nodes: every file each node wrote since its disk was created (the overlay's upper layer: all of
    /etc, /opt, /var, /root ... that changed), its containerd state, its tmpfs mounts (/run,
    /tmp, /dev/shm, streamed over SSH) and its whole journal with every field (``journalctl -o
    verbose``, command lines included). The one expected copy is the resource in the KBS's own
    store on the KBS node (positive control too).

Forms searched for each secret: raw; hex (both cases) for binary keys; standard and URL-safe
base64 at each of the three byte alignments (so an encoding embedded in a larger blob, e.g. an
HTTP Basic header or a JSON web key, is found); the PEM body of the admin key.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ccfactory.lab.bmc import service
from ccfactory.lab.layout import NodePaths
from site_lab import site_lab

pytestmark = pytest.mark.lab

# what the KBS stand-in stores resources in (ccfactory.roles.kbs.render.STORAGE_DIR)
KBS_STORAGE = "var/lib/trustee/storage"
# not searched in the lab directory: the nodes' base images, the apt proxy's cache of Debian
# packages, and nodes/ (each node's disk and logs are searched by the node tests and below)
LAB_SKIP = ("images", "acng/cache", "nodes")


def b64_forms(secret: bytes) -> dict[str, bytes]:
    """The base64 text any encoding of ``secret`` contains, at the three byte alignments."""
    out = {}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret)
        lo = -(-8 * shift // 6)  # first character made only of the secret's bits
        hi = (8 * (shift + len(secret))) // 6  # last character made only of them (exclusive)
        core = encoded[lo:hi]
        out[f"base64@{shift}"] = core
        out[f"base64url@{shift}"] = core.translate(bytes.maketrans(b"+/", b"-_"))
    return out


def forms(secret: bytes, *, binary: bool) -> dict[str, bytes]:
    out = {"raw": secret, **b64_forms(secret)}
    if binary:
        out["hex"] = secret.hex().encode()
        out["HEX"] = secret.hex().upper().encode()
    return out


class Needles:
    """label -> bytes to look for; the labels never contain the secret itself."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def add(self, name: str, secret: bytes, *, binary: bool) -> None:
        assert len(secret) >= 12, f"{name}: too short to search for without false positives"
        for form, value in forms(secret, binary=binary).items():
            self.items[f"{name} ({form})"] = value

    def add_text(self, label: str, value: bytes) -> None:
        self.items[label] = value

    def find(self, data: bytes) -> list[str]:
        return [label for label, value in self.items.items() if value in data]


def secret_needles(lab) -> tuple[Needles, dict[str, Path]]:
    """Every secret of the lab site, and the controller file that legitimately holds each."""
    needles = Needles()
    stores: dict[str, Path] = {}
    for node in lab.nodes:
        _, password = service.credentials(lab.dir, node)
        needles.add(f"BMC password of {node}", password.encode(), binary=False)
        stores[f"BMC password of {node}"] = lab.dir / "secrets" / f"bmc-{node}.password"
    lab_wide = (lab.dir / "secrets" / "bmc-password").read_text().strip()
    needles.add("lab-wide BMC password", lab_wide.encode(), binary=False)
    stores["lab-wide BMC password"] = lab.dir / "secrets" / "bmc-password"

    admin = lab.dir / "kbs" / "pki" / "admin.key"
    pem = admin.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    needles.add("KBS admin private key", raw, binary=True)
    needles.add("KBS admin private key (PKCS#8 DER)", der, binary=True)
    for i, line in enumerate(row for row in pem.splitlines() if row and not row.startswith(b"-----")):
        needles.add_text(f"KBS admin private key (PEM line {i + 1})", line)
    stores["KBS admin private key"] = admin

    model = lab.dir / "secrets" / "lab-model.key"
    needles.add("KBS resource models/lab-model/key", model.read_bytes(), binary=True)
    stores["KBS resource models/lab-model/key"] = model
    return needles, stores


def regular_files(root: Path, skip: Iterable[Path] = ()) -> Iterator[Path]:
    skip = {p.resolve() for p in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skip]
        for name in filenames:
            path = here / name
            if path.resolve() in skip:
                continue
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    yield path
            except OSError:
                continue


def scan_files(files: Iterable[Path], needles: Needles) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found = needles.find(data)
        if found:
            hits[str(path)] = found
    return hits


def ssh_bytes(lab, node: str, command: str) -> bytes:
    address = lab.nodes[node]["address"]
    r = subprocess.run(["ssh", "-F", str(lab.dir / "ssh_config"), f"root@{address}", command],
                       capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 or r.stdout, f"{node}: {command!r}: {r.stderr.decode(errors='replace')[-500:]}"
    return r.stdout


@pytest.fixture(scope="module")
def hygiene(lab, tmp_path_factory):
    from ccfactory.lab import manager

    tmp = tmp_path_factory.mktemp("hygiene")
    runtime_out = tmp / "runtime-output"
    with site_lab(lab, tmp) as site:
        manager.reset(lab_dir=lab.dir, inventory=lab.inventory)  # fresh disks, factory BIOS and GPU state
        for node in lab.nodes:
            lab.wait_ssh(node, timeout=120)
        args = ("-vvv", "--debug", "--data", f"runtime_output_dir={runtime_out}")
        cold = site.run(*args)
        print(f"\ncold site deploy with -vvv --debug: {cold.took:.1f} s, {len(cold.out) / 1e6:.1f} MB of output")
        again = site.run(*args)
        print(f"re-run: {again.took:.1f} s, {len(again.out) / 1e6:.1f} MB of output")
        outputs = {"cold run output": cold.out.encode(), "re-run output": again.out.encode()}
        (tmp / "cold.out").write_bytes(outputs["cold run output"])
        (tmp / "again.out").write_bytes(outputs["re-run output"])
        needles, stores = secret_needles(lab)
        yield site, cold, again, outputs, needles, stores, tmp, runtime_out


def test_the_cold_site_deploy_converged_and_the_rerun_changed_nothing(hygiene):
    site, cold, again, *_ = hygiene
    site.assert_converged(cold)
    assert again.rc == 0 and again.changed() == {}, again.changed()
    assert len(cold.out) > 200_000, "a -vvv --debug run prints every command: was the output kept?"
    assert ">>> " in cold.out, "-vvv prints every remote command (input) and its output"
    assert "Getting fact: " in cold.out, "--debug prints pyinfra's debug log"


def test_every_search_finds_what_it_looks_for_in_the_places_that_hold_it(hygiene, lab):
    *_, needles, stores, _tmp, _rt = hygiene
    for name, path in stores.items():
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        assert any(label.startswith(name) for label in needles.find(path.read_bytes())), f"{name} not found in {path}"
    kbs = lab.node_of_profile("plain")
    storage = NodePaths(lab.dir, kbs).upper / KBS_STORAGE
    hits = scan_files(regular_files(storage), needles)
    assert any(label.startswith("KBS resource") for found in hits.values() for label in found), (
        f"the resource is not in the KBS's store {storage}: the node-disk search would miss it"
    )


def test_no_secret_in_the_output_of_the_site_deploy(hygiene):
    *_, outputs, needles, _stores, _tmp, _rt = hygiene
    leaks = {name: needles.find(data) for name, data in outputs.items()}
    assert {k: v for k, v in leaks.items() if v} == {}


def test_no_secret_in_any_file_on_the_controller(hygiene, lab):
    site, cold, again, outputs, needles, stores, tmp, runtime_out = hygiene
    skip = [*stores.values(), lab.dir / "secrets", *(lab.dir / d for d in LAB_SKIP)]
    skip += [p for p in (lab.dir / "bmc").glob("*/credentials.json")]
    skip += [p for p in (lab.dir / "bmc").glob("*/htpasswd")]  # bcrypt hashes, not the password
    files = [*regular_files(lab.dir, skip), *regular_files(tmp), *regular_files(runtime_out)]
    for node in lab.nodes:  # the node's logs kept by the lab, outside its disk
        paths = NodePaths(lab.dir, node)
        files += [p for p in (paths.console_log, paths.supervisor_log, paths.nspawn_args, paths.power_state) if p.is_file()]
    reports = [tmp / f"report-{i}" for i in (1, 2)]
    assert all((r / "readiness.json").is_file() for r in reports), "each run wrote its readiness report"
    assert len(files) > 50
    hits = scan_files(files, needles)
    assert hits == {}, "secrets found on the controller outside their stores:\n" + "\n".join(
        f"  {path}: {', '.join(found)}" for path, found in hits.items()
    )


@pytest.mark.parametrize("profile", ["amd-snp-hgx", "intel-tdx", "plain"])
def test_no_secret_on_any_node(hygiene, lab, profile):
    *_, needles, _stores, _tmp, _rt = hygiene
    node = lab.node_of_profile(profile)
    paths = NodePaths(lab.dir, node)
    allowed = paths.upper / KBS_STORAGE  # the KBS's resource store: the one place the resource belongs
    disk = [p for root in (paths.upper, paths.containerd, paths.state, paths.hw) for p in regular_files(root)]
    assert len(disk) > 100, f"{node}: the node's disk looks empty ({len(disk)} files)"
    hits = scan_files(disk, needles)
    hits = {
        path: [f for f in found if not (Path(path).is_relative_to(allowed) and f.startswith("KBS resource"))]
        for path, found in hits.items()
    }
    hits = {path: found for path, found in hits.items() if found}
    volatile = ssh_bytes(lab, node, "tar -C / --one-file-system -cf - run tmp dev/shm 2>/dev/null; true")
    journal = ssh_bytes(lab, node, "journalctl --no-pager -o verbose")
    assert len(journal) > 10_000, f"{node}: the journal is almost empty"
    for name, data in (("tmpfs (/run, /tmp, /dev/shm)", volatile), ("journal (all fields)", journal)):
        if found := needles.find(data):
            hits[f"{node}: {name}"] = found
    assert hits == {}, f"secrets found on {node}:\n" + "\n".join(f"  {p}: {', '.join(f)}" for p, f in hits.items())


def test_the_admin_private_key_file_exists_only_on_the_controller(hygiene, lab):
    *_, needles, stores, _tmp, _rt = hygiene
    admin = stores["KBS admin private key"]
    assert admin.is_file() and stat.S_IMODE(admin.stat().st_mode) == 0o600
    admin_needles = Needles()
    admin_needles.items = {k: v for k, v in needles.items.items() if k.startswith("KBS admin private key")}
    for node in lab.nodes:
        paths = NodePaths(lab.dir, node)
        found = scan_files(regular_files(paths.upper), admin_needles)
        assert found == {}, f"{node} holds the admin private key: {sorted(found)}"
        named = ssh_bytes(lab, node, f"find / -xdev -name {admin.name} 2>/dev/null; true").decode().split()
        assert named == [], f"{node} has a file named {admin.name}: {named}"
