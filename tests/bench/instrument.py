"""Inside a ``pyinfra`` CLI run: count what each host is asked to do, and time every operation.

The benchmark runs the operator's command (``pyinfra -y INVENTORY DEPLOY``) with a deploy file
that calls ``install()`` first, then runs the real deploy. ``install()`` patches, once per
process:

* ``pyinfra.api.facts._get_fact``: every fact a host reads (class, arguments) - one remote
  command each (pyinfra 3.10 does not cache facts);
* ``Host.run_shell_command`` / ``put_file`` / ``get_file``: every remote command and file
  transfer, per host (fact commands included; operation commands = the difference);

and registers a state callback that timestamps each operation (start, end, names). At exit
the figures go to ``$CCF_BENCH_RECORD`` as JSON. Nothing is printed; nothing changes what
the deploy does.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections import Counter, defaultdict
from typing import Any

_installed = False
RECORD: dict[str, Any] = {
    "t_loaded": None,  # wall clock (time.time) when the deploy file first ran: connect is over
    "commands": Counter(),  # host -> run_shell_command calls (facts + operations)
    "fact_commands": Counter(),  # host -> facts read
    "transfers": Counter(),  # host -> put_file + get_file
    "facts": defaultdict(list),  # host -> [(fact class, args, kwargs)]
    "unreplayable": Counter(),  # host -> facts whose arguments are not JSON
    "ops": [],  # [{"names": [...], "start": t, "end": t}]
}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _dump() -> None:
    path = os.environ.get("CCF_BENCH_RECORD")
    if not path:
        return
    out = {
        "t_loaded": RECORD["t_loaded"],
        "commands": dict(RECORD["commands"]),
        "fact_commands": dict(RECORD["fact_commands"]),
        "transfers": dict(RECORD["transfers"]),
        "facts": dict(RECORD["facts"]),
        "unreplayable": dict(RECORD["unreplayable"]),
        "ops": RECORD["ops"],
    }
    with open(path, "w") as f:
        json.dump(out, f)


def install() -> None:
    """Patch pyinfra (once per process) and start recording."""
    global _installed
    if _installed:
        return
    _installed = True
    RECORD["t_loaded"] = time.time()

    from pyinfra import state
    from pyinfra.api import facts as facts_api
    from pyinfra.api.host import Host
    from pyinfra.api.state import BaseStateCallback

    original_get_fact = facts_api._get_fact

    def counting_get_fact(state, host, cls, args=None, kwargs=None, *rest, **kw):
        RECORD["fact_commands"][host.name] += 1
        entry = [f"{cls.__module__}:{cls.__qualname__}", list(args or ()), dict(kwargs or {})]
        if _jsonable(entry):
            RECORD["facts"][host.name].append(entry)
        else:
            RECORD["unreplayable"][host.name] += 1
        return original_get_fact(state, host, cls, args, kwargs, *rest, **kw)

    facts_api._get_fact = counting_get_fact

    for method, counter in (("run_shell_command", "commands"), ("put_file", "transfers"), ("get_file", "transfers")):
        original = getattr(Host, method)

        def counted(self, *args, _original=original, _counter=counter, **kwargs):
            RECORD[_counter][self.name] += 1
            return _original(self, *args, **kwargs)

        setattr(Host, method, counted)

    class Timer(BaseStateCallback):
        current: dict[str, Any] = {}

        @staticmethod
        def operation_start(state, op_hash):
            names = sorted(state.get_op_meta(op_hash).names)
            Timer.current[op_hash] = {"names": names, "start": time.time(), "end": None}

        @staticmethod
        def operation_end(state, op_hash):
            entry = Timer.current.pop(op_hash, None)
            if entry is not None:
                entry["end"] = time.time()
                RECORD["ops"].append(entry)

    state.add_callback_handler(Timer())
    atexit.register(_dump)


def replay_facts(host: Any, recorded: list) -> int:
    """Read the recorded facts of ``host`` again, with no ccfactory logic (the bare run)."""
    import importlib

    read = 0
    for path, args, kwargs in recorded:
        module, _, name = path.partition(":")
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        try:
            host.get_fact(cls, *args, **kwargs)
        except Exception:  # noqa: BLE001 - a fact that fails here failed the same way before
            pass
        read += 1
    return read
