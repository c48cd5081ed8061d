"""Resource policies evaluated by a real Rego engine (regorus) with the input and data Trustee v0.21.0 builds.

Data: ``trustee@v0.21.0:kbs/src/api_server.rs:222-248`` (``resource-path`` is an array of
segments; ``kbs/sample_policies/default.rego`` documents ``["myrepo", "License", "key"]``).
Input: the EAR token claims (``tests/trustee_claims.py``: upstream's example token with real
SNP/TDX/Hopper claims from Trustee's test data). Rule ``data.policy.allow``, undefined or
non-boolean = deny (``api_server.rs:428-446``).
"""

from __future__ import annotations

import pytest
from trustee_claims import FIXTURES, token

from ccfactory.kbs.policy import PolicyError, PolicySpec, path_segments, render_resource_policy
from ccfactory.kbs.rego import RegoError, UnsafePolicy, allows, compile_policy, refuse_unsafe_policy, request_data
from ccfactory.roles.kbs import resource_policy

GPU_PATH = "models/llama-3/key"
CPU_PATH = "configs/app/token"
STRICT = render_resource_policy(PolicySpec("strict", cpu_tees=("snp", "tdx")))
STRICT_GPU_ALL = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",), gpu_paths=("*",)))
STRICT_GPU_LISTED = render_resource_policy(PolicySpec("strict", cpu_tees=("snp", "tdx"), gpu_paths=(GPU_PATH,)))
PERMISSIVE = render_resource_policy(PolicySpec("lab-permissive"))

SAMPLE = token(cpu0=("affirming", "sample"))
SNP = token(cpu0=("affirming", "snp"))
TDX = token(cpu0=("affirming", "tdx"))
SNP_GPU = token(cpu0=("affirming", "snp"), gpu0=("affirming", "nvidia"))
SNP_GPU_WARNING = token(cpu0=("affirming", "snp"), gpu0=("warning", "nvidia"))
AZ_SNP = token(cpu0=("affirming", "az-snp-vtpm"))
SNP_WARNING = token(cpu0=("warning", "snp"))
SNP_CONTRA = token(cpu0=("contraindicated", "snp"))


def res(path: str) -> dict:
    return request_data(f"resource/{path}")


def test_request_data_is_what_trustee_builds():
    """trustee@v0.21.0:kbs/src/api_server.rs:222-248 and default.rego's own examples."""
    assert request_data("resource/myrepo/License/key") == {
        "plugin": "resource", "resource-path": ["myrepo", "License", "key"], "query": {}}  # fmt: skip
    assert request_data("plugin1/para/meters", {"version": "1.0.0"}) == {
        "plugin": "plugin1", "resource-path": ["para", "meters"], "query": {"version": "1.0.0"}}  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "claims", "path", "allowed"),
    [
        (STRICT, SAMPLE, CPU_PATH, False),  # sample evidence never unlocks anything
        (STRICT, SNP, CPU_PATH, True),
        (STRICT, TDX, CPU_PATH, True),
        (STRICT, AZ_SNP, CPU_PATH, False),  # not a TEE of this fleet
        (STRICT, SNP_WARNING, CPU_PATH, False),
        (STRICT, SNP_CONTRA, CPU_PATH, False),
        (STRICT, SNP_GPU, CPU_PATH, True),
        (STRICT, SNP_GPU_WARNING, CPU_PATH, False),  # every submodule must be affirming
        (STRICT_GPU_ALL, SNP, CPU_PATH, False),  # every resource needs gpu0
        (STRICT_GPU_ALL, SNP_GPU, CPU_PATH, True),
        (STRICT_GPU_ALL, SNP_GPU_WARNING, CPU_PATH, False),
        (STRICT_GPU_ALL, token(cpu0=("affirming", "tdx"), gpu0=("affirming", "nvidia")), CPU_PATH, False),
        (STRICT_GPU_LISTED, SNP, GPU_PATH, False),  # the fail-open of issue 13: listed GPU path, CPU-only token
        (STRICT_GPU_LISTED, SNP, CPU_PATH, True),  # unlisted path: CPU attestation suffices
        (STRICT_GPU_LISTED, SNP_GPU, GPU_PATH, True),
        (STRICT_GPU_LISTED, SNP_GPU_WARNING, GPU_PATH, False),
        (STRICT_GPU_LISTED, TDX, GPU_PATH, False),
        (STRICT_GPU_LISTED, SAMPLE, GPU_PATH, False),
        (PERMISSIVE, SAMPLE, CPU_PATH, True),  # LAB ONLY
        (PERMISSIVE, token(cpu0=("contraindicated", "sample")), GPU_PATH, True),
    ],
)
def test_matrix(policy, claims, path, allowed):
    assert allows(policy, claims, res(path)) is allowed


def test_other_plugins_are_denied():
    assert not allows(STRICT, SNP, request_data("nebula-ca/credential"))
    assert not allows(PERMISSIVE, SAMPLE, request_data("nebula-ca/credential"))


def test_the_string_form_of_a_path_never_matches():
    """Before the fix the policy compared "/models/llama-3/key" with data["resource-path"]: the
    real data shape made the GPU rule never apply (allow for a CPU-only token)."""
    old = STRICT_GPU_LISTED.replace('{["models", "llama-3", "key"]}', '{"/models/llama-3/key"}')
    assert old != STRICT_GPU_LISTED
    assert allows(old, SNP, res(GPU_PATH))  # the fail-open, reproduced with the real engine
    assert not allows(STRICT_GPU_LISTED, SNP, res(GPU_PATH))


def test_gpu_paths_render_as_segment_arrays():
    assert 'gpu_paths := {["models", "llama-3", "key"]}' in STRICT_GPU_LISTED
    assert path_segments("/a/b/c") == ("a", "b", "c")
    for bad in ("a/b", "a/b/c/d", "a//c", "a/b/../c", "a/b/c\n"):
        with pytest.raises(PolicyError):
            path_segments(bad)


def test_upstream_sample_policies_as_trustee_ships_them():
    """kbs/sample_policies at v0.21.0, evaluated unchanged."""
    default = (FIXTURES / "default.rego").read_text()
    assert not allows(default, SAMPLE, res(CPU_PATH))
    assert allows(default, SNP, res(CPU_PATH))
    assert not allows((FIXTURES / "deny_all.rego").read_text(), SNP, res(CPU_PATH))
    assert allows((FIXTURES / "allow_all.rego").read_text(), SAMPLE, res(CPU_PATH))
    affirming = (FIXTURES / "affirming.rego").read_text()
    assert allows(affirming, SNP, res(CPU_PATH)) and not allows(affirming, SNP_WARNING, res(CPU_PATH))


def test_every_rendered_policy_passes_the_upload_gate():
    for text in (STRICT, STRICT_GPU_ALL, STRICT_GPU_LISTED):
        assert refuse_unsafe_policy(text, [GPU_PATH, CPU_PATH]) > 0
    assert refuse_unsafe_policy((FIXTURES / "default.rego").read_text(), [CPU_PATH]) > 0


@pytest.mark.parametrize("name", ["allow_all.rego", "affirming.rego"])
def test_the_gate_refuses_upstream_policies_that_release_to_sample(name):
    """allow_all releases everything; affirming.rego releases to sample evidence rated affirming
    (the AS's default_cpu policy rates sample 'affirming' once its launch digest is in RVPS)."""
    with pytest.raises(UnsafePolicy, match="non-TEE evidence: it allows GET /kbs/v0/resource/"):
        refuse_unsafe_policy((FIXTURES / name).read_text(), [CPU_PATH])


def test_the_gate_refuses_the_lab_permissive_policy_and_broken_rego():
    with pytest.raises(UnsafePolicy):
        refuse_unsafe_policy(PERMISSIVE, [])
    with pytest.raises(RegoError, match="does not compile"):
        compile_policy("package policy\nallow { true }\n")  # Rego v0 syntax: regorus 0.10 refuses it
    with pytest.raises(RegoError, match="does not compile") as err:
        refuse_unsafe_policy("package policy\nallow if {\n", [])
    assert "Stack backtrace" not in str(err.value)


def test_a_policy_without_the_allow_rule_denies():
    """api_server.rs:432-436: an undefined data.policy.allow is false."""
    assert not allows("package policy\nx := 1\n", SNP, res(CPU_PATH))
    assert not allows('package policy\nallow := "yes"\n', SNP, res(CPU_PATH))  # non-boolean: false


def test_role_uses_site_paths_as_gpu_paths(tmp_path):
    from types import SimpleNamespace

    settings = SimpleNamespace(policy_file=None, lab_permissive=False, gpu_resources=(GPU_PATH,))
    text = resource_policy(settings, ("snp",), fleet_has_gpus=True)
    assert not allows(text, SNP, res(GPU_PATH)) and allows(text, SNP, res(CPU_PATH))
    settings = SimpleNamespace(policy_file=None, lab_permissive=False, gpu_resources=None)
    assert not allows(resource_policy(settings, ("snp",), fleet_has_gpus=True), SNP, res(CPU_PATH))
    assert allows(resource_policy(settings, ("snp",), fleet_has_gpus=False), SNP, res(CPU_PATH))


@pytest.mark.parametrize(
    "text",
    [
        'package policy\nallow if input.submods.cpu0["ear.veraison.annotated-evidence"].sample.debug == false\n',
        'package policy\nallow if input.submods.cpu0["ear.veraison.annotated-evidence"].runtime_data_claims["tee-pubkey"]\n',
        'package policy\nallow if data.query.version == "1.0.0"\n',
        'package policy\nallow if data["resource-path"][0] == "public"\n',
        'package policy\nallow if input.submods.cpu0["ear.trustworthiness-vector"].hardware < 50\n',
        'package policy\nallow if input.submods.gpu0["ear.veraison.annotated-evidence"].sampledevice\n',
    ],
    ids=["sample-debug-claim", "tee-pubkey", "query", "generic-path", "trust-vector", "sampledevice-gpu"],
)
def test_the_gate_probes_what_real_sample_tokens_carry(text):
    """Found by an independent review: each releases to sample evidence through a claim the
    first probes lacked (sample claims: deps/verifier/src/sample/mod.rs:69-96; runtime data:
    kbs/src/attestation/backend.rs:355-359; query: api_server.rs:241-248)."""
    with pytest.raises(UnsafePolicy):
        refuse_unsafe_policy(text, [CPU_PATH])


def test_a_sampledevice_gpu_does_not_count_as_an_attested_gpu():
    sample_gpu = token(cpu0=("affirming", "snp"))
    sample_gpu["submods"]["gpu0"] = {**SNP_GPU["submods"]["gpu0"],
                                     "ear.veraison.annotated-evidence": {"sampledevice": {"svn": "1"}}}  # fmt: skip
    assert allows(STRICT_GPU_ALL, SNP_GPU, res(CPU_PATH))
    assert not allows(STRICT_GPU_ALL, sample_gpu, res(CPU_PATH))
