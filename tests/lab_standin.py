"""A running lab stood in for the lab gate (``ccfactory.lab.proof``), for tests without root.

The gate trusts only live state (supervisor processes, bridges, the lab CA); unit tests replace
its probe (``proof.set_probe``) with one that answers from a spec written here, never from a file
the product reads. In-process: the ``live_lab`` fixture (tests/conftest.py). In a ``pyinfra``
subprocess: run this file instead of the ``pyinfra`` script, with the spec in a JSON file::

    python tests/lab_standin.py SPEC.json -y inventory.py deploy/site.py

SPEC: ``{"<lab_dir>": {"nodes": {"<name>": "<address>" | ["<address>", ...]},
"bmcs": {"<name>": "<bmc address>"}, "ca": "<PEM file>" | null}}``.
"""

from __future__ import annotations

# pyinfra_cli patches gevent on import, before anything imports ssl (see tests/conftest.py)
import pyinfra_cli  # noqa: F401  isort: skip

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from ccfactory.lab import proof

NO_CA = "0" * 64  # fingerprint of a stood-in lab without a CA file: matches no bmc_ca_bundle


def stand_in(lab_dir: str | Path, nodes: Mapping[str, str | Iterable[str]], *, bmcs: Mapping[str, str] | None = None,
             ca: str | Path | None = None) -> proof.LiveLab:  # fmt: skip
    """The ``LiveLab`` a real probe would prove for a lab with these nodes (name -> address(es)),
    BMC addresses and CA file."""
    live = tuple(
        proof.LiveNode(name, (addr,) if isinstance(addr, str) else tuple(addr), tuple(x for x in [(bmcs or {}).get(name)] if x))
        for name, addr in nodes.items()
    )
    fingerprint = proof.ca_fingerprint(Path(ca).read_bytes()) if ca else NO_CA
    return proof.LiveLab(str(Path(lab_dir).resolve()), fingerprint, live)


class StandInProbe:
    """A probe answering for the labs stood in with ``add``; any other directory has no lab."""

    def __init__(self) -> None:
        self.labs: dict[Path, proof.LiveLab] = {}
        self.calls = 0

    def add(self, lab: proof.LiveLab) -> proof.LiveLab:
        self.labs[Path(lab.lab_dir)] = lab
        return lab

    def __call__(self, lab_dir: Path) -> proof.LiveLab:
        self.calls += 1
        lab = self.labs.get(Path(lab_dir).resolve())
        if lab is None:
            raise proof.NoLiveLab(f"no lab is stood in at {lab_dir} (test probe)")
        return lab


def stand_in_lab(lab_dir: str | Path, nodes: Mapping[str, str | Iterable[str]], **kw) -> proof.LiveLab:
    """Stand a lab in with the probe the test runs under (unit tests: ``tests/unit/conftest.py``
    installs one for every test)."""
    probe = proof.current_probe()
    if not isinstance(probe, StandInProbe):
        raise RuntimeError("no stand-in probe is installed (unit tests get one from tests/unit/conftest.py)")
    return probe.add(stand_in(lab_dir, nodes, **kw))


def self_signed_ca(name: str = "ccfactory lab CA") -> bytes:
    """PEM of a fresh self-signed CA certificate (a lab CA made by a test, or a forged one)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def probe_from_spec(spec: Mapping[str, Mapping]) -> StandInProbe:
    probe = StandInProbe()
    for lab_dir, lab in spec.items():
        probe.add(stand_in(lab_dir, lab["nodes"], bmcs=lab.get("bmcs"), ca=lab.get("ca")))
    return probe


def main(argv: list[str]) -> int:
    """``pyinfra`` with the stood-in labs of the spec file ``argv[0]``."""
    spec = json.loads(Path(argv[0]).read_text())
    proof.set_probe(probe_from_spec(spec))
    from pyinfra_cli.main import main as pyinfra_main

    sys.argv = ["pyinfra", *argv[1:]]
    return pyinfra_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
