"""Run the lab Trustee stand-in on 127.0.0.1 the way a KBS node runs it (helpers, no tests).

The stand-in is laid out from the same files as its tarball (``regorus`` included, under
``lib/regorus``) and started as ``python3 bin/kbs --config-file FILE`` with Debian 12's
``/usr/bin/python3`` when it has ``cryptography`` (what a lab node runs), else this
interpreter. Its config is the one the KBS role renders (``ccfactory.roles.kbs.render``), with the
key and storage directories moved into a temporary directory; its keys come from
``ccfactory.kbs.pki``. Used by the tests of ccfactory's KBS client, role and CDH stand-in;
the upstream contract tests (``test_standin_trustee_contract.py``) have their own harness
that uses no ccfactory KBS code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ccfactory.kbs.client import KbsClient
from ccfactory.kbs.pki import KbsPki, ensure_pki
from ccfactory.roles.kbs.render import render_kbs_config
from ccfactory.lab.standins.trustee import install_tree
from support import free_port_on


def _node_python() -> str:
    system = "/usr/bin/python3"
    if os.path.exists(system):
        probe = subprocess.run([system, "-c", "import cryptography, tomllib"], capture_output=True)
        if probe.returncode == 0:
            return system
    return sys.executable


PYTHON = _node_python()


def free_port() -> int:
    return free_port_on("127.0.0.1")


def push_keys(pki: KbsPki, keys_dir: Path) -> None:
    """What the role pushes to /etc/trustee/keys (names as the config expects)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    for src, name, mode in (
        (pki.server_key, "https.key", 0o600),
        (pki.server_cert, "https.crt", 0o644),
        (pki.token_key, "token.key", 0o600),
        (pki.token_chain, "token-chain.pem", 0o644),
        (pki.token_ca_cert, "token-ca.crt", 0o644),
        (pki.admin_pub, "admin.pub", 0o644),
    ):
        shutil.copyfile(src, keys_dir / name)
        (keys_dir / name).chmod(mode)


@dataclass
class RunningKbs:
    url: str
    pki: KbsPki
    process: subprocess.Popen
    config: Path
    storage: Path
    log: Path

    def client(self, **kw) -> KbsClient:
        kw.setdefault("ca_cert", self.pki.tls_ca_cert)
        kw.setdefault("admin_key", self.pki.admin_key)
        return KbsClient(self.url, **kw)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            from support import exit_code

            exit_code(self.process, 30)  # kills it and fails, naming its state, if it does not stop

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start_kbs(tmp: Path, *, config_text: str | None = None, pki: KbsPki | None = None, port: int | None = None,
              wait: bool = True) -> RunningKbs:  # fmt: skip
    port = port or free_port()
    url = f"https://localhost:{port}"
    pki = pki or ensure_pki(tmp / "pki", site="test", names=["localhost", "127.0.0.1"], kbs_url=url)
    keys = tmp / "node" / "etc-trustee-keys"
    storage = tmp / "node" / "var-lib-trustee" / "storage"
    push_keys(pki, keys)
    config = tmp / "node" / "kbs-config.toml"
    config.write_text(config_text or render_kbs_config(
        socket=f"127.0.0.1:{port}", insecure_http=False, nvidia_verifier=None, keys_dir=str(keys), storage_dir=str(storage)))  # fmt: skip
    kbs = install_tree(tmp / "node" / "opt-trustee")
    log = tmp / "node" / "kbs.log"
    handle = log.open("wb")
    process = subprocess.Popen([PYTHON, str(kbs), "--config-file", str(config)], stdout=handle, stderr=subprocess.STDOUT)
    running = RunningKbs(url, pki, process, config, storage, log)
    if wait:
        deadline = time.monotonic() + 60  # startup on a loaded 2-core machine
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"stand-in exited {process.returncode}: {running.logs()}")
            if "Starting HTTPS server" in running.logs():
                break
            time.sleep(0.05)
        else:
            running.stop()
            raise AssertionError(f"stand-in did not start: {running.logs()}")
    return running
