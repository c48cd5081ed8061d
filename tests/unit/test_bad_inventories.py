"""Bad input: malformed inventories, group data and site files each stop the site deploy with
a clear error naming the host and the field, before any connection is made.

Every case is run the way an operator runs it, ``pyinfra -y <inventory> deploy/site.py``, with
every host's SSH address pointing at a TCP listener that counts connection attempts (a
stand-in for the nodes' sshd): the run must fail, print ``host: field: ...`` and leave the
listener at zero. The same inventory through ``ccfactory check`` (the offline entry point)
must fail with the same line. A control case (a valid inventory with the same scaffolding and
the same site files) does connect, so a zero is not an accident of the set-up.

The pyinfra runs are subprocesses (the CLI monkey-patches gevent and keeps global state), run a
few at a time on first use and cached for the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ccfactory.cli import main as ccfactory_main
from ccfactory.lab import proof
from lab_standin import probe_from_spec
from support import CountingListener

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
PARALLEL = max(2, min(6, (os.cpu_count() or 2) * 2))

# Inventory scaffolding: every host's SSH goes to the counting listener (@PORT@); @DIR@ is the
# case's directory (site files live there). Bodies below are Python inventory code.
HEADER = """\
from ccfactory.inventory import validate_before_connect
_ssh = {'ssh_hostname': '127.0.0.1', 'ssh_port': @PORT@, 'ssh_user': 'root', 'ssh_connect_retries': 0}
W = {**_ssh, 'bmc_vendor': 'dell', 'bmc_address': '10.0.0.5', 'bmc_username': 'root',
     'bmc_password_env': 'BMC_W1', 'gpu_count': 8, 'gpu_model': 'H100'}
K = {**_ssh, 'tee': 'none', 'kbs_url': 'https://k1.example.net:8443'}
"""
FOOTER = "\nvalidate_before_connect()\n"

# A BIOS profile in the OEM format (bios_profile_dirs), valid as written
GOOD_PROFILE = """\
vendor = "acme"
[snp]
[[snp.stages]]
name = "sme"
[snp.stages.settings.smee]
names = ["SMEE"]
value = "Enabled"
source = "acme BIOS guide"
"""

# The lab's BOM overlay format (<lab_dir>/bom-lab.toml), valid as written
GOOD_OVERLAY = """\
schema_version = 1
[[artifact]]
name = "kata-static"
version = "4.1.0-lab"
filename = "kata-static-lab.tar.xz"
url = "http://10.199.0.1:8080/kata-static-lab.tar.xz"
sha256 = "78822f87fed4874dc99239fb3dcc4a0b5dda5c3ca69c60d43c4edb6997a5c055"
pin = "lab-stand-in"
source = "lab"
"""
LAB_KBS = "{**K, 'lab': True, 'lab_dir': '@DIR@/lab', 'kbs_url': 'https://k1:8443'}"
# The lab gate trusts only a running lab (ccfactory.lab.proof), which these runs stand in: node k1
# of @DIR@/lab, reached at the counting listener (tests/lab_standin.py; never a file the product reads)
LAB_K1 = {"lab": {"k1": ["k1", "127.0.0.1"]}}
STANDIN_SPEC = "lab-standin.json"  # next to the inventory: run pyinfra through tests/lab_standin.py


@dataclass(frozen=True)
class Case:
    id: str
    body: str  # inventory code between HEADER and FOOTER
    expect: tuple[str, ...]  # fragments of the error, each "host: field: ..."
    files: dict[str, str] = field(default_factory=dict)  # relative path -> content (@DIR@ expanded)
    secret: str | None = None  # a literal secret the output must never contain
    labs: dict[str, dict] = field(default_factory=dict)  # running labs stood in: lab dir (relative) -> nodes


def C(id: str, body: str, *expect: str, files: dict[str, str] | None = None, secret: str | None = None,
      labs: dict[str, dict] | None = None) -> Case:  # fmt: skip
    return Case(id, body, tuple(expect), files or {}, secret, labs or {})


WORKER = "workers = [('w1', {**W, %s})]\nsnp = ['w1']\ngpu = ['w1']\n"
KBS = "kbs = [('k1', {**K, %s})]\n"

CASES = [
    # ---- types
    C("type-gpu-count-text", WORKER % "'gpu_count': 'eight'", "w1: gpu_count: Input should be a valid integer"),
    C("type-bmc-port-range", WORKER % "'bmc_port': 70000", "w1: bmc_port: Input should be less than or equal to 65535"),
    C("type-reboot-timeout-low", WORKER % "'reboot_timeout': 5", "w1: reboot_timeout: Input should be greater than or equal to 30"),
    C("type-verify-tls-word", WORKER % "'bmc_verify_tls': 'maybe'", "w1: bmc_verify_tls: Input should be a valid boolean"),
    C("type-shims-string", WORKER % "'runtime_shims': 'kata-qemu-snp'", "w1: runtime_shims: Input should be a valid list"),
    C("type-resources-list", KBS % "'kbs_resources': ['models/a/key']", "k1: kbs_resources: Input should be a valid dictionary"),
    C("type-override-list", WORKER % "'bios_overrides': {'min_sev_asid': [100]}", "w1: bios_overrides.min_sev_asid"),
    C("type-cc-mode-enum", WORKER % "'gpu_cc_mode': 'enabled'", "w1: gpu_cc_mode: Input should be 'on', 'devtools', 'off' or 'ppcie'"),
    # ---- unknown keys
    C("unknown-key-typo", WORKER % "'gpu_modle': 'H100'", "w1: gpu_modle: unknown key; fix: did you mean 'gpu_model'?"),
    C("unknown-key", KBS % "'flavour': 'large'", "k1: flavour: unknown key; fix: remove it"),
    # ---- contradictions
    C("both-tee-groups", "workers = [('w1', W)]\nsnp = ['w1']\ntdx = ['w1']\ngpu = ['w1']\n",
      "w1: tee: host is in both the snp and tdx groups"),
    C("tee-vs-group", WORKER % "'tee': 'tdx'", "w1: tee: tee is 'tdx' but the host is in group 'snp'"),
    C("worker-without-tee", "workers = [('w1', {**_ssh, 'tee': 'none'})]\n", "w1: tee: a worker needs a TEE"),
    C("gpu-group-no-gpus", WORKER % "'gpu_count': 0, 'gpu_model': None", "w1: gpu_count: host is in group gpu but gpu_count is 0"),
    C("gpus-without-model", WORKER % "'gpu_model': None", "w1: gpu_model: gpu_count is set but gpu_model is not"),
    C("ppcie-on-blackwell", WORKER % "'gpu_model': 'B200', 'gpu_cc_mode': 'ppcie'",
      "w1: gpu_cc_mode: ppcie needs an HGX Hopper GPU; B200"),
    C("ppcie-single-gpu", WORKER % "'gpu_count': 1, 'gpu_cc_mode': 'ppcie'",
      "w1: gpu_cc_mode: ppcie protects multi-GPU HGX systems"),
    C("gpu-cc-without-tee", KBS % "'gpu_count': 2, 'gpu_model': 'H100'", "k1: gpu_cc_mode: GPU CC mode needs a CPU TEE"),
    C("two-password-refs", WORKER % "'bmc_password_file': '/etc/bmc.pw'",
      "w1: bmc_password_file: both bmc_password_env and bmc_password_file are set"),
    C("bmc-without-password-ref", WORKER % "'bmc_password_env': None", "w1: bmc_password_env: no BMC password reference"),
    C("password-ref-without-bmc", WORKER % "'bmc_address': None",
      "w1: bmc_address: a BMC password reference is set but no bmc_address"),
    C("bmc-without-vendor", WORKER % "'bmc_vendor': None", "w1: bmc_vendor: missing while bmc_address is set"),
    C("tls-off-outside-lab", WORKER % "'bmc_verify_tls': False",
      "w1: bmc_verify_tls: TLS verification may only be turned off in the lab"),
    C("permissive-kbs-outside-lab", KBS % "'kbs_lab_permissive': True",
      "k1: kbs_lab_permissive: permissive KBS policy outside the lab"),
    C("batch-size-differs", "workers = [('w1', {**W, 'reboot_batch_size': 2}), ('w2', {**W, 'bmc_address': '10.0.0.6'})]\n"
      "snp = ['w1', 'w2']\ngpu = ['w1', 'w2']\n", "w2: reboot_batch_size: 1 differs from 2 on w1"),
    C("shared-bmc", "workers = [('w1', W), ('w2', W)]\nsnp = ['w1', 'w2']\ngpu = ['w1', 'w2']\n",
      "w2: bmc_address: same BMC as host w1"),
    C("lab-without-lab-dir", KBS % "'lab': True", "k1: lab: lab is true but lab_dir is not set"),
    C("lab-not-running", KBS % "'lab': True, 'lab_dir': '@DIR@/no-lab'", "k1: lab: lab is true but", "holds no running lab"),
    C("mirror-without-url", KBS % "'artifact_source': 'mirror'",
      "k1: artifact_mirror_url: artifact_source is mirror but no URL"),
    # ---- secrets written literally (never echoed)
    C("literal-bmc-password", WORKER % "'bmc_password': 'Zq9-hunter2-Literal'",
      "w1: bmc_password: a literal secret is not allowed in the inventory", secret="Zq9-hunter2-Literal"),
    C("literal-admin-key", KBS % "'kbs_admin_private_key': 'MC4CAQAwBQYDK2VwBCIEIZq9LiteralKeyBody'",
      "k1: kbs_admin_private_key: a literal secret is not allowed", secret="MC4CAQAwBQYDK2VwBCIEIZq9LiteralKeyBody"),
    C("password-in-env-name", WORKER % "'bmc_password_env': 'Zq9!pass word'",
      "w1: bmc_password_env: is not an environment variable name", secret="Zq9!pass word"),
    C("literal-token-in-group-data", "workers = [('w1', W)]\nsnp = ['w1']\ngpu = ['w1']\n",
      "w1: nras_api_token: a literal secret is not allowed",
      files={"group_data/all.py": "nras_api_token = 'Zq9-GroupDataToken'\n"}, secret="Zq9-GroupDataToken"),
    # ---- bad URLs and addresses
    C("kbs-url-http", KBS % "'kbs_url': 'http://k1.example.net:8080'", "k1: kbs_url: must use https; fix: plain http is only for the lab"),
    C("kbs-url-bad-port", KBS % "'kbs_url': 'https://k1.example.net:99999'", "k1: kbs_url: not a valid URL"),
    C("kbs-url-no-scheme", WORKER % "'kbs_url': 'kbs.example.net'", "w1: kbs_url: not an http(s) URL with a host"),
    C("bmc-address-url", WORKER % "'bmc_address': 'https://bmc1.example.net/redfish/v1'",
      "w1: bmc_address: not a host name or IP address"),
    C("mirror-url-ftp", KBS % "'artifact_source': 'mirror', 'artifact_mirror_url': 'ftp://mirror.example.net/ccf'",
      "k1: artifact_mirror_url: not an http(s) URL with a host"),
    # ---- unknown vendor, wrong GPU model
    C("unknown-vendor", WORKER % "'bmc_vendor': 'acme'", "w1: bmc_vendor: unknown vendor 'acme'"),
    C("unknown-gpu-model", WORKER % "'gpu_model': 'H1000'", "w1: gpu_model: unknown GPU model 'H1000'"),
    C("gpu-model-lowercase", WORKER % "'gpu_model': 'h100 sxm'", "w1: gpu_model: unknown GPU model 'h100 sxm'"),
    # ---- site files: BIOS overrides and OEM profile directories
    C("override-unknown-setting", WORKER % "'bios_overrides': {'min_sev_asdi': 100}",
      "w1: bios_overrides: overrides for dell/snp: unknown setting(s) 'min_sev_asdi' (did you mean 'min_sev_asid'?)"),
    C("override-wrong-kind", WORKER % "'bios_overrides': {'min_sev_asid': 'lots'}",
      "w1: bios_overrides: overrides for dell/snp: min_sev_asid: kind is int but value 'lots' is not an integer"),
    # a bool is not a BIOS value: pydantic's lax mode must not turn True into ASID limit 1
    C("override-bool", WORKER % "'bios_overrides': {'min_sev_asid': True}", "w1: bios_overrides"),
    C("profile-dir-missing", WORKER % "'bios_profile_dirs': ['@DIR@/no-such-dir']", "w1: bios_profile_dirs: not a directory"),
    C("profile-missing-source", WORKER % "'bmc_vendor': 'acme', 'bios_profile_dirs': ['@DIR@/bios']",
      "w1: bmc_vendor:", "acme.toml: snp: stage 1 'sme': setting 'smee': source: missing (required)",
      files={"bios/acme.toml": GOOD_PROFILE.replace('source = "acme BIOS guide"\n', "")}),
    C("profile-not-toml", WORKER % "'bmc_vendor': 'acme', 'bios_profile_dirs': ['@DIR@/bios']",
      "w1: bmc_vendor:", "acme.toml: not valid TOML", files={"bios/acme.toml": "vendor = acme\n[snp\n"}),
    C("profile-vendor-mismatch", WORKER % "'bmc_vendor': 'acme', 'bios_profile_dirs': ['@DIR@/bios']",
      "w1: bmc_vendor:", "vendor = 'acmee' but the file is named acme.toml",
      files={"bios/acme.toml": GOOD_PROFILE.replace('vendor = "acme"', 'vendor = "acmee"')}),
    C("profile-unknown-key", WORKER % "'bmc_vendor': 'acme', 'bios_profile_dirs': ['@DIR@/bios']",
      "w1: bmc_vendor:", "setting 'smee': valeu: unknown key (did you mean 'value'?)",
      files={"bios/acme.toml": GOOD_PROFILE.replace('value = "Enabled"', 'valeu = "Enabled"')}),
    C("profile-without-tee", WORKER % "'bmc_vendor': 'acme', 'bios_profile_dirs': ['@DIR@/bios']",
      "w1: bmc_vendor:", "acme.toml: no [snp] section",
      files={"bios/acme.toml": GOOD_PROFILE.replace("[snp]", "[tdx]").replace("snp.", "tdx.")}),
    # ---- site files: controller-side paths named by the inventory
    C("ca-bundle-missing", WORKER % "'bmc_ca_bundle': '@DIR@/no-ca.pem'", "w1: bmc_ca_bundle: file", "does not exist on the controller"),
    # '~user' that names no user of the controller: a clear error, not an internal exception
    C("ca-bundle-unknown-home", WORKER % "'bmc_ca_bundle': '~ccf-no-such-user/ca.pem'", "w1: bmc_ca_bundle:", "~ccf-no-such-user"),
    C("profile-dir-unknown-home", WORKER % "'bios_profile_dirs': ['~ccf-no-such-user/bios']", "w1: bios_profile_dirs:",
      "~ccf-no-such-user"),
    C("resource-file-unknown-home", KBS % "'kbs_resources': {'models/llama-3/key': '~ccf-no-such-user/m.key'}",
      "k1: kbs_resources[models/llama-3/key]:", "~ccf-no-such-user"),
    C("artifact-dir-missing", KBS % "'artifact_source': 'local', 'artifact_dir': '@DIR@/no-mirror'",
      "k1: artifact_dir: directory", "does not exist"),
    # ---- site files: KBS resource paths and files (ccfactory.kbs.settings)
    C("resource-path-two-segments", KBS % "'kbs_resources': {'models/key': '@DIR@/model.key'}",
      "k1: kbs_resources: 'models/key' breaks the KBS path rule <repo>/<type>/<tag>", files={"model.key": "k"}),
    C("resource-path-dot-dot", KBS % "'kbs_resources': {'models/../key': '@DIR@/model.key'}",
      "k1: kbs_resources: 'models/../key' breaks the KBS path rule", files={"model.key": "k"}),
    C("gpu-resource-path", KBS % "'kbs_gpu_resources': ['models/llama 3/key']",
      "k1: kbs_gpu_resources:", "break the KBS path rule"),
    C("resource-file-missing", KBS % "'kbs_resources': {'models/llama-3/key': '@DIR@/no-such.key'}",
      "k1: kbs_resources[models/llama-3/key]: file", "does not exist on the controller"),
    C("policy-file-missing", KBS % "'kbs_policy_file': '@DIR@/no-policy.rego'", "k1: kbs_policy_file: file", "does not exist"),
    # ---- site files: the lab's BOM overlay (lab hosts only)
    C("bom-overlay-bad-sha", "kbs = [('k1', %s)]\n" % LAB_KBS, "k1: lab_dir:", "bom-lab.toml: kata-static: sha256",
      files={"lab/bom-lab.toml": GOOD_OVERLAY.replace("78822f87", "XYZ")}, labs=LAB_K1),
    C("bom-overlay-missing-url", "kbs = [('k1', %s)]\n" % LAB_KBS, "k1: lab_dir:", "bom-lab.toml: kata-static: url: missing",
      files={"lab/bom-lab.toml": GOOD_OVERLAY.replace('url = "http://10.199.0.1:8080/kata-static-lab.tar.xz"\n', "")},
      labs=LAB_K1),
]

# Valid: the same scaffolding and site files (OEM profile, KBS resource, lab overlay) - it connects.
CONTROL = C(
    "control-valid",
    "workers = [('w1', {**W, 'bmc_vendor': 'acme', 'bios_profile_dirs': ['@DIR@/bios']})]\nsnp = ['w1']\ngpu = ['w1']\n"
    "kbs = [('k1', {**%s, 'kbs_resources': {'models/llama-3/key': '@DIR@/model.key'}})]\n" % LAB_KBS,
    files={"bios/acme.toml": GOOD_PROFILE, "model.key": "k", "lab/bom-lab.toml": GOOD_OVERLAY}, labs=LAB_K1,
)


@dataclass
class Outcome:
    returncode: int
    output: str
    connections: int
    inventory: Path
    check_code: int | None = None
    check_output: str = ""


def _materialize(case: Case, root: Path, port: int) -> Path:
    directory = root / case.id
    directory.mkdir(parents=True)
    expand = lambda text: text.replace("@DIR@", str(directory)).replace("@PORT@", str(port))  # noqa: E731
    for rel, content in case.files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expand(content))
    write_standin_spec(directory, case.labs)
    inventory = directory / "site.py"
    inventory.write_text(expand(HEADER + case.body + FOOTER))
    return inventory


def write_standin_spec(directory: Path, labs: dict[str, dict]) -> None:
    """Stand running labs in for the case's pyinfra run (``labs``: lab dir relative to the case -> nodes)."""
    if labs:
        spec = {str(directory / lab): {"nodes": nodes} for lab, nodes in labs.items()}
        (directory / STANDIN_SPEC).write_text(json.dumps(spec))


def stand_in_labs(inventory: Path, monkeypatch) -> None:
    """In this process, the labs the case's pyinfra run had stood in (none: the autouse empty probe)."""
    spec = inventory.with_name(STANDIN_SPEC)
    if spec.is_file():
        monkeypatch.setattr(proof, "_probe", probe_from_spec(json.loads(spec.read_text())))


def run_site_deploy(write_inventory: Callable[[int], Path], listener_type: type = CountingListener) -> Outcome:
    """``pyinfra -y <inventory> deploy/site.py`` with every host's SSH at a connection counter;
    ``write_inventory(port)`` writes the inventory that points there and returns its path."""
    listener = listener_type()
    try:
        inventory = write_inventory(listener.port)
        env = {**os.environ, "PYINFRA_PROGRESS": "off"}
        env.pop("BMC_W1", None)
        spec = inventory.with_name(STANDIN_SPEC)
        pyinfra = [sys.executable, str(REPO / "tests" / "lab_standin.py"), str(spec)] if spec.is_file() else [str(PYINFRA)]
        run = subprocess.run(
            [*pyinfra, "-y", str(inventory), str(REPO / "deploy" / "site.py")],
            cwd=inventory.parent, capture_output=True, text=True, timeout=180, env=env,
        )
        return Outcome(run.returncode, run.stdout + run.stderr, listener.accepted, inventory)
    finally:
        listener.close()


def _run(case: Case, root: Path) -> Outcome:
    return run_site_deploy(lambda port: _materialize(case, root, port))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad-inventories")
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = dict(zip([c.id for c in [*CASES, CONTROL]], pool.map(lambda c: _run(c, root), [*CASES, CONTROL])))
    return results


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_the_site_deploy_before_any_connection(case, outcomes, capsys, monkeypatch):
    outcome = outcomes[case.id]
    out = outcome.output
    assert outcome.returncode != 0, out[-3000:]
    for fragment in case.expect:
        assert fragment in out, f"expected {fragment!r} in:\n{out[-3000:]}"
    assert "no host was touched" in out, out[-3000:]
    assert outcome.connections == 0, f"pyinfra connected {outcome.connections} time(s) although the input was bad"
    if case.secret:
        assert case.secret not in out, "the error echoed the secret"

    # the offline check names the same problem (and never the secret either)
    monkeypatch.chdir(outcome.inventory.parent)
    monkeypatch.delenv("BMC_W1", raising=False)
    stand_in_labs(outcome.inventory, monkeypatch)
    code = ccfactory_main(["check", str(outcome.inventory)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    for fragment in case.expect:
        assert fragment in text, f"ccfactory check: expected {fragment!r} in:\n{text}"
    if case.secret:
        assert case.secret not in text


def test_control_case_with_the_same_site_files_does_connect(outcomes):
    outcome = outcomes[CONTROL.id]
    assert "problem(s) in the inventory" not in outcome.output, outcome.output[-3000:]
    assert outcome.connections >= 1, outcome.output[-3000:]
