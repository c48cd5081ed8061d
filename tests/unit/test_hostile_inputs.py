"""Hostile input: inventories written the way an attacker (or a careless copy-paste) would try
them. Each one must stop the site deploy before any connection with ``host: field: message;
fix: ...``, no traceback, and never the secret it carries.

The harness is the one of ``test_bad_inventories``: ``pyinfra -y <inventory> deploy/site.py``
with every host's SSH pointing at a listener that counts connections (must stay at zero), then
``ccfactory check`` on the same inventory (must exit 2 with the same line). Cases may prepare
files with modes, symlinks and FIFOs (``setup``).

Then properties (hypothesis) of the URL, host, resource-path and host-name validators, and the
rendered guest configs (``aa.toml``, ``cdh.toml``, initdata, the Kata drop-in) parsed back to
the very values that went in, hostile ones included.
"""

from __future__ import annotations

import ipaddress
import json
import os
import string
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ccfactory.cli import main as ccfactory_main
from ccfactory.config import (
    SECRET_IN_URL,
    Problem,
    host_name_problem,
    host_problem,
    https_base_url,
    normalize_host,
    resource_uri_problem,
    safe_path_component,
    url_identity,
    url_problem,
)
from ccfactory.kbs.settings import RESOURCE_PATH, check_resource_path
from ccfactory.lab.proof import CA_FINGERPRINT_KEY, ca_fingerprint
from lab_standin import self_signed_ca
from support import CountingListener
from test_bad_inventories import (
    FOOTER, HEADER, PARALLEL, REPO, Outcome, run_site_deploy, stand_in_labs, write_standin_spec,
)  # fmt: skip

WORKER = "workers = [('w1', {**W, %s})]\nsnp = ['w1']\ngpu = ['w1']\n"
KBS = "kbs = [('k1', {**K, %s})]\n"
TWO_WORKERS = "workers = [('w1', {**W, %s}), ('w2', {**W, %s})]\nsnp = ['w1', 'w2']\ngpu = ['w1', 'w2']\n"


@dataclass(frozen=True)
class Case:
    id: str
    body: str
    expect: tuple[str, ...]
    secret: str | None = None
    setup: Callable[[Path], None] | None = field(default=None, compare=False)
    # the pyinfra run stops in pyinfra (e.g. a syntax error) rather than in our validation
    pyinfra_validates: bool = True
    labs: dict[str, dict] = field(default_factory=dict)  # running labs stood in (test_bad_inventories.Case)


def C(id, body, *expect, secret=None, setup=None, pyinfra_validates=True, labs=None) -> Case:
    return Case(id, body, tuple(expect), secret, setup, pyinfra_validates, labs or {})


def _file(rel: str, text: str = "pw\n", mode: int = 0o600) -> Callable[[Path], None]:
    def make(directory: Path) -> None:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    return make


def _symlink(rel: str, target: str) -> Callable[[Path], None]:
    def make(directory: Path) -> None:
        _file(target)(directory)
        (directory / rel).symlink_to(directory / target)

    return make


def _fifo(rel: str) -> Callable[[Path], None]:
    return lambda directory: os.mkfifo(directory / rel)


def _dir(rel: str) -> Callable[[Path], None]:
    return lambda directory: (directory / rel).mkdir(mode=0o700)


def _group_data(text: str) -> Callable[[Path], None]:
    return _file("group_data/all.py", text, 0o644)


def _forged_lab(*, ca: bool, supervisor_pid: int | None = None) -> Callable[[Path], None]:
    """A lab directory written by hand: lab.json (with the fingerprint of a CA made here when
    ``ca``), pki/ca.pem and a supervisor pid file pointing at a live process that is no supervisor."""

    def make(directory: Path) -> None:
        lab = directory / "lab"
        (lab / "pki").mkdir(parents=True)
        state: dict = {"nodes": {"k1": {"index": 1, "address": "k1"}, "w1": {"index": 2, "address": "w1"}}}
        if ca:
            pem = self_signed_ca("forged lab CA")
            (lab / "pki" / "ca.pem").write_bytes(pem)
            state[CA_FINGERPRINT_KEY] = ca_fingerprint(pem)
        (lab / "lab.json").write_text(json.dumps(state))
        for node in ("k1", "w1"):
            (lab / "nodes" / node).mkdir(parents=True)
            (lab / "nodes" / node / "supervisor.pid").write_text(f"{supervisor_pid or os.getpid()} 0\n")

    return make


LAB = "'lab': True, 'lab_dir': '@DIR@/lab'"
K1_AT_LISTENER = {"lab": {"k1": ["k1", "127.0.0.1"], "w1": ["w1", "127.0.0.1"]}}  # stood in: reached at the listener
K1_ELSEWHERE = {"lab": {"k1": "10.199.0.11"}}  # stood in: node k1 is at its lab address


CASES = [
    # ---- BMC addresses: parsed (ipaddress, IDNA), never pasted into a URL
    C("bmc-userinfo", WORKER % "'bmc_address': 'root:Zq9-BmcUrlPass@10.0.0.5'",
      "w1: bmc_address: contains user information ('user:password@'): a literal secret is not allowed", secret="Zq9-BmcUrlPass"),
    C("bmc-host-port", WORKER % "'bmc_address': '10.0.0.5:8443'",
      "w1: bmc_address: not a host name or IP address (host:port is not allowed here); fix: put the port in bmc_port"),
    C("bmc-name-port", WORKER % "'bmc_address': 'bmc1.example.net:443'", "w1: bmc_address:", "fix: put the port in bmc_port"),
    C("bmc-ipv6-bracket-port", WORKER % "'bmc_address': '[fd00::5]:443'", "w1: bmc_address:", "fix: put the port in bmc_port"),
    C("bmc-query", WORKER % "'bmc_address': 'bmc1.example.net?redirect=evil'", "w1: bmc_address: not a host name or IP address"),
    C("bmc-fragment", WORKER % "'bmc_address': 'bmc1.example.net#x'", "w1: bmc_address: not a host name or IP address"),
    C("bmc-space", WORKER % "'bmc_address': 'bmc1 .example.net'",
      "w1: bmc_address: not a host name or IP address (it contains whitespace, control characters or quotes)"),
    C("bmc-newline-forges-a-line", WORKER % "'bmc_address': 'bmc1\\nw9: Zq9-forged-line'",
      "w1: bmc_address: not a host name or IP address (it contains whitespace", secret="Zq9-forged-line"),
    C("bmc-quote", WORKER % "'bmc_address': 'bmc1\"'", "w1: bmc_address: not a host name or IP address"),
    C("bmc-ipv4-out-of-range", WORKER % "'bmc_address': '10.0.0.256'", "w1: bmc_address: not a host name or IP address"),
    C("bmc-bad-label", WORKER % "'bmc_address': '-bmc1.example.net'", "w1: bmc_address: not a host name or IP address"),
    C("bmc-ipv6-zone", WORKER % "'bmc_address': 'fe80::1%eth0'", "w1: bmc_address:", "IPv6 zone indexes are not supported"),
    C("shared-bmc-letter-case", TWO_WORKERS % ("'bmc_address': 'BMC1.Example.NET'", "'bmc_address': 'bmc1.example.net'"),
      "w2: bmc_address: same BMC as host w1"),
    C("shared-bmc-ipv6-forms", TWO_WORKERS % ("'bmc_address': 'fd00::5'", "'bmc_address': '[fd00:0:0::5]'"),
      "w2: bmc_address: same BMC as host w1"),
    # ---- kbs_url: https, a port in 1-65535, nothing but scheme, host and port
    C("kbs-url-userinfo", KBS % "'kbs_url': 'https://admin:Zq9-KbsUrlPass@k1.example.net:8443'",
      "k1: kbs_url: contains user information", secret="Zq9-KbsUrlPass"),
    C("kbs-url-user-only", WORKER % "'kbs_url': 'https://Zq9-token-as-user@k1.example.net:8443'",
      "w1: kbs_url: contains user information", secret="Zq9-token-as-user"),
    C("kbs-url-query", KBS % "'kbs_url': 'https://k1.example.net:8443/?next=evil'", "k1: kbs_url:", "no query or fragment"),
    C("kbs-url-fragment", KBS % "'kbs_url': 'https://k1.example.net:8443#frag'", "k1: kbs_url:", "no query or fragment"),
    C("kbs-url-path", KBS % "'kbs_url': 'https://k1.example.net:8443/kbs/v0'", "k1: kbs_url: has a path", "fix: drop the path"),
    C("kbs-url-port-zero", KBS % "'kbs_url': 'https://k1.example.net:0'", "k1: kbs_url: not a valid URL (port must be 1-65535)"),
    C("kbs-url-empty-port", KBS % "'kbs_url': 'https://k1.example.net:'", "k1: kbs_url: not a valid URL (empty port)"),
    C("kbs-url-newline", KBS % "'kbs_url': 'https://k1.example.net:8443\\n'", "k1: kbs_url: not a valid URL (it contains whitespace"),
    C("kbs-url-quote", WORKER % "'kbs_url': 'https://k1.example.net\"/'", "w1: kbs_url: not a valid URL"),
    C("kbs-url-bad-host", WORKER % "'kbs_url': 'https://k1_under.example.net:8443'", "w1: kbs_url:",
      "its host is not a host name or IP address"),
    C("worker-kbs-url-unserved", WORKER % "'kbs_url': 'https://kbs.other.example:8443'" + KBS % "'tee': 'none'",
      "w1: kbs_url: https://kbs.other.example:8443 is served by no KBS host of this inventory; they serve "
      "https://k1.example.net:8443"),
    # ---- mirror URLs
    C("mirror-url-credentials", KBS % "'artifact_source': 'mirror', 'artifact_mirror_url': 'https://ci:Zq9-MirrorPass@mirror.example.net/ccf'",
      "k1: artifact_mirror_url: contains user information", "fix: remove the credentials", secret="Zq9-MirrorPass"),
    C("mirror-url-query-token", KBS % "'artifact_source': 'mirror', 'artifact_mirror_url': 'https://mirror.example.net/ccf?token=x'",
      "k1: artifact_mirror_url:", "no query or fragment"),
    C("mirror-url-dot-dot", KBS % "'artifact_source': 'mirror', 'artifact_mirror_url': 'https://mirror.example.net/a/../../b'",
      "k1: artifact_mirror_url: not a valid URL ('..' in the path)"),
    # ---- values
    C("snp-policy-reserved-bit", WORKER % "'runtime_snp_guest_policy': 0x10000",
      "w1: runtime_snp_guest_policy: 0x10000 has reserved bit 17 clear", "fix: use 0x30000"),
    C("snp-policy-debug", WORKER % "'runtime_snp_guest_policy': 0xB0000",
      "w1: runtime_snp_guest_policy: 0xb0000 sets DEBUG (bit 19)", "runtime_snp_debug_acknowledged"),
    C("snp-policy-65-bits", WORKER % "'runtime_snp_guest_policy': 2**64 + 0x30000",
      "w1: runtime_snp_guest_policy: Input should be less than or equal to 9223372036854775807"),
    C("min-sev-asid-zero", WORKER % "'bios_overrides': {'min_sev_asid': 0}", "w1: bios_overrides: min_sev_asid: 0 is outside 1-1007"),
    C("min-sev-asid-huge", WORKER % "'bios_overrides': {'min_sev_asid': 65536}", "w1: bios_overrides: min_sev_asid: 65536 is outside"),
    C("gpu-count-bool", WORKER % "'gpu_count': True", "w1: gpu_count:", "a bool is not a number"),
    C("bmc-port-bool", WORKER % "'bmc_port': True", "w1: bmc_port:", "a bool is not a number"),
    C("bmc-timeout-inf", WORKER % "'bmc_timeout': float('inf')", "w1: bmc_timeout: Input should be a finite number"),
    C("health-timeout-nan", WORKER % "'runtime_health_timeout': float('nan')", "w1: runtime_health_timeout: Input should be a finite number"),
    C("health-timeout-inf", WORKER % "'runtime_health_timeout': float('inf')", "w1: runtime_health_timeout: Input should be a finite number"),
    C("kata-memory-below-kata-minimum", WORKER % "'runtime_kata_memory': 128",
      "w1: runtime_kata_memory: Input should be greater than or equal to 256"),
    C("kata-memory-huge", WORKER % "'runtime_kata_gpu_memory': 10**9", "w1: runtime_kata_gpu_memory: Input should be less than or equal to 4194304"),
    C("kata-vcpus-huge", WORKER % "'runtime_kata_vcpus': 1000", "w1: runtime_kata_vcpus: Input should be less than or equal to 256"),
    C("reboot-timeout-derived-graceful", WORKER % "'reboot_timeout': 100",
      "w1: reboot_timeout: 100s leaves a graceful-reboot window of 50s (half of it), below the minimum of 60s"),
    C("gpu-devtools-unacknowledged", WORKER % "'gpu_cc_mode': 'devtools'",
      "w1: gpu_cc_mode: devtools lets the host debug the GPUs", "gpu_devtools_acknowledged"),
    # ---- secret files: regular, not a symlink, ours, 0600
    C("password-file-world-readable", WORKER % "'bmc_password_env': None, 'bmc_password_file': '@DIR@/bmc.pw'",
      "w1: bmc_password_file:", "has mode 0644; a secret file must be 0600 or stricter", setup=_file("bmc.pw", mode=0o644)),
    C("password-file-symlink", WORKER % "'bmc_password_env': None, 'bmc_password_file': '@DIR@/bmc.pw'",
      "w1: bmc_password_file:", "is a symbolic link", setup=_symlink("bmc.pw", "real.pw")),
    C("password-file-directory", WORKER % "'bmc_password_env': None, 'bmc_password_file': '@DIR@/pwdir'",
      "w1: bmc_password_file:", "is not a regular file", setup=_dir("pwdir")),
    C("kbs-key-file-group-readable", KBS % "'kbs_admin_key_file': '@DIR@/admin.key'",
      "k1: kbs_admin_key_file:", "has mode 0640", setup=_file("admin.key", "k", 0o640)),
    C("kbs-tls-key-symlink", KBS % "'kbs_tls_key_file': '@DIR@/tls.key'", "k1: kbs_tls_key_file:", "is a symbolic link",
      setup=_symlink("tls.key", "real.key")),
    # ---- resource files and paths
    C("resource-proc-environ", KBS % "'kbs_resources': {'models/llama-3/key': '/proc/self/environ'}",
      "k1: kbs_resources[models/llama-3/key]:", "is in /proc, not an ordinary file"),
    C("resource-device", KBS % "'kbs_resources': {'models/llama-3/key': '/dev/zero'}",
      "k1: kbs_resources[models/llama-3/key]:", "is in /dev, not an ordinary file"),
    C("resource-fifo", KBS % "'kbs_resources': {'models/llama-3/key': '@DIR@/key.fifo'}",
      "k1: kbs_resources[models/llama-3/key]:", "is not a regular file", setup=_fifo("key.fifo")),
    C("resource-directory", KBS % "'kbs_resources': {'models/llama-3/key': '@DIR@'}",
      "k1: kbs_resources[models/llama-3/key]:", "is not a regular file"),
    C("resource-path-trailing-newline", KBS % "'kbs_resources': {'models/llama-3/key\\n': '@DIR@/m.key'}",
      "k1: kbs_resources: 'models/llama-3/key\\n' breaks the KBS path rule", setup=_file("m.key")),
    C("gpu-resource-trailing-newline", KBS % "'kbs_gpu_resources': ['models/llama-3/key\\n']", "k1: kbs_gpu_resources:",
      "break the KBS path rule"),
    C("coco-uri-traversal", WORKER % "'coco_resource_uris': ['kbs:///../../etc']",
      "w1: coco_resource_uris[0]: 'kbs:///../../etc' is not kbs:///<repository>/<type>/<tag>"),
    C("coco-uri-two-segments", WORKER % "'coco_resource_uris': ['kbs:///models/key']", "w1: coco_resource_uris[0]:"),
    C("coco-uri-four-segments", WORKER % "'coco_resource_uris': ['kbs:///a/b/c/d']", "w1: coco_resource_uris[0]:"),
    C("coco-uri-other-host", WORKER % "'coco_resource_uris': ['kbs://evil.example/a/b/c']", "w1: coco_resource_uris[0]:"),
    # ---- controller paths
    C("host-name-traversal", "kbs = [('../../k1', {**K})]\n", "../../k1: (host name): host name must be one path component"),
    C("host-name-newline", "kbs = [('k1\\nk9', {**K})]\n", "k1\\nk9: (host name):"),
    C("pki-dir-unknown-user", KBS % "'kbs_pki_dir': '~ccf-no-such-user/pki'", "k1: kbs_pki_dir:", "'~' names no user"),
    C("overlay-dir-missing", WORKER % "'template_overlay_dirs': ['@DIR@/no-overlay']",
      "w1: template_overlay_dirs[0]:", "is not a directory"),
    C("overlay-dir-is-a-file", WORKER % "'template_overlay_dirs': ['@DIR@/overlay']", "w1: template_overlay_dirs[0]:",
      "is not a directory", setup=_file("overlay")),
    # ---- trust: how pyinfra merges data
    C("group-data-conflict", "workers = [('w1', W)]\nsnp = (['w1'], {'runtime_kata_memory': 4096})\n"
      "gpu = (['w1'], {'runtime_kata_memory': 8192})\n", "w1: runtime_kata_memory: groups", "give it different values",
      "fix: set runtime_kata_memory in one of the groups only, or per host"),
    C("group-data-ssh-hostname-shared",
      "_W = {k: v for k, v in W.items() if k != 'ssh_hostname'}\n"
      "workers = ([('w1', _W), ('w2', {**_W, 'bmc_address': '10.0.0.6'})], {'ssh_hostname': '127.0.0.1'})\n"
      "snp = ['w1', 'w2']\ngpu = ['w1', 'w2']\n",
      "w2: ssh_hostname: group 'workers''s data gives it the same ssh_hostname as host w1"),
    C("group-data-file-ssh-hostname", "_K = {k: v for k, v in K.items() if k != 'ssh_hostname'}\n"
      "kbs = [('k1', _K), ('k2', {**_K, 'kbs_url': 'https://k2.example.net:8443'})]\n",
      "k2: ssh_hostname:", "the same ssh_hostname as host k1", setup=_group_data("ssh_hostname = '127.0.0.1'\n")),
    C("lookalike-key-cyrillic", WORKER % "'gpu_m\\u043edel': 'H100'",
      "w1: gpu_m\\u043edel: unknown key (contains non-ASCII characters); fix: the key contains non-ASCII characters (U+043E)",
      "did you mean 'gpu_model'?"),
    C("lookalike-key-zero-width", KBS % "'kbs_url\\u200b': 'https://k1.example.net:8443'",
      "k1: kbs_url\\u200b: unknown key (contains non-ASCII characters)", "U+200B"),
    # ---- ssh_hostname: pyinfra's own key, parsed like bmc_address (IPv6 bare)
    C("ssh-hostname-userinfo", WORKER % "'ssh_hostname': 'root:Zq9-SshUrlPass@127.0.0.1'",
      "w1: ssh_hostname: contains user information", "fix: give only the host's name or IP: the user goes in ssh_user",
      secret="Zq9-SshUrlPass"),
    C("ssh-hostname-port", WORKER % "'ssh_hostname': '127.0.0.1:22'",
      "w1: ssh_hostname: not a host name or IP address (host:port is not allowed here); fix: put the port in ssh_port"),
    C("ssh-hostname-bracketed-ipv6", WORKER % "'ssh_hostname': '[::1]'",
      "w1: ssh_hostname: an IPv6 address in brackets: SSH takes it bare; fix: use ::1"),
    C("ssh-hostname-newline", WORKER % "'ssh_hostname': '127.0.0.1\\nProxyCommand sh'",
      "w1: ssh_hostname: not a host name or IP address (it contains whitespace"),
    C("ssh-hostname-option", WORKER % "'ssh_hostname': '-oProxyCommand=sh'", "w1: ssh_hostname: not a host name or IP address"),
    # ---- trust: the lab gate (a running lab proven from live state, never a file)
    C("lab-json-hand-written", KBS % LAB, "k1: lab: lab is true but", "holds no running lab",
      setup=lambda d: _file("lab/lab.json", '{"nodes": {"k1": {"address": "k1"}}}', 0o644)(d)),
    C("lab-json-forged-with-ca-and-pids", KBS % LAB, "k1: lab: lab is true but", setup=_forged_lab(ca=True)),
    C("lab-json-group-writable", KBS % LAB, "k1: lab: lab is true but", "holds no running lab",
      setup=lambda d: _file("lab/lab.json", '{"nodes": {"k1": {"index": 1}}, "ca_sha256": "00"}', 0o666)(d)),
    C("lab-tls-off-forged-lab", WORKER % f"{LAB}, 'bmc_verify_tls': False", "w1: lab: lab is true but",
      setup=_forged_lab(ca=True)),
    C("lab-permissive-kbs-forged-lab", KBS % f"{LAB}, 'kbs_lab_permissive': True", "k1: lab: lab is true but",
      setup=_forged_lab(ca=False)),
    C("lab-http-kbs-forged-lab", KBS % f"{LAB}, 'kbs_url': 'http://k1.example.net:8080'", "k1: lab: lab is true but",
      setup=_forged_lab(ca=True)),
    C("lab-node-connects-elsewhere", KBS % LAB, "k1: ssh_hostname: lab node k1 is at 10.199.0.11, but pyinfra would "
      "connect to '127.0.0.1'; fix: set ssh_hostname to 10.199.0.11, or remove lab", labs=K1_ELSEWHERE),
    C("lab-bmc-outside-the-lab", WORKER % f"{LAB}, 'bmc_verify_tls': False", "w1: bmc_address: 10.0.0.5 is not the BMC "
      "of lab node w1", labs=K1_AT_LISTENER),
    C("lab-kbs-outside-the-lab", KBS % f"{LAB}, 'kbs_url': 'http://kbs.prod.example:8080'",
      "k1: kbs_url: http://kbs.prod.example:8080 is not served by a node of the lab", labs=K1_AT_LISTENER),
    C("lab-dir-of-another-lab", KBS % "'lab': True, 'lab_dir': '@DIR@/other'", "k1: lab: lab is true but",
      "holds no running lab", labs=K1_AT_LISTENER),
    # ---- the inventory file itself
    C("inventory-without-hosts", "x = 1\n", "(inventory): hosts: the inventory has no hosts"),
]

SYNTAX_ERROR = C("inventory-syntax-error", "workers = [('w1', W)\nsnp = ['w1']\n", "site.py:6: syntax error:",
                 pyinfra_validates=False)
ALL = [*CASES, SYNTAX_ERROR]


def _write(case: Case, root: Path, port: int) -> Path:
    directory = root / case.id
    directory.mkdir(parents=True)
    if case.setup:
        case.setup(directory)
    write_standin_spec(directory, case.labs)
    inventory = directory / "site.py"
    inventory.write_text((HEADER + case.body + FOOTER).replace("@DIR@", str(directory)).replace("@PORT@", str(port)))
    return inventory


def _run(case: Case, root: Path) -> Outcome:
    return run_site_deploy(lambda port: _write(case, root, port))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("hostile-inventories")
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return dict(zip([c.id for c in ALL], pool.map(lambda c: _run(c, root), ALL)))


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40
    assert len({c.id for c in ALL}) == len(ALL)


def _check(case: Case, outcome: Outcome, capsys, monkeypatch) -> str:
    monkeypatch.chdir(outcome.inventory.parent)
    monkeypatch.delenv("BMC_W1", raising=False)
    stand_in_labs(outcome.inventory, monkeypatch)
    code = ccfactory_main(["check", str(outcome.inventory)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    assert "Traceback" not in text, text
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_stops_the_site_deploy_before_any_connection(case, outcomes, capsys, monkeypatch):
    outcome = outcomes[case.id]
    out = outcome.output
    assert outcome.returncode != 0, out[-3000:]
    assert "no host was touched" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in case.expect:
        assert fragment in out, f"expected {fragment!r} in:\n{out[-3000:]}"
    assert outcome.connections == 0, f"pyinfra connected {outcome.connections} time(s) although the input was hostile"
    if case.secret:
        assert case.secret not in out, "the error echoed the secret"
    assert "fix:" in out

    text = _check(case, outcome, capsys, monkeypatch)
    for fragment in case.expect:
        assert fragment in text, f"ccfactory check: expected {fragment!r} in:\n{text}"
    if case.secret:
        assert case.secret not in text


class CountingListener6(CountingListener):
    """The connection counter on ::1 (an IPv6 ssh_hostname)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET6)
        self.sock.bind(("::1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()


# Valid IPv6 input, as an operator writes it: validation lets it through and pyinfra connects
IPV6_CONTROLS = [
    C("ipv6-bmc-bare", WORKER % "'bmc_address': 'fd00::5'"),
    C("ipv6-bmc-bracketed", WORKER % "'bmc_address': '[fd00::5]'"),
    C("ipv6-kbs-url", WORKER % "'kbs_url': 'https://[fd00::10]:8443'"),
    C("ipv6-ssh-hostname", WORKER % "'ssh_hostname': '::1'"),
]


@pytest.fixture(scope="module")
def ipv6_outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("ipv6-controls")
    listener = {c.id: CountingListener6 if "ssh" in c.id else CountingListener for c in IPV6_CONTROLS}
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        runs = pool.map(lambda c: run_site_deploy(lambda port: _write(c, root, port), listener[c.id]), IPV6_CONTROLS)
        return dict(zip([c.id for c in IPV6_CONTROLS], runs))


@pytest.mark.parametrize("case", IPV6_CONTROLS, ids=[c.id for c in IPV6_CONTROLS])
def test_valid_ipv6_input_passes_validation_and_connects(case, ipv6_outcomes, capsys, monkeypatch):
    outcome = ipv6_outcomes[case.id]
    assert "problem(s) in the inventory" not in outcome.output, outcome.output[-3000:]
    assert outcome.connections >= 1, outcome.output[-3000:]
    monkeypatch.chdir(outcome.inventory.parent)
    assert ccfactory_main(["check", str(outcome.inventory)]) == 0, capsys.readouterr()


def test_a_syntax_error_is_file_line_and_message(outcomes, capsys, monkeypatch):
    outcome = outcomes[SYNTAX_ERROR.id]
    assert outcome.returncode != 0 and outcome.connections == 0, outcome.output[-3000:]
    text = _check(SYNTAX_ERROR, outcome, capsys, monkeypatch)
    assert f"error: {outcome.inventory}:6: syntax error: '[' was never closed" in text, text
    assert len(text.strip().splitlines()) == 1, text


# ---------------------------------------------------------------- validator properties

HOSTILE_CHARS = st.sampled_from(list(" \t\r\n\x00\x1b\"'<>\\`{}|^\x7f\u0085"))


@st.composite
def hostile_strings(draw) -> str:
    """Text with at least one character no address, URL or resource path may carry."""
    head = draw(st.text(alphabet=string.ascii_letters + string.digits + "./:-_", max_size=20))
    tail = draw(st.text(max_size=10))
    return head + draw(HOSTILE_CHARS) + tail


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.split(".")[-1].isdigit())
ports = st.integers(min_value=1, max_value=65535)
secrets = st.text(alphabet=string.ascii_letters + string.digits + "-_.~!$&()*+,;=", min_size=6, max_size=20)


@given(user=st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10), secret=secrets,
       host=hostnames, port=ports, path=st.sampled_from(["", "/", "/ccf"]))
def test_a_url_with_user_information_is_a_secret_and_never_printed(user, secret, host, port, path):
    url = f"https://{user}:{secret}@{host}:{port}{path}"
    message, is_secret = url_problem(url, https_only=True, path=True)
    assert is_secret and message == SECRET_IN_URL and secret not in message
    problem = Problem("h", "kbs_url", message, "fix")
    assert secret not in str(problem)


@given(value=hostile_strings())
def test_hostile_characters_are_refused_by_every_validator(value):
    assert url_problem("https://k1.example.net/" + value, https_only=True, path=True) is not None
    assert host_problem(value) is not None
    assert resource_uri_problem("kbs:///" + value) is not None
    assert not RESOURCE_PATH.match(value)
    assert host_name_problem(value) is not None


@given(value=hostile_strings(), user=st.one_of(st.none(), secrets))
def test_a_hostile_ssh_hostname_is_refused_with_its_fix_and_no_secret(value, user):
    from ccfactory.config import InventoryError, load_node_config

    hostname = f"root:{user}@{value}" if user else value
    with pytest.raises(InventoryError) as info:
        load_node_config("w1", ("kbs",), {"tee": "none", "ssh_hostname": hostname}, check_files=False)
    found = [p for p in info.value.problems if p.field == "ssh_hostname"]
    assert found and found[0].host == "w1" and found[0].fix, info.value
    if user:
        assert user not in str(info.value)


@given(address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str), spelled=st.booleans())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_lab_relaxations_only_for_the_address_of_a_live_node(address, spelled, live_lab, tmp_path):
    """A stood-in live lab with one node: a lab host connecting anywhere but that node is refused."""
    from ccfactory.config import InventoryError, load_node_config

    node = "fdcc:f199::b"
    live_lab(tmp_path, {"node1": ["10.199.0.11", node]})
    data = {"tee": "none", "lab": True, "lab_dir": str(tmp_path), "kbs_lab_permissive": True, "ssh_hostname": address}
    if ipaddress.ip_address(address) in (ipaddress.ip_address("10.199.0.11"), ipaddress.ip_address(node)):
        assert load_node_config("node1", ("kbs",), data, check_files=False).lab
        return
    with pytest.raises(InventoryError) as info:
        load_node_config("node1", ("kbs",), data, check_files=False)
    assert [(p.host, p.field) for p in info.value.problems] == [("node1", "ssh_hostname")], info.value
    # the node's own address, however spelled, passes
    own = ipaddress.ip_address(node).exploded if spelled else node.upper()
    assert load_node_config("node1", ("kbs",), {**data, "ssh_hostname": own}, check_files=False).lab


@given(host=hostnames, port=ports)
def test_plain_https_urls_pass_and_identify_host_and_port(host, port):
    url = f"https://{host.upper()}:{port}"
    assert url_problem(url, https_only=True, path=False) is None
    assert url_identity(url) == ("https", host, port)
    assert url_problem(url + "/x", https_only=True, path=False) is not None  # no path for the KBS
    assert url_problem(url + "?x", https_only=True, path=True) is not None
    assert url_problem(url + "#x", https_only=True, path=True) is not None


@given(host=hostnames, port=ports)
def test_host_port_is_refused_as_a_bmc_address(host, port):
    message, fix = host_problem(f"{host}:{port}")
    assert "host:port" in message and "bmc_port" in fix


@given(address=st.ip_addresses(v=6), port=ports)
def test_ipv6_bmc_is_bracketed_once(address, port):
    bare = str(address)
    assume("%" not in bare)
    for written in (bare, f"[{bare}]", address.exploded):
        assert host_problem(written) is None
        url = https_base_url(written, port)
        assert url == f"https://[{address.compressed}]:{port}" and "[[" not in url
        assert normalize_host(written) == address.compressed


@given(address=st.ip_addresses(v=4), port=ports)
def test_ipv4_bmc_url(address, port):
    assert host_problem(str(address)) is None
    assert https_base_url(str(address), port) == f"https://{address}:{port}"


@given(segments=st.lists(st.sampled_from(["..", ".", "", "a", "models", ".hidden", "a b", "x\n"]), min_size=1, max_size=5))
def test_resource_uris_need_exactly_three_clean_segments(segments):
    uri = "kbs:///" + "/".join(segments)
    clean = len(segments) == 3 and all(s in ("a", "models") for s in segments)
    assert (resource_uri_problem(uri) is None) == clean
    path = "/".join(segments)
    assert bool(RESOURCE_PATH.match(path)) == clean
    if not clean:
        with pytest.raises(Exception, match="breaks the KBS rule"):
            check_resource_path(path)


@given(name=st.text(max_size=30))
def test_any_host_name_becomes_one_safe_path_component(name):
    component = safe_path_component(name)
    assert component and "/" not in component and component not in (".", "..") and ".." not in component
    assert (Path("/sites") / component).parent == Path("/sites")


# ---------------------------------------------------------------- rendered guest configs

# Values that would break a template that pastes text: quotes, newlines, brackets, '=', TOML
# multi-line delimiters, unicode (incl. a non-BMP character and a line separator).
HOSTILE_VALUES = [
    'https://kbs"\n[evil]\nurl = "x',
    "a'''b\"\"\"c",
    "] = [\n[[credentials]]",
    "caf\u00e9 \u2028 \U0001f512 \\ \t",
    "x\r\ny = 1",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_aa_and_cdh_toml_hold_hostile_values_as_values(value):
    from ccfactory.coco.initdata import Credential
    from ccfactory.templating import render

    credentials = [Credential(value, value), Credential("p2", value + "2")]
    ctx = {"kbs_url": value, "kbs_cert": value, "credentials": credentials, "image_security_policy_uri": value,
           "coco_as_url": value}
    aa = tomllib.loads(render("runtime/aa.toml.j2", **ctx))
    assert aa["token_configs"]["kbs"] == {"url": value, "cert": value}
    assert aa["token_configs"]["coco_as"] == {"url": value}
    assert set(aa) == {"token_configs", "eventlog_config"}
    cdh = tomllib.loads(render("runtime/cdh.toml.j2", **ctx))
    assert cdh["kbc"] == {"name": "cc_kbc", "url": value, "kbs_cert": value}
    assert cdh["credentials"] == [{"path": value, "resource_uri": value}, {"path": "p2", "resource_uri": value + "2"}]
    assert cdh["image"] == {"image_security_policy_uri": value}
    assert set(cdh) == {"socket", "kbc", "credentials", "image"}


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.text(min_size=1, max_size=40).filter(lambda v: all(not 0xD800 <= ord(c) <= 0xDFFF for c in v)))
def test_cdh_toml_round_trips_any_text(value):
    from ccfactory.coco.initdata import Credential
    from ccfactory.templating import render

    text = render("runtime/cdh.toml.j2", kbs_url=value, kbs_cert=value, credentials=[Credential(value, value)],
                  image_security_policy_uri=value)
    doc = tomllib.loads(text)
    assert doc["kbc"]["url"] == value and doc["credentials"] == [{"path": value, "resource_uri": value}]


def test_initdata_embeds_a_hostile_certificate_and_parses_back():
    from ccfactory.coco.initdata import CocoSettings, credentials_from, parse_initdata, render_initdata

    cert = "-----BEGIN CERTIFICATE-----\nMIIB'''\"\"\"]=\n[evil]\n-----END CERTIFICATE-----"
    settings = CocoSettings(kbs_url="https://k1.example.net:8443", kbs_cert=cert,
                            credentials=credentials_from(["kbs:///models/llama-3/key"]))
    doc = parse_initdata(render_initdata(settings, tee="snp").document)
    aa = tomllib.loads(doc["data"]["aa.toml"])
    cdh = tomllib.loads(doc["data"]["cdh.toml"])
    assert aa["token_configs"]["kbs"]["cert"] == cert + "\n"
    assert cdh["kbc"]["kbs_cert"] == cert + "\n"
    assert cdh["credentials"] == [{"path": "/run/confidential-containers/cdh/kbs/models/llama-3/key",
                                   "resource_uri": "kbs:///models/llama-3/key"}]


@pytest.mark.parametrize("uri", ["kbs:///../../etc/x", "kbs:///a/b", "kbs:///a/b/c/d", "kbs:///a/b/c\n", "kbs://h/a/b/c"])
def test_initdata_refuses_a_bad_resource_uri(uri):
    from ccfactory.coco.initdata import InitdataError, credentials_from

    with pytest.raises(InitdataError):
        credentials_from([uri])


def test_initdata_refuses_a_url_with_credentials_without_printing_it():
    from ccfactory.coco.initdata import CocoSettings, InitdataError, render_initdata

    with pytest.raises(InitdataError) as info:
        render_initdata(CocoSettings(kbs_url="https://u:Zq9-secret@k1:8443"), tee="snp")
    assert "Zq9-secret" not in str(info.value)


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_kata_dropin_holds_hostile_kernel_params_and_annotations(value):
    from ccfactory.templating import render

    text = render("runtime/kata-50-ccfactory.toml.j2", shim="qemu-snp\n[x]", handler="kata-qemu-snp", config_path=value,
                  firmware=value, confidential=True, tee="snp", snp_guest_policy=0x30000, tdx_qgs_port=4050, gpu=False,
                  default_memory=2048, default_vcpus=1, enable_annotations=[value, "b"], kernel_params=value,
                  dial_timeout=90, create_container_timeout=300, force_guest_pull=False, ccfactory_source="test")
    doc = tomllib.loads(text)
    qemu = doc["hypervisor"]["qemu"]
    assert qemu["kernel_params"] == value and qemu["firmware"] == value and qemu["enable_annotations"] == [value, "b"]
    assert set(doc) == {"hypervisor", "agent", "runtime"}


def test_runtime_toml_templates_write_every_value_through_a_serializer():
    """No ``{{ value }}`` outside a comment without the toml filter (an overlay may still do
    what it likes; ccfactory's own templates do not paste text)."""
    import re

    for path in [*(REPO / "roles" / "runtime" / "templates").glob("*.toml.j2"), REPO / "roles" / "kbs" / "templates" / "kbs-config.toml.j2"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for expr in re.findall(r"\{\{(.*?)\}\}", line):
                if line.lstrip().startswith("#"):
                    assert "comment_text" in expr, f"{path.name}:{number}: {line}"
                elif "true" not in expr:  # the literal "true"/"false" choice
                    assert re.search(r"\|\s*toml(_key|_document)?\s*$", expr), f"{path.name}:{number}: {line}"
