"""Read pyinfra inventories and validate them before any host is touched.

Shipped inventories call ``validate_before_connect()``; with it, ``pyinfra INVENTORY
DEPLOY`` checks every host's data (kubespray's validate_inventory, done with pydantic)
and stops with one error listing every problem before the first SSH connection.

Example, at the end of ``inventories/<site>.py``::

    from ccfactory.inventory import validate_before_connect
    validate_before_connect()
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pyinfra.api import State
from pyinfra.api.exceptions import PyinfraError

from ccfactory.config import InventoryError, NodeConfig, load_fleet


class InventoryValidationError(PyinfraError):
    """An ``InventoryError`` raised through pyinfra, which prints it without a traceback."""


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
        return make_inventory(str(path), cwd=str(Path.cwd()), group_data_directories=list(group_data_dirs))


def hosts_of(inventory, limit: Iterable[str] | None = None):
    """(name, groups, data) for every host, optionally only those in the given groups."""
    wanted = set(limit or ())
    for host in inventory:
        if wanted and not (wanted & set(host.groups)) and host.name not in wanted:
            continue
        yield host.name, tuple(host.groups), host.data.dict()


def validate_inventory(inventory, *, limit: Iterable[str] | None = None, check_files: bool = True) -> dict[str, NodeConfig]:
    """Every host's ``NodeConfig``; raises ``InventoryError`` listing all problems."""
    return load_fleet(hosts_of(inventory, limit), check_files=check_files)


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
