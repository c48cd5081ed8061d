"""The reboot wait loop: new boot id means back; the timeout fails the host alone."""

from __future__ import annotations

from ccfactory.operations.reboot import Escalation, rolling, wait_for_new_boot


class FakeHost:
    """Answers with a scripted sequence of (reachable, boot_id) per connect attempt."""

    def __init__(self, script):
        self.script = list(script)
        self.connected = False
        self.logs: list[str] = []
        self.current = None

    def connect(self, show_errors=True):
        self.current = self.script.pop(0) if self.script else (False, None)
        self.connected = self.current[0]

    def disconnect(self):
        self.connected = False

    def get_fact(self, fact):
        return self.current[1]

    def log_styled(self, message, **kwargs):
        self.logs.append(message)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_back_when_boot_id_changes():
    clock = FakeClock()
    host = FakeHost([(True, "old"), (False, None), (False, None), (True, "new")])
    assert wait_for_new_boot(host, "old", timeout=60, poll_interval=5, reason="bios", clock=clock, sleep=clock.sleep)
    assert clock.now == 15
    assert host.logs[-1] == "back after 15s (bios)"


def test_timeout_fails_with_reason_and_progress():
    clock = FakeClock()
    host = FakeHost([(False, None)] * 1000)
    ok = wait_for_new_boot(host, "old", timeout=100, poll_interval=10, reason="kernel cmdline", clock=clock, sleep=clock.sleep)
    assert not ok
    assert any(line.startswith("waiting for reboot (kernel cmdline): 30s of 100s") for line in host.logs)
    assert "did not come back within 100s after reboot (kernel cmdline)" in host.logs[-1]


def test_same_boot_id_is_not_back():
    clock = FakeClock()
    host = FakeHost([(True, "old")] * 1000)
    assert not wait_for_new_boot(host, "old", timeout=20, poll_interval=5, reason="x", clock=clock, sleep=clock.sleep)


class Escalate:
    """An escalation action that records when it ran; ``then`` is what the host does after it."""

    def __init__(self, host, clock, then, result="ForceRestart", error=None):
        self.host, self.clock, self.then, self.result, self.error = host, clock, then, result, error
        self.calls: list[float] = []

    def __call__(self, target):
        assert target is self.host
        self.calls.append(self.clock.now)
        if self.error:
            raise self.error
        self.host.script = list(self.then)
        return self.result


def test_a_host_still_on_its_old_boot_is_escalated_once_after_the_grace_period():
    clock = FakeClock()
    host = FakeHost([(True, "old")] * 1000)  # the OS ignored the request
    action = Escalate(host, clock, then=[(False, None), (True, "new")])
    ok = wait_for_new_boot(host, "old", timeout=600, poll_interval=10, reason="bios", escalation=Escalation(30, action),
                           clock=clock, sleep=clock.sleep)
    assert ok and action.calls == [30]
    assert any("still running the old boot 30s after the reboot request" in line and "ForceRestart" in line
               for line in host.logs), host.logs
    assert host.logs[-1] == "back after 50s (bios)"


def test_a_host_that_went_down_is_not_escalated_while_it_boots():
    clock = FakeClock()
    host = FakeHost([(True, "old")] + [(False, None)] * 20 + [(True, "new")])  # slow POST, past the grace
    action = Escalate(host, clock, then=[])
    ok = wait_for_new_boot(host, "old", timeout=600, poll_interval=10, reason="bios", escalation=Escalation(30, action),
                           clock=clock, sleep=clock.sleep)
    assert ok and action.calls == []


def test_a_host_whose_boot_id_cannot_be_read_is_not_escalated():
    clock = FakeClock()
    # connects, but the fact fails (going down, or sudo not ready while booting), then comes back
    host = FakeHost([(True, "old")] + [(True, None)] * 10 + [(True, "new")])
    action = Escalate(host, clock, then=[])
    ok = wait_for_new_boot(host, "old", timeout=600, poll_interval=10, reason="bios", escalation=Escalation(30, action),
                           clock=clock, sleep=clock.sleep)
    assert ok and action.calls == []


def test_escalation_runs_once_and_nothing_to_escalate_keeps_waiting_until_the_timeout():
    clock = FakeClock()
    host = FakeHost([(True, "old")] * 1000)
    action = Escalate(host, clock, then=[(True, "old")] * 1000, result=None)  # the first reset was forced already
    ok = wait_for_new_boot(host, "old", timeout=100, poll_interval=10, reason="bios", escalation=Escalation(20, action),
                           clock=clock, sleep=clock.sleep)
    assert not ok and action.calls == [20]
    assert not any("still running the old boot" in line for line in host.logs)
    assert "did not come back within 100s" in host.logs[-1]


def test_a_failed_escalation_is_reported_and_the_wait_goes_on_for_a_late_reboot():
    clock = FakeClock()
    host = FakeHost([(True, "old")] * 6 + [(False, None), (True, "new")])  # a slow shutdown, done at 70 s
    action = Escalate(host, clock, then=None, error=RuntimeError("BMC bmc1: 401"))
    ok = wait_for_new_boot(host, "old", timeout=600, poll_interval=10, reason="kernel", escalation=Escalation(30, action),
                           clock=clock, sleep=clock.sleep)
    assert ok and action.calls == [30]
    assert any("the harder reset failed: BMC bmc1: 401; waiting until the timeout (kernel)" in line for line in host.logs)
    assert host.logs[-1] == "back after 70s (kernel)"


def test_a_failed_escalation_of_a_host_that_never_reboots_fails_at_the_timeout():
    clock = FakeClock()
    host = FakeHost([(True, "old")] * 1000)
    action = Escalate(host, clock, then=None, error=RuntimeError("BMC bmc1: 401"))
    ok = wait_for_new_boot(host, "old", timeout=100, poll_interval=10, reason="kernel", escalation=Escalation(30, action),
                           clock=clock, sleep=clock.sleep)
    assert not ok and action.calls == [30]
    assert "did not come back within 100s" in host.logs[-1]


def test_rolling_batches():
    assert rolling(3) == {"_parallel": 3}
    assert rolling(0) == {"_parallel": 1}
