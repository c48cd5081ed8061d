"""The ccfactory lab: simulated bare-metal nodes, BMCs and hardware on one machine.

Lab stand-ins live only here; nothing outside ``ccfactory.lab`` may install them.

Entry points: ``cli_main(argv)`` (``ccfactory lab ...``), ``ccfactory.lab.manager``
(``up``/``down``/``status``/``reset``), ``ccfactory.lab.power.power`` (for the BMC emulator).
"""

__version__ = "0.1.0"


def cli_main(argv: list[str] | None = None) -> int:
    """``ccfactory lab ...`` (argv without ``lab``); see ``ccfactory.lab.command``.

    Example: ``cli_main(["status"])``
    """
    from ccfactory.lab.command import cli_main as _main

    return _main(argv)
