"""What a no-op re-run asks of the KBS and of the controller, measured here:

* the KBS client keeps its HTTPS connection between requests (one TLS handshake per client),
  and a kept connection the KBS closed meanwhile (restart, keep-alive timeout) costs one more
  connection, never a failed request;
* the kbs role and the verify stage validate each host's configuration once per run, however
  many of their steps need the fleet's configurations.
"""

from __future__ import annotations

import time

from test_standin_trustee_helpers import start_kbs

from ccfactory.config import load_node_config
from ccfactory.roles.kbs import collect
def test_the_client_reuses_its_connection_and_survives_a_closed_one(tmp_path):
    kbs = start_kbs(tmp_path)
    try:
        client = kbs.client()
        for _ in range(4):
            assert client.request("GET", "/healthz").status == 200
        client.list_resource_policies()  # an admin request on the same connection
        assert client.check_admin_auth().startswith("admin API accepts")
        assert client.connections == 1
        # the KBS restarts on the same port: the kept connection is dead
        port = int(kbs.url.rsplit(":", 1)[1])
        kbs.stop()
        kbs = start_kbs(tmp_path / "again", pki=kbs.pki, port=port)
        assert client.request("GET", "/healthz").status == 200
        assert client.connections == 2
        # requests at the same time (greenlets) do not share one connection
        import gevent

        statuses = [g.value for g in gevent.joinall([gevent.spawn(lambda: client.request("GET", "/healthz").status)
                                                     for _ in range(3)])]  # fmt: skip
        assert statuses == [200, 200, 200]
        client.close()
        assert client.request("GET", "/healthz").status == 200
    finally:
        kbs.stop()


def test_a_request_on_a_fresh_connection_is_not_retried(tmp_path):
    """Only a kept connection the KBS closed is retried; a KBS that is down is an error at once."""
    from test_standin_trustee_helpers import free_port

    from ccfactory.kbs.client import KbsClient
    from ccfactory.kbs.errors import KbsUnreachable

    client = KbsClient(f"http://127.0.0.1:{free_port()}", lab=True, timeout=2)
    started = time.monotonic()
    try:
        client.request("GET", "/healthz")
    except KbsUnreachable as exc:
        assert "no answer from the KBS" in str(exc)
    else:
        raise AssertionError("nothing listens there")
    assert client.connections == 1 and time.monotonic() - started < 2


class Inventory(list):
    """A list that takes attributes, as pyinfra's ``Inventory`` does."""


def test_configs_are_validated_once_per_run():
    hosts = Inventory()
    for name, groups in (("w1", ("workers", "snp")), ("w2", ("workers", "snp")), ("k1", ("kbs",))):
        host = type("H", (), {})()
        host.name, host.groups, host.data = name, groups, type("D", (), {"dict": lambda self: {}})()
        hosts.append(host)
    calls = []

    def node_config(host):
        calls.append(host.name)
        return load_node_config(host.name, host.groups, {}, check_files=False)

    assert [h.name for h, _ in collect.snp_workers(hosts, node_config)] == ["w1", "w2"]
    assert [h.name for h, _ in collect.snp_workers(hosts, node_config)] == ["w1", "w2"]
    assert len(collect.configs_of(hosts, node_config)) == 3
    assert calls == ["w1", "w2", "k1"]  # once each, for every caller of this run

    from ccfactory import config
    from ccfactory.roles import kbs as role

    monkey = config.node_config
    try:
        config.node_config = node_config  # the role calls config.node_config (it imports the module)
        _, tees, _ = role._fleet(hosts)
    finally:
        config.node_config = monkey
    assert tees == ("snp",) and calls == ["w1", "w2", "k1"]
    # another run (a new inventory object) validates again
    again = Inventory(hosts)
    list(collect.snp_workers(again, node_config))
    assert calls[3:] == ["w1", "w2", "k1"]
