"""The reboot wait loop: new boot id means back; the timeout fails the host alone."""

from __future__ import annotations

from ccfactory.operations.reboot import rolling, wait_for_new_boot


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


def test_rolling_batches():
    assert rolling(3) == {"_parallel": 3}
    assert rolling(0) == {"_parallel": 1}
