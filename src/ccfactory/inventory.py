"""Read pyinfra inventories and validate them before any host is touched.

Shipped inventories call ``validate_before_connect()``; with it, ``pyinfra INVENTORY
DEPLOY`` checks every host's data (kubespray's validate_inventory, done with pydantic)
and stops with one error listing every problem before the first SSH connection.

Example, at the end of ``inventories/<site>.py``::

    from ccfactory.inventory import validate_before_connect
    validate_before_connect()
"""

from __future__ import annotations

# pyinfra_cli monkey-patches gevent on import; patching after ssl is imported breaks every TLS
# handshake (RecursionError). config pulls in the stages (requests, urllib3), and the verify
# pytest plugin reaches this module before anything imported pyinfra_cli: so it goes first, as in
# the pyinfra CLI and ccfactory.cli.
import pyinfra_cli  # noqa: F401,E402  isort: skip

import traceback
from collections.abc import Iterable
from pathlib import Path

from pyinfra.api import State
from pyinfra.api.exceptions import PyinfraError

from ccfactory.config import InventoryError, NodeConfig, Problem, load_fleet
from ccfactory.lab.hooks import install_lab_hooks

# the lab gate (config) and the lab smoke check reach the lab through these; only entry points
# import the lab
install_lab_hooks()

INVENTORY = "(inventory)"  # the "host" of a problem of the inventory as a whole


class InventoryValidationError(PyinfraError):
    """An ``InventoryError`` raised through pyinfra, which prints it without a traceback."""


class InventoryFileError(Exception):
    """An inventory or group-data file that cannot be run: ``file:line: message``, no traceback."""


def _file_error(path: Path, exc: BaseException) -> InventoryFileError:
    """Where in the site's own files ``exc`` happened, for a one-line message."""
    inner = getattr(exc, "exception", None)  # pyinfra_cli's UnexpectedExternalError wraps it
    if isinstance(inner, BaseException):
        path = Path(getattr(exc, "filename", None) or path)
        exc = inner
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename or path}:{exc.lineno or '?'}"
        return InventoryFileError(f"{where}: syntax error: {exc.msg}")
    import pyinfra

    internal = tuple(str(Path(m.__file__).parent) for m in (pyinfra, pyinfra_cli)) + (str(Path(__file__).parent),)
    tb = getattr(exc, "_traceback", None) or exc.__traceback__
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(internal)]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(path)
    return InventoryFileError(f"{where}: {type(exc).__name__}: {exc}")


def load_inventory(path: str | Path, *, group_data_dirs: Iterable[str] = ()):
    """Load a pyinfra inventory file the way the ``pyinfra`` CLI does, without connecting.

    Example::

        inventory = load_inventory("inventories/example_snp.py")
    """
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"inventory {path} does not exist")
    # make_inventory needs a bound state (it writes the context); a throwaway one will do
    with ctx_state.use(State()):
        try:
            return make_inventory(str(path), cwd=str(Path.cwd()), group_data_directories=list(group_data_dirs))
        except Exception as exc:  # noqa: BLE001 - the site's Python code: say where, not how pyinfra ran it
            raise _file_error(path, exc) from None


def hosts_of(inventory, limit: Iterable[str] | None = None):
    """(name, groups, data) for every host, optionally only those in the given groups."""
    wanted = set(limit or ())
    for host in inventory:
        if wanted and not (wanted & set(host.groups)) and host.name not in wanted:
            continue
        yield host.name, tuple(host.groups), host.data.dict()


def validate_inventory(inventory, *, limit: Iterable[str] | None = None, check_files: bool = True) -> dict[str, NodeConfig]:
    """Every host's ``NodeConfig``; raises ``InventoryError`` listing all problems, those of
    each host's data and those only the inventory shows (``inventory_problems``)."""
    selected = list(hosts_of(inventory, limit))
    problems = inventory_problems(inventory, {name for name, _, _ in selected})
    try:
        configs = load_fleet(selected, check_files=check_files)
    except InventoryError as exc:
        raise InventoryError([*problems, *exc.problems]) from None
    if problems:
        raise InventoryError(problems)
    return configs


def inventory_problems(inventory, names: set[str]) -> list[Problem]:
    """Problems of how the inventory puts data together (pyinfra merges it silently):

    * no hosts at all;
    * a host in two groups whose data give one key different values: pyinfra takes the
      value of the group listed last, an accident of order; the host's own data may settle it;
    * one ``ssh_hostname`` from group data (or the inventory's global data) for more than one
      host: every one of them would be deployed on the same machine.
    """
    problems: list[Problem] = []
    hosts = list(inventory)
    if not hosts:
        return [Problem(INVENTORY, "hosts", "the inventory has no hosts",
                        "list hosts in a group, e.g. workers = [('gpu-01', {...})]")]
    override = inventory.get_override_data() or {}
    global_data = inventory.get_data() or {}
    shared_address: dict[object, list[tuple[str, str]]] = {}
    for host in hosts:
        own = inventory.get_host_data(host.name) or {}
        by_key: dict[str, list[tuple[str, object]]] = {}
        for group in host.groups:
            for key, value in (inventory.get_group_data(group) or {}).items():
                by_key.setdefault(key, []).append((group, value))
        if host.name in names:
            for key, entries in by_key.items():
                if key in own or key in override:
                    continue  # the host's own value wins over every group
                first_group, first = entries[0]
                other = next((g for g, v in entries[1:] if v != first), None)
                if other is not None:
                    problems.append(Problem(
                        host.name, key, f"groups {first_group!r} and {other!r} give it different values (pyinfra would "
                        "silently take the last group's)",
                        f"set {key} in one of the groups only, or per host"))
        if "ssh_hostname" in own or "ssh_hostname" in override:
            continue
        source = next((g for g, _ in reversed(by_key.get("ssh_hostname", []))), None)
        if source is not None:
            value = inventory.get_group_data(source)["ssh_hostname"]
        elif "ssh_hostname" in global_data:
            source, value = "all", global_data["ssh_hostname"]
        else:
            continue
        shared_address.setdefault(repr(value), []).append((host.name, source))
    for entries in shared_address.values():
        if len(entries) < 2:
            continue
        first = entries[0][0]
        for name, source in entries[1:]:
            if name in names:
                problems.append(Problem(
                    name, "ssh_hostname", f"group {source!r}'s data gives it the same ssh_hostname as host {first}: "
                    "both would be deployed on one machine",
                    "set ssh_hostname per host, not in group data"))
    return problems


def validate_before_connect() -> None:
    """Make the running ``pyinfra`` CLI validate every host before connecting to any.

    The CLI calls ``State.init`` once the inventory and group data are loaded and
    before it connects; validation runs right after that call, on this state only.
    Harmless when the inventory is loaded outside the CLI (``ccfactory check``).
    """
    from pyinfra import context

    if not context.ctx_state.isset():
        return
    state = context.state
    if getattr(state, "_ccfactory_preflight", False):
        return
    original_init = state.init

    def init(inventory, *args, **kwargs):
        original_init(inventory, *args, **kwargs)
        try:
            validate_inventory(inventory)
        except InventoryError as exc:
            raise InventoryValidationError(str(exc)) from None

    state.init = init
    state._ccfactory_preflight = True
