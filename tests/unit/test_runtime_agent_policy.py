"""ccfactory's default Kata agent policy, evaluated by a Rego engine (regorus, as the Kata agent
uses: kata-containers@4.1.0:src/agent/policy/src/policy.rs:149-210, ``data.agent_policy.<Request>``).

Every request 4.1.0 knows is decided explicitly (an undefined rule is a denial upstream, but a
silent one); each decision against Kata's allow-all policy and genpolicy's defaults is listed
here with its reason, and docs/runtime.md ("Agent policy") says the same.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ccfactory.coco.initdata import CocoSettings, parse_initdata, render_initdata
from ccfactory.kbs import rego

# kata-containers@4.1.0:src/kata-opa/allow-all.rego (every rule `:= true`)
ALLOW_ALL_4_1_0 = (
    "AddARPNeighborsRequest AddSwapRequest CloseStdinRequest CopyFileRequest CreateContainerRequest "
    "CreateSandboxRequest DestroySandboxRequest ExecProcessRequest GetDiagnosticDataRequest GetMetricsRequest "
    "GetOOMEventRequest GuestDetailsRequest ListInterfacesRequest ListRoutesRequest MemAgentCompactConfig "
    "MemAgentMemcgConfig MemHotplugByProbeRequest OnlineCPUMemRequest PauseContainerRequest PullImageRequest "
    "ReadStreamRequest RemoveContainerRequest RemoveStaleVirtiofsShareMountsRequest ReseedRandomDevRequest "
    "ResumeContainerRequest SetGuestDateTimeRequest SetPolicyRequest SignalProcessRequest StartContainerRequest "
    "StartTracingRequest StatsContainerRequest StopTracingRequest TtyWinResizeRequest UpdateContainerRequest "
    "UpdateEphemeralMountsRequest UpdateInterfaceRequest UpdateRoutesRequest WaitProcessRequest WriteStreamRequest"
).split()
# kata-containers@4.1.0:src/tools/genpolicy/rules.rego:12-63, the names genpolicy adds
GENPOLICY_ONLY_4_1_0 = ("AddSwapPathRequest", "GetIPTablesRequest", "SetIPTablesRequest", "ResizeVolumeRequest",
                        "VolumeStatsRequest", "AllowRequestsFailingPolicy")

DENIED = {
    "ExecProcessRequest": "the host would run commands inside a confidential workload (genpolicy: false)",
    "ReadStreamRequest": "the host would read a workload's stdout/stderr (genpolicy: false)",
    "WriteStreamRequest": "the host would write unmeasured input into a workload's stdin (genpolicy: false)",
    "CloseStdinRequest": "belongs to stdin streaming, which is denied (genpolicy: false)",
    "GetDiagnosticDataRequest": "guest diagnostic data to the host; genpolicy: false (rules.rego:12-13)",
    "SetPolicyRequest": "the host would replace this policy after attestation (genpolicy: false)",
    "MemAgentCompactConfig": "sent by runtime-rs only; the Go runtime at 4.1.0 never does (genpolicy: false)",
    "MemAgentMemcgConfig": "sent by runtime-rs only; the Go runtime at 4.1.0 never does (genpolicy: false)",
    "AllowRequestsFailingPolicy": "would turn every denial into an allow (genpolicy: false)",
    "AddSwapPathRequest": "not in allow-all; genpolicy: false",
    "GetIPTablesRequest": "not in allow-all; genpolicy: false",
    "SetIPTablesRequest": "not in allow-all; genpolicy: false",
    "ResizeVolumeRequest": "not in allow-all; genpolicy: false",
    "VolumeStatsRequest": "not in allow-all; genpolicy: false",
}


@pytest.fixture(scope="module")
def policy() -> str:
    d = render_initdata(CocoSettings(kbs_url="https://kbs.example:8443"), tee="snp")
    return parse_initdata(d.document)["data"]["policy.rego"]


def test_every_request_of_4_1_0_is_decided_explicitly(policy):
    defined = set(re.findall(r"^default (\w+) := (?:true|false)$", policy, re.M))
    assert defined == set(ALLOW_ALL_4_1_0) | set(GENPOLICY_ONLY_4_1_0)


@pytest.mark.parametrize("request_name", sorted(set(ALLOW_ALL_4_1_0) | set(GENPOLICY_ONLY_4_1_0)))
def test_the_engine_decides_each_request_as_documented(policy, request_name):
    value = rego.evaluate_rule(policy, f"data.agent_policy.{request_name}", {})
    assert value is (request_name not in DENIED), DENIED.get(request_name, "allowed: the runtime needs it")


def test_docs_list_every_denied_request():
    text = (Path(__file__).resolve().parents[2] / "docs" / "runtime.md").read_text()
    section = text.split("## Agent policy", 1)[1].split("\n## ", 1)[0]
    for name in DENIED:
        assert f"`{name}`" in section, name
