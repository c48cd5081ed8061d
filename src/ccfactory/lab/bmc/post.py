"""Power-on self test: what the BIOS does with staged settings when the host boots.

Shared by the Redfish reset (``BmcRuntime.reset``) and by boots the BMC did not ask
for (the node rebooted itself: ``state.apply_pending_on_boot``, called by the lab
supervisor before every boot).

Example::

    with StateStore(lab_dir, "node1").transaction() as state:
        run_post(state, load_personality(state.vendor), FaultSwitch(lab_dir, "node1"))
"""

from __future__ import annotations

import time

from ccfactory.lab.bmc.faults import FaultSwitch
from ccfactory.lab.bmc.messages import message
from ccfactory.lab.bmc.personality import Personality
from ccfactory.lab.bmc.resources import iso
from ccfactory.lab.bmc.state import BmcState, SettingsResult


def run_post(state: BmcState, p: Personality, faults: FaultSwitch) -> None:
    """Apply the staged settings at POST (or not: Dell without a job, a failing-job fault).

    Jobs that take part move to Running with their outcome decided here; the caller
    ends them when the boot completes.
    """
    now = time.time()
    state.boots += 1
    # Running jobs here are left over from a reset that hung: they run again now.
    scheduled = [j for j in state.jobs if j.state in ("Scheduled", "Running")]
    if p.bios.apply_requires_job and not scheduled:
        if state.pending:
            state.event("pending_without_job", attributes=sorted(state.pending))
        return  # Dell: staged values need a config job; they stay pending
    if not state.pending and not scheduled:
        return
    fail = bool(faults.take("fail_next_job"))
    for job in scheduled:
        job.state, job.started = "Running", now
        job.outcome = "Failed" if fail else "Completed"
    if fail:
        state.event("apply_failed", attributes=sorted(state.pending))
        state.settings_result = SettingsResult(
            time=iso(now), messages=[message("SettingsFailed", prop=name) for name in sorted(state.pending)]
        )
        state.pending, state.pending_apply_time = {}, None
        return
    previous = dict(state.applied)
    # the BIOS applies a staged value only if its registry rules allow it in the state it
    # boots from (locked, greyed out or outside a value limit: ignored, reported as failed)
    refused = sorted(n for n, v in state.pending.items() if p.validate_write(state.tee, previous, {n: v}))
    for name in refused:
        state.pending.pop(name)
    if refused:
        state.event("refused_at_post", attributes=refused)
    state.applied.update(state.pending)
    attrs = p.attributes_for(state.tee)
    for name in state.pending:
        attr = attrs.get(name)
        if attr is not None and attr.one_shot is not None and state.applied[name] != attr.one_shot:
            state.event("one_shot", attribute=name, value=state.applied[name])
            state.applied[name] = attr.one_shot  # fired; reads its idle value again
    state.applied.update(p.forced_values(state.tee, state.applied))
    revert = faults.current().revert_after_reset
    reverted = [n for n in state.pending if "*" in revert or n in revert]
    for name in reverted:
        state.applied[name] = previous.get(name, state.applied[name])
    if reverted:
        state.event("reverted", attributes=sorted(reverted))
    state.event("applied", attributes=sorted(set(state.pending) - set(reverted)))
    state.settings_result = SettingsResult(
        time=iso(now),
        messages=[message("SettingsFailed", prop=name) for name in refused] or [message("Success")],
    )
    state.pending, state.pending_apply_time = {}, None
