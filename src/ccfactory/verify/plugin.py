"""pytest plugin: run testinfra suites against the hosts of a pyinfra inventory.

Usage::

    pytest --pyargs ccfactory.verify --pyinfra-inventory inventories/lab.py [--pyinfra-limit workers]

Each pyinfra host becomes a testinfra host (paramiko over SSH with the inventory's
user, key and port). Tests get the pyinfra ``Host`` and its validated ``NodeConfig``
through the ``pyinfra_host`` and ``node_config`` fixtures. The plugin is inert unless
``--pyinfra-inventory`` is given, but tests under ``ccfactory.verify`` refuse to run
without an inventory or ``--hosts``, rather than silently testing this machine.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

_HOSTS_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("ccfactory")
    group.addoption("--pyinfra-inventory", help="pyinfra inventory whose hosts the tests run against")
    group.addoption(
        "--pyinfra-limit", action="append", default=[], help="only hosts in this group or with this name (repeatable)"
    )


def testinfra_spec(host) -> str | None:
    """The testinfra host spec for a pyinfra host, or None for connectors it cannot reach."""
    name = host.name
    if name.startswith("@local"):
        return "local://"
    if name.startswith("@docker/"):
        return f"docker://{name.split('/', 1)[1]}"
    if name.startswith("@"):
        return None  # @fake and friends have nothing to test
    data = host.data
    address = data.get("ssh_hostname") or name
    user = data.get("ssh_user")
    port = data.get("ssh_port")
    query = {}
    if data.get("ssh_key"):
        query["ssh_identity_file"] = data.get("ssh_key")
    if data.get("ssh_config_file"):
        query["ssh_config"] = data.get("ssh_config_file")
    if data.get("_sudo"):
        query["sudo"] = "true"
    netloc = f"{user}@{address}" if user else address
    if port:
        netloc += f":{port}"
    return f"paramiko://{netloc}" + (f"?{urlencode(query)}" if query else "")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    path = config.getoption("--pyinfra-inventory")
    from ccfactory.verify.report import STAGE_ORDER

    for stage in STAGE_ORDER:  # select a stage's checks with -m <stage>
        config.addinivalue_line("markers", f"{stage}: readiness checks of the {stage} stage")
    if not path:
        return
    from ccfactory.inventory import hosts_of, load_inventory

    inventory = load_inventory(path)
    limit = config.getoption("--pyinfra-limit")
    wanted = {name for name, _, _ in hosts_of(inventory, limit)}
    specs, by_address = [], {}
    for host in inventory:
        if host.name in wanted and (spec := testinfra_spec(host)):
            specs.append(spec)
            by_address[host.data.get("ssh_hostname") or host.name] = host
    if not specs:
        raise pytest.UsageError(f"no reachable host in {path} (limit {limit or 'none'})")
    config.stash[_HOSTS_KEY] = by_address
    config.option.hosts = ",".join(specs)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--pyinfra-inventory") or getattr(config.option, "hosts", None):
        return
    for item in items:
        if item.module is not None and item.module.__name__.startswith("ccfactory.verify."):
            raise pytest.UsageError(
                "ccfactory.verify checks a fleet: give --pyinfra-inventory INVENTORY (or --hosts); "
                "refusing to test this machine by accident"
            )


def _pyinfra_host_for(request, testinfra_host):
    by_address = request.config.stash.get(_HOSTS_KEY, {})
    address = testinfra_host.backend.get_hostname()
    if address not in by_address:
        pytest.fail(f"testinfra host {address} is not a host of --pyinfra-inventory")
    return by_address[address]


@pytest.fixture(scope="module")
def pyinfra_host(request, host):
    """The pyinfra ``Host`` the current testinfra ``host`` stands for.

    It names ``host`` as a parameter so pytest makes one per testinfra host (the
    ``host`` fixture is parametrized over the fleet).
    """
    return _pyinfra_host_for(request, host)


@pytest.fixture(scope="module")
def node_config(pyinfra_host):
    """The validated ``NodeConfig`` of the current host."""
    from ccfactory.config import node_config as load

    return load(pyinfra_host)
