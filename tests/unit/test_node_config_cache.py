"""node_config validates a host's data once per run (each validation of a lab host proves the
lab from live state), and again as soon as its data or groups change."""

from __future__ import annotations

from pyinfra.api import Inventory

import ccfactory.config as config


def test_node_config_validates_once_until_the_host_changes(monkeypatch):
    calls = []
    real = config.load_node_config

    def counting(name, groups, data):
        calls.append(name)
        return real(name, groups, data)

    monkeypatch.setattr(config, "load_node_config", counting)
    inventory = Inventory(([("@fake/w1", {"tee": "snp"})], {}), workers=(["@fake/w1"], {}), snp=(["@fake/w1"], {}))
    host = inventory.get_host("@fake/w1")
    first = config.node_config(host)
    assert config.node_config(host) is first and calls == ["@fake/w1"]
    host.data.reboot_batch_size = 4  # the data changed (a deploy may set host.data): validated again
    changed = config.node_config(host)
    assert changed is not first and changed.reboot.batch_size == 4 and len(calls) == 2
