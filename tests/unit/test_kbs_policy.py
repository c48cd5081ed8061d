"""Resource policies: the Rego ccfactory renders, and the lab evaluator's verdicts on EAR claims."""

from __future__ import annotations

import pytest

from ccfactory.kbs.policy import PolicyError, PolicySpec, UnsupportedPolicy, evaluate, render_resource_policy, spec_of
from ccfactory.roles.kbs import resource_policy

RES = {"plugin": "resource", "resource-path": "/models/llama/key", "query": {}}


def ear(cpu_tee="snp", cpu="affirming", gpu=None, extra=None):
    submods = {"cpu0": {"ear.status": cpu, "ear.veraison.annotated-evidence": {cpu_tee: {"measurement": "m"}}}}
    if gpu:
        submods["gpu0"] = {"ear.status": gpu, "ear.veraison.annotated-evidence": {"nvidia": {}}}
    submods.update(extra or {})
    return {"submods": submods}


STRICT = render_resource_policy(PolicySpec("strict", cpu_tees=("snp", "tdx")))
STRICT_GPU = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",), gpu_paths=("*",)))


def test_strict_policy_text():
    assert STRICT.startswith('# ccfactory-policy: {"cpu_tees":["snp","tdx"],"gpu_paths":[],"kind":"strict","version":1}\n')
    for line in ("package policy", "import rego.v1", "default allow = false", 'cpu_tees := {"snp", "tdx"}',
                 '\tcpu["ear.status"] == "affirming"', '\tnot cpu["ear.veraison.annotated-evidence"].sample',
                 '\tsubmod["ear.status"] != "affirming"', '\tinput.submods.gpu0["ear.status"] == "affirming"'):  # fmt: skip
        assert line in STRICT.splitlines(), line
    assert "gpu_required := true" in STRICT_GPU and "gpu_paths" not in STRICT_GPU.split("\n", 1)[1]


@pytest.mark.parametrize(
    ("policy", "claims", "data", "allowed"),
    [
        (STRICT, ear("snp"), RES, True),
        (STRICT, ear("tdx"), RES, True),
        (STRICT, ear("sample"), RES, False),  # sample evidence never unlocks anything
        (STRICT, ear("snp", cpu="warning"), RES, False),
        (STRICT, ear("snp", cpu="contraindicated"), RES, False),
        (STRICT, ear("snp", gpu="warning"), RES, False),  # every submod must be affirming
        (STRICT, ear("snp"), {**RES, "plugin": "sample"}, False),
        (STRICT, {"submods": {}}, RES, False),
        (STRICT, {}, RES, False),
        (STRICT_GPU, ear("snp"), RES, False),  # a GPU resource needs gpu0
        (STRICT_GPU, ear("snp", gpu="affirming"), RES, True),
        (STRICT_GPU, ear("tdx", gpu="affirming"), RES, False),  # only the fleet's CPU TEE
    ],
)
def test_strict_verdicts(policy, claims, data, allowed):
    assert evaluate(policy, data, claims) is allowed


def test_gpu_requirement_can_be_per_resource():
    policy = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",), gpu_paths=("/models/llama/key",)))
    assert 'gpu_paths := {"/models/llama/key"}' in policy
    assert not evaluate(policy, RES, ear("snp"))
    assert evaluate(policy, {**RES, "resource-path": "/configs/app/token"}, ear("snp"))


def test_sample_with_an_affirming_status_is_still_denied():
    claims = ear("sample")
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    assert not evaluate(STRICT, RES, claims)


def test_lab_permissive_lets_sample_through():
    permissive = render_resource_policy(PolicySpec("lab-permissive"))
    assert "LAB ONLY" in permissive
    assert evaluate(permissive, RES, ear("sample", cpu="warning"))
    assert not evaluate(permissive, {**RES, "plugin": "other"}, ear("sample"))


def test_the_evaluator_is_not_opa():
    edited = STRICT.replace('"affirming"', '"warning"', 1)
    with pytest.raises(UnsupportedPolicy, match="differs from what ccfactory renders"):
        evaluate(edited, RES, ear())
    with pytest.raises(UnsupportedPolicy, match="it is not OPA"):
        spec_of("package policy\nallow if { true }\n")
    assert evaluate("package policy\nimport rego.v1\ndefault allow := true\n", RES, {})
    assert not evaluate("# deny\npackage policy\n\ndefault allow = false\n", RES, ear())
    # free header comments survive
    assert spec_of(render_resource_policy(PolicySpec("strict"), header="site prod\nowner: ops")).kind == "strict"


def test_spec_errors():
    with pytest.raises(PolicyError, match="unknown policy kind"):
        PolicySpec("open")
    with pytest.raises(PolicyError, match="cpu_tees"):
        PolicySpec("strict", cpu_tees=("sample",))
    with pytest.raises(PolicyError, match="is not /<repo>/<type>/<tag>"):
        PolicySpec("strict", gpu_paths=("models/llama/key",))


def test_role_policy_choice(tmp_path):
    from ccfactory.kbs.settings import KbsSettings
    from ccfactory.kbs.pki import PkiSources

    base = dict(host="k", url="https://k", scheme="https", port=443, lab=False, pki_dir=tmp_path, sources=PkiSources())
    strict = resource_policy(KbsSettings(**base), ("snp",), True)
    assert spec_of(strict) == PolicySpec("strict", cpu_tees=("snp",), gpu_paths=("*",))
    listed = resource_policy(KbsSettings(**base, gpu_resources=("models/llama/key",)), ("snp", "tdx"), True)
    assert spec_of(listed).gpu_paths == ("/models/llama/key",)
    assert spec_of(resource_policy(KbsSettings(**base), ("tdx",), False)).gpu_paths == ()
    own = tmp_path / "site.rego"
    own.write_text("package policy\ndefault allow = false\n")
    assert resource_policy(KbsSettings(**base, policy_file=own), ("snp",), True) == own.read_text()
    lab = resource_policy(KbsSettings(**{**base, "lab": True}, lab_permissive=True), ("snp",), True)
    assert spec_of(lab).kind == "lab-permissive"
