"""Redfish JSON of the lab BMC, built from a personality's static fragments and the state.

Pure functions (no Flask): each takes the personality, the TEE and the state and
returns a dict shaped like the vendor's real resource (see the ``[resources.*]``
tables of the personality files, copied from the recordings).

Example::

    >>> bios = render_bios(p, "snp", state)
    >>> bios["@Redfish.Settings"]["SettingsObject"]["@odata.id"]
    '/redfish/v1/Systems/System.Embedded.1/Bios/Settings'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from ccfactory.lab.bmc.personality import AttrDef, Personality
from ccfactory.lab.bmc.state import BmcState, Job

SESSIONS_PATH = "/redfish/v1/SessionService/Sessions"
SESSION_SERVICE_PATH = "/redfish/v1/SessionService"
REGISTRIES_PATH = "/redfish/v1/Registries"


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> Redfish date-time (UTC), e.g. ``2026-11-26T01:02:03+00:00``."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()


def make_etag(p: Personality, *parts: Any) -> str:
    """A content ETag: changes exactly when the rendered content does (stable across restarts)."""
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f'W/"{digest}"' if p.bios.etag_style == "weak" else f'"{digest}"'


def visible_applied(p: Personality, state: BmcState) -> dict[str, Any]:
    """Applied attributes a client can see (hidden ones are absent, as on Dell/AMI)."""
    flags = p.flags(state.tee, state.applied)
    attrs = p.attributes_for(state.tee)
    return {n: state.applied[n] for n in attrs if n in state.applied and not flags[n]["Hidden"]}


def bios_etag(p: Personality, state: BmcState) -> str:
    return make_etag(p, "bios", visible_applied(p, state))


def settings_etag(p: Personality, state: BmcState) -> str:
    return make_etag(p, "settings", settings_attributes(p, state), state.pending_apply_time)


def settings_attributes(p: Personality, state: BmcState) -> dict[str, Any]:
    """What the settings object lists: the staged values, or everything with them merged in."""
    if p.bios.settings_view == "full":
        return {**visible_applied(p, state), **state.pending}
    return dict(state.pending)


def registry_id(p: Personality, tee: str) -> str:
    return str(p.resource("registry", tee).get("Id", "BiosAttributeRegistry"))


def render_bios(p: Personality, tee: str, state: BmcState) -> dict[str, Any]:
    body = p.resource("bios", tee)
    body["@odata.id"] = p.paths.get("bios", tee)
    body.setdefault("AttributeRegistry", registry_id(p, tee))
    body["Attributes"] = visible_applied(p, state)
    body["@odata.etag"] = bios_etag(p, state)
    settings: dict[str, Any] = body.setdefault("@Redfish.Settings", {})
    settings["SettingsObject"] = {"@odata.id": p.paths.get("settings", tee)}
    if p.bios.advertise_apply_times:
        settings["SupportedApplyTimes"] = list(p.bios.apply_times)
    if p.bios.settings_status:
        # sushy PATCHes the settings object with If-Match: this ETag, so it is the
        # settings object's current ETag (DMTF leaves its meaning loose).
        settings["ETag"] = settings_etag(p, state)
        settings["Time"] = state.settings_result.time
        settings["Messages"] = state.settings_result.messages
    return body


def render_settings(p: Personality, tee: str, state: BmcState) -> dict[str, Any]:
    body = p.resource("settings", tee)
    body["@odata.id"] = p.paths.get("settings", tee)
    body.setdefault("AttributeRegistry", registry_id(p, tee))
    body["Attributes"] = settings_attributes(p, state)
    body["@odata.etag"] = settings_etag(p, state)
    if state.pending_apply_time:
        body["@Redfish.SettingsApplyTime"] = {
            "@odata.type": "#Settings.v1_1_0.PreferredApplyTime",
            "ApplyTime": state.pending_apply_time,
        }
    return body


def _registry_entry(p: Personality, attr: AttrDef, flags: dict[str, bool], applied: dict[str, Any],
                    tee: str) -> dict[str, Any]:
    props = p.registry.attribute_props
    entry: dict[str, Any] = {
        "AttributeName": attr.name,
        "DisplayName": attr.display,
        "HelpText": attr.help or attr.display,
        "MenuPath": attr.menu,
        "Type": attr.type,
    }
    if attr.order is not None:
        entry["DisplayOrder"] = attr.order
    if attr.type == "Enumeration":
        entry["Value"] = [{"ValueName": v.name, "ValueDisplayName": v.display} for v in attr.enum_values()]
    if attr.type == "Integer":
        for key, value in (("LowerBound", attr.lower), ("UpperBound", attr.upper), ("ScalarIncrement", attr.step)):
            if value is not None:
                entry[key] = value
    if attr.type in ("String", "Password"):
        for key, value in (("MinLength", attr.min_length), ("MaxLength", attr.max_length)):
            if value is not None:
                entry[key] = value
    # GrayOut is read-only for a client; vendors without the property report it as ReadOnly.
    read_only = flags["ReadOnly"] or (flags["GrayOut"] and "GrayOut" not in props)
    optional = {
        "CurrentValue": applied.get(attr.name) if p.registry.current_value == "applied" else None,
        "DefaultValue": attr.default_for(tee),
        "GrayOut": flags["GrayOut"],
        "Hidden": flags["Hidden"],
        "Immutable": attr.immutable,
        "ReadOnly": read_only,
        "ResetRequired": attr.reset_required,
        "WarningText": attr.warning,
        "WriteOnly": False,
    }
    for key in props:
        entry[key] = optional[key]
    return entry


def render_registry(p: Personality, tee: str, state: BmcState) -> dict[str, Any]:
    body = p.resource("registry", tee)
    body["@odata.id"] = p.paths.get("registry", tee)
    model = p.model_for(tee)
    body.setdefault(
        "SupportedSystems",
        [{"ProductName": model.get("model", ""), "FirmwareVersion": model.get("bios_version", "")}],
    )
    flags = p.flags(tee, state.applied)
    attrs = p.attributes_for(tee)
    menus = sorted({a.menu for a in attrs.values()})
    body["RegistryEntries"] = {
        "Attributes": [_registry_entry(p, a, flags[n], state.applied, tee) for n, a in attrs.items()],
        "Dependencies": [
            {
                "DependencyFor": d.for_,
                "Type": "Map",
                "Dependency": {
                    "MapFrom": [
                        {
                            "MapFromAttribute": c.attr,
                            "MapFromCondition": c.cond,
                            "MapFromProperty": "CurrentValue",
                            "MapFromValue": c.value,
                            **({"MapTerms": c.terms} if c.terms else {}),
                        }
                        for c in d.when
                    ],
                    "MapToAttribute": d.for_,
                    "MapToProperty": d.set,
                    "MapToValue": _map_to_value(attrs[d.for_], d.value) if d.set == "Value" else d.value,
                },
            }
            for d in p.dependencies_for(tee)
        ],
        "Menus": [
            {"DisplayName": m.strip("./").split("/")[-1] or "Main", "DisplayOrder": i, "MenuName": m.strip("./")
             .replace("/", "_") or "Main", "MenuPath": m, "ReadOnly": False}
            for i, m in enumerate(menus)
        ],
    }
    return body


def _map_to_value(attr: AttrDef, names: Any) -> list[dict[str, str]]:
    """iDRAC's ``Value`` map lists the allowed entries as the registry's Value list does
    (rec: R750 BIOS 1.13.2 registry, MemoryEncryption while CpuPaLimit is Enabled)."""
    return [{"ValueDisplayName": v.display, "ValueName": v.name} for v in attr.enum_values() if v.name in names]


def render_registry_file(p: Personality, tee: str) -> dict[str, Any]:
    body = p.resource("registry_file", tee)
    body["@odata.id"] = p.paths.get("registry_file", tee)
    body.setdefault("Location", [{"Language": "en", "Uri": p.paths.get("registry", tee)}])
    return body


def render_registries(p: Personality, tee: str) -> dict[str, Any]:
    members = [{"@odata.id": p.paths.get("registry_file", tee)}]
    return {
        "@odata.context": "/redfish/v1/$metadata#MessageRegistryFileCollection.MessageRegistryFileCollection",
        "@odata.id": REGISTRIES_PATH,
        "@odata.type": "#MessageRegistryFileCollection.MessageRegistryFileCollection",
        "Description": "Registry Repository",
        "Name": "Registry File Repository",
        "Members": members,
        "Members@odata.count": len(members),
    }


# ---------------------------------------------------------------------- jobs
def _job_message(p: Personality, job: Job) -> dict[str, str]:
    messages = p.resources.get("job_messages", {})
    default = {"Message": job.message or job.state, "MessageId": ""}
    return {**default, **messages.get(job.state, {})}


def render_job_oem(p: Personality, job: Job, path: str) -> dict[str, Any]:
    """Dell's DellJob view (``/Managers/iDRAC.Embedded.1/Oem/Dell/Jobs/<JID>``)."""
    msg = _job_message(p, job)
    body = p.resource("job", "none")
    body.update(
        {
            "@odata.id": path,
            "Id": job.id,
            "JobState": job.state,
            "Message": msg["Message"],
            "MessageId": msg["MessageId"],
            "MessageArgs": [],
            "MessageArgs@odata.count": 0,
            "PercentComplete": {"Scheduled": 0, "Running": 50}.get(job.state, 100),
            "StartTime": iso(job.created),
            "EndTime": "TIME_NA",
            "CompletionTime": iso(job.ended),
            "ActualRunningStartTime": iso(job.started),
            "ActualRunningStopTime": iso(job.ended),
            "TargetSettingsURI": None,
        }
    )
    return body


def render_job_task(p: Personality, job: Job, path: str) -> dict[str, Any]:
    """The DMTF Job view (``/redfish/v1/JobService/Jobs/<JID>``)."""
    msg = _job_message(p, job)
    body = p.resource("task_job", "none")
    body.update(
        {
            "@odata.id": path,
            "Id": job.id,
            "JobState": job.state,
            "JobStatus": {"Failed": "Critical"}.get(job.state, "OK"),
            "PercentComplete": {"Scheduled": 0, "Running": 50}.get(job.state, 100),
            "StartTime": iso(job.created),
            "EndTime": iso(job.ended),
            "Messages": [{"Message": msg["Message"], "MessageId": msg["MessageId"], "MessageArgs": [],
                          "MessageArgs@odata.count": 0}],
            "Messages@odata.count": 1,
        }
    )
    return body


def render_jobs(p: Personality, state: BmcState, path: str) -> dict[str, Any]:
    body = p.resource("jobs", "none")
    members = [{"@odata.id": f"{path.rstrip('/')}/{j.id}"} for j in state.jobs]
    body.update({"@odata.id": path, "Members": members, "Members@odata.count": len(members)})
    return body


# ------------------------------------------------------------------ sessions
def render_session(sid: str, username: str) -> dict[str, Any]:
    return {
        "@odata.id": f"{SESSIONS_PATH}/{sid}",
        "@odata.type": "#Session.v1_0_0.Session",
        "Id": sid,
        "Name": "User Session",
        "UserName": username,
    }


def render_sessions(ids: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": SESSIONS_PATH,
        "@odata.type": "#SessionCollection.SessionCollection",
        "Name": "Session Collection",
        "Members": [{"@odata.id": f"{SESSIONS_PATH}/{i}"} for i in ids],
        "Members@odata.count": len(ids),
    }


def render_session_service(timeout: int) -> dict[str, Any]:
    return {
        "@odata.id": SESSION_SERVICE_PATH,
        "@odata.type": "#SessionService.v1_1_8.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": True,
        "SessionTimeout": timeout,
        "Sessions": {"@odata.id": SESSIONS_PATH},
    }


# ------------------------------------------------- sushy-tools resources, personalised
def personalize_root(p: Personality, tee: str, body: dict[str, Any], uuid: str) -> None:
    body["Vendor"] = p.identity.vendor_label
    body["Product"] = p.identity.product
    body["UUID"] = uuid
    body["SessionService"] = {"@odata.id": SESSION_SERVICE_PATH}
    body.setdefault("Links", {})["Sessions"] = {"@odata.id": SESSIONS_PATH}


def personalize_system(p: Personality, tee: str, body: dict[str, Any], node: str) -> None:
    model = p.model_for(tee)
    body["@odata.type"] = p.identity.system_odata_type
    body["Name"] = p.identity.system_name
    body["HostName"] = node
    body["Manufacturer"] = p.identity.manufacturer
    body["Model"] = model.get("model", "")
    body["BiosVersion"] = model.get("bios_version", "")
    body["Bios"] = {"@odata.id": p.paths.get("bios_link", tee) or p.paths.get("bios", tee)}
    summary = body.setdefault("ProcessorSummary", {})
    summary.setdefault("Count", 2)
    summary["Model"] = model.get("cpu", "")
    reset = body.setdefault("Actions", {}).setdefault("#ComputerSystem.Reset", {})
    reset["ResetType@Redfish.AllowableValues"] = list(p.identity.reset_types)


def personalize_manager(p: Personality, body: dict[str, Any], manager_uuid: str) -> None:
    mid = p.identity.manager_id
    body["@odata.id"] = f"/redfish/v1/Managers/{mid}"
    body["Id"] = mid
    body["UUID"] = manager_uuid
    body["Name"] = p.identity.manager_name
    body["Model"] = p.identity.manager_model or body.get("Model", "")
    body["FirmwareVersion"] = p.identity.firmware_version
    body["Description"] = p.identity.product
