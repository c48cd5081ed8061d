"""``pyinfra --no-wait`` ignores rolling batches: a run that would reboot more hosts at once
than ``reboot_batch_size`` allows is stopped before any fact is read."""

from __future__ import annotations

import pytest
from pyinfra.api.exceptions import PyinfraError

from ccfactory.config import load_node_config
from ccfactory.deploys import refuse_unbounded_reboots

WORKER = ("workers", "snp")
DATA = {"bmc_vendor": "dell", "bmc_address": "10.0.0.5", "bmc_username": "root", "bmc_password_env": "BMC_PW"}


def fleet(n: int, batch: int) -> dict:
    return {
        f"w{i}": load_node_config(f"w{i}", WORKER, {**DATA, "bmc_address": f"10.0.0.{i + 5}", "reboot_batch_size": batch},
                                  check_files=False)
        for i in range(n)
    }


ARGV = ["pyinfra", "--no-wait", "inventories/site.py", "deploy/site.py"]


@pytest.mark.parametrize("stages", [["firmware"], ["host"], ["gpu"], ["preflight", "firmware", "host", "gpu", "verify"]])
def test_no_wait_with_rebooting_stages_and_a_smaller_batch_is_refused(stages):
    with pytest.raises(PyinfraError) as info:
        refuse_unbounded_reboots(stages, fleet(4, 2), ARGV)
    text = str(info.value)
    assert "up to 4 hosts could reboot together" in text and "reboot_batch_size 2" in text
    assert "Fix: drop --no-wait, or set reboot_batch_size >= 4" in text


@pytest.mark.parametrize(
    "stages, hosts, batch, argv",
    [
        (["kbs", "runtime", "verify"], 4, 1, ARGV),  # nothing reboots
        (["host"], 4, 4, ARGV),  # the batch covers every host
        (["host"], 1, 1, ARGV),  # one host (e.g. --limit)
        (["host"], 4, 1, ["pyinfra", "inventories/site.py", "deploy/host.py"]),  # rolling batches hold
        (["host"], 4, 1, ["pyinfra", "--serial", "inventories/site.py", "deploy/host.py"]),  # one at a time
        (["host"], 4, 1, ["pyinfra", "--serial", "--no-wait", "inventories/site.py", "deploy/host.py"]),  # serial wins
    ],
)
def test_runs_whose_reboots_stay_within_the_batch_are_let_through(stages, hosts, batch, argv):
    refuse_unbounded_reboots(stages, fleet(hosts, batch), argv)
