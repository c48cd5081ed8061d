"""Drive a lab BMC in-process (Flask test client, no sockets): for this package's tests and
for other suites (e.g. the firmware role) that want a realistic Redfish peer cheaply.

Example::

    bmc = make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=calls.append_power)
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"Sme": "Enabled"},
                                       "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"}})
    bmc.reset("ForceRestart"); bmc.wait_power("On")
    assert bmc.get(bmc.paths.bios).json["Attributes"]["Sme"] == "Enabled"
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccfactory.lab.bmc.credentials import ensure_credentials, read_credentials
from ccfactory.lab.bmc.emulator import test_client
from ccfactory.lab.bmc.runtime import BmcRuntime, PowerFn
from ccfactory.lab.bmc.spec import BmcSpec, write_spec


@dataclass
class PowerRecorder:
    """A stand-in for ``ccfactory.lab.power.power``: records calls, tracks on/off."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    on: bool = True

    def __call__(self, lab_dir: Path, node: str, action: str) -> str:
        if action != "status":
            self.calls.append((node, action))
            self.on = action in ("on", "restart", "force-restart")
        return "on" if self.on else "off"

    def actions(self) -> list[str]:
        return [a for _, a in self.calls]


class TestBmc:
    """One in-process BMC: runtime, authenticated test client, vendor paths."""

    __test__ = False  # not a pytest class

    def __init__(self, lab_dir: Path, spec: BmcSpec, power_fn: PowerFn | None) -> None:
        self.lab_dir = lab_dir
        self.spec = spec
        write_spec(lab_dir, spec)
        ensure_credentials(lab_dir, spec.node, _username(spec))
        self.username, self.password = read_credentials(lab_dir, spec.node)
        self.runtime = BmcRuntime(lab_dir, spec, power_fn=power_fn)
        self.client = test_client(self.runtime)
        self.personality = self.runtime.personality
        self.paths = _Paths(self.personality, spec.tee)

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def request(self, method: str, path: str, json: Any = None, *, auth: Any = "default",
                headers: dict[str, str] | None = None) -> Any:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if auth == "default":
            kwargs["auth"] = self.auth
        elif auth is not None:
            kwargs["auth"] = auth
        if json is not None:
            kwargs["json"] = json
        return self.client.open(path, method=method, **kwargs)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PATCH", path, body, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body if body is not None else {}, **kw)

    def reset(self, reset_type: str = "ForceRestart", **kw: Any) -> Any:
        target = f"/redfish/v1/Systems/{self.personality.identity.system_id}/Actions/ComputerSystem.Reset"
        return self.post(target, {"ResetType": reset_type}, **kw)

    def power_state(self) -> str:
        return self.get(f"/redfish/v1/Systems/{self.personality.identity.system_id}").json["PowerState"]

    def wait_power(self, want: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        state = self.power_state()
        while state != want and time.monotonic() < deadline:
            time.sleep(0.02)
            state = self.power_state()
        return state

    def stage_and_apply(self, attributes: dict[str, Any], reset_type: str = "ForceRestart") -> Any:
        """PATCH the settings object (with an apply time where jobs need one), reset, wait for On."""
        body: dict[str, Any] = {"Attributes": attributes}
        if self.personality.paths.jobs:
            body["@Redfish.SettingsApplyTime"] = {"ApplyTime": "OnReset"}
        target = self.paths.patch_target
        r = self.patch(target, body)
        if r.status_code >= 400:
            return r
        self.reset(reset_type)
        self.wait_power("On")
        return r


class _Paths:
    def __init__(self, personality: Any, tee: str) -> None:
        p = personality.paths
        self.bios = p.get("bios", tee)
        self.settings = p.get("settings", tee)
        self.registry = p.get("registry", tee)
        self.registry_file = p.get("registry_file", tee)
        self.jobs = p.jobs
        self.patch_target = self.settings if "settings" in personality.bios.patch_targets else self.bios
        self.system = f"/redfish/v1/Systems/{personality.identity.system_id}"


def _username(spec: BmcSpec) -> str:
    from ccfactory.lab.bmc.personality import load_personality

    return load_personality(spec.vendor).identity.default_username


def make_bmc(lab_dir: Path, *, node: str = "node1", index: int = 1, vendor: str = "dell", tee: str = "snp",
             power_fn: PowerFn | None = None, power: str = "node", reset_seconds: float = 0.0,
             address: str = "127.0.0.2", port: int = 8443) -> TestBmc:
    """Create (or reopen) an in-process BMC under ``lab_dir``.

    ``power="node"`` with a ``PowerRecorder`` checks what the node would be asked to do;
    ``power="simulated"`` is BMC-only mode.

    Example: ``bmc = make_bmc(tmp_path, vendor="hpe", tee="tdx", power_fn=PowerRecorder())``
    """
    spec = BmcSpec(node=node, index=index, vendor=vendor, tee=tee, address=address, port=port,
                   power=power, reset_seconds=reset_seconds)
    return TestBmc(Path(lab_dir), spec, power_fn)
