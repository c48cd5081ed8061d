"""The ``ccfactory`` command: offline checks, the lab, artifacts and docs.

Deploys themselves run through pyinfra: ``pyinfra inventories/<site>.py deploy/site.py``.

Examples::

    ccfactory check inventories/example_snp.py
    ccfactory firmware plan inventories/example_snp.py
    ccfactory lab up --nodes 3
    ccfactory bom fetch --dest /srv/mirror
"""

from __future__ import annotations

# pyinfra_cli monkey-patches gevent on import; patching after ssl is imported breaks
# every TLS handshake (RecursionError), so it goes first, as in the pyinfra CLI.
import pyinfra_cli  # noqa: F401,E402  isort: skip

import argparse
import json
import sys
from pathlib import Path

from ccfactory import __version__


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _validated_fleet(inventory: str, limit, *, check_files: bool = True) -> dict | None:
    """Every host's ``NodeConfig`` of an inventory file, or None after printing why not."""
    from ccfactory.config import InventoryError
    from ccfactory.inventory import InventoryFileError, load_inventory, validate_inventory

    try:
        return validate_inventory(load_inventory(inventory), limit=limit, check_files=check_files)
    except InventoryError as exc:
        print(exc, file=sys.stderr)
    except (FileNotFoundError, InventoryFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return None


def cmd_check(args: argparse.Namespace) -> int:
    """Validate an inventory offline and print a summary of its hosts."""
    fleet = _validated_fleet(args.inventory, args.limit, check_files=not args.no_files)
    if fleet is None:
        return 2
    if args.json:
        print(json.dumps({name: cfg.model_dump(mode="json") for name, cfg in fleet.items()}, indent=2))
        return 0
    rows = []
    for name, cfg in fleet.items():
        groups = ",".join(g for g in cfg.groups if g != Path(args.inventory).stem)
        gpus = f"{cfg.gpu.count}x {cfg.gpu.model} ({cfg.gpu.cc_mode})" if cfg.gpu.count else "-"
        bmc = f"{cfg.bmc.vendor} @ {cfg.bmc.address}" if cfg.bmc else "-"
        secret = "-"
        if cfg.bmc:
            problem = cfg.bmc.password.problem()
            secret = "ok" if problem is None else f"MISSING: {problem}"
        rows.append([name, groups, cfg.tee, gpus, bmc, secret])
    print(_table(["host", "groups", "tee", "gpus", "bmc", "bmc secret"], rows))
    missing = sum(1 for r in rows if r[-1].startswith("MISSING"))
    print(f"\n{len(rows)} host(s) valid." + (f" {missing} BMC secret(s) not readable here." if missing else ""))
    return 0


PLAN_PARALLEL = 32  # BMCs read at once by `firmware plan` (--parallel)
PLAN_PROGRESS_EVERY = 10.0  # seconds between progress lines at least (and every 10 % of the fleet)


class _PlanProgress:
    """``planned 250/1000 (2 failed), 31 s`` on stderr: every 10 % of the fleet and at least every
    ``PLAN_PROGRESS_EVERY`` seconds, for fleets of 10 hosts or more (stdout stays the plan/JSON)."""

    def __init__(self, total: int, clock=None, stream=None):
        import time

        self.total, self.done, self.failed = total, 0, 0
        self._clock = clock or time.monotonic
        self._stream = stream
        self._start = self._last = self._clock()
        self._step = max(1, -(-total // 10))
        self._next = self._step

    def __call__(self, failed: bool) -> None:
        self.done += 1
        self.failed += bool(failed)
        if self.total < 10:
            return
        now = self._clock()
        if self.done >= self._next or self.done == self.total or now - self._last >= PLAN_PROGRESS_EVERY:
            while self._next <= self.done:
                self._next += self._step
            self._last = now
            extra = f" ({self.failed} failed)" if self.failed else ""
            print(f"planned {self.done}/{self.total}{extra}, {now - self._start:.0f} s",
                  file=self._stream or sys.stderr, flush=True)


def cmd_firmware_plan(args: argparse.Namespace) -> int:
    """Read every BMC and print the BIOS plan per host (attribute diff, stages, reboots); writes nothing.

    BMCs are read ``--parallel`` at a time; each through one HTTPS connection and one Redfish
    session (logged out at the end); a BMC that fails is reported and never stops the others.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from ccfactory.clients.redfish import RedfishError
    from ccfactory.firmware import FirmwareError, render_plan
    from ccfactory.firmware.driver import FirmwareDriver, reading_client
    from ccfactory.roles.firmware import operations as firmware_ops
    fleet = _validated_fleet(args.inventory, args.limit)
    if fleet is None:
        return 2
    targets = {n: c for n, c in fleet.items() if c.bmc is not None and c.tee in ("snp", "tdx")}
    skipped = {n: ("no TEE" if c.tee not in ("snp", "tdx") else "no BMC configured") for n, c in fleet.items() if n not in targets}
    factory = firmware_ops.CLIENT_FACTORY or reading_client

    def plan_one(name, cfg):
        driver = None
        try:
            driver = FirmwareDriver(cfg.bmc, cfg.tee, host=name, client_factory=factory)
            plan, _ = driver.read_plan()
            return plan, None, driver
        except Exception as exc:  # noqa: BLE001 - reported per host; the client redacts secrets
            text = str(exc) if isinstance(exc, (FirmwareError, RedfishError)) else f"unexpected {type(exc).__name__}: {exc}"
            return None, text, driver
        finally:
            if driver is not None:
                driver.close()

    found: dict[str, tuple] = {}
    progress = _PlanProgress(len(targets))
    if targets:
        with ThreadPoolExecutor(max_workers=max(1, min(args.parallel, len(targets)))) as pool:
            futures = {pool.submit(plan_one, name, cfg): name for name, cfg in targets.items()}
            for future in as_completed(futures):
                found[futures[future]] = future.result()
                progress(found[futures[future]][1] is not None)
    results = [(name, *found[name]) for name in targets]  # inventory order
    failed = [name for name, _, error, _ in results if error]
    requests = lambda driver: driver.requests if driver is not None else 0  # noqa: E731
    if args.json:
        out = {
            name: ({**plan.to_dict(), "requests": requests(driver)} if plan else {"error": error, "requests": requests(driver)})
            for name, plan, error, driver in results
        }
        out.update({name: {"skipped": why} for name, why in skipped.items()})
        print(json.dumps(out, indent=2, default=str))
        return 1 if failed else 0
    for name, plan, error, driver in results:
        if plan is None:
            print(f"{name}: ERROR: {error}\n")
            continue
        print(render_plan(plan))
        print(f"  ({requests(driver)} Redfish request(s); nothing was written)\n")
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    total = sum(p.expected_reboots() for _, p, _, _ in results if p)
    print(f"{len(results) - len(failed)} host(s) planned, {total} reboot(s) to compliance" + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def cmd_lab(args: argparse.Namespace) -> int:
    from ccfactory.lab import cli_main

    return cli_main(args.lab_args)


def cmd_bom(args: argparse.Namespace) -> int:
    from ccfactory.bom import cli_main

    return cli_main(args.bom_args)


def cmd_docs(args: argparse.Namespace) -> int:
    from ccfactory.docs import update_readme

    changed = update_readme(Path(args.readme), check=args.check)
    if args.check and changed:
        print(f"{args.readme} is out of date: run `ccfactory docs`", file=sys.stderr)
        return 1
    print(f"{args.readme}: {'updated' if changed else 'up to date'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render a readiness report JSON (from deploy/verify.py) as Markdown."""
    from ccfactory.verify.report import load_report, render_markdown

    try:
        report = load_report(Path(args.json_file).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {args.json_file}: {exc}", file=sys.stderr)
        return 2
    page = render_markdown(report)
    if args.output:
        Path(args.output).write_text(page)
        print(f"wrote {args.output}")
    else:
        print(page, end="")
    return 0 if report.ready or not args.fail_if_not_ready else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccfactory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"ccfactory {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate an inventory offline (no connection) and summarise it")
    check.add_argument("inventory", help="pyinfra inventory file, e.g. inventories/example_snp.py")
    check.add_argument("--limit", action="append", help="only hosts in this group (repeatable)")
    check.add_argument("--json", action="store_true", help="print the validated configs as JSON")
    check.add_argument(
        "--no-files", action="store_true", help="do not check that controller-side files (CA bundles...) exist"
    )
    check.set_defaults(func=cmd_check)

    firmware = sub.add_parser("firmware", help="the firmware stage: plan the BIOS changes of each host (read only)")
    firmware_sub = firmware.add_subparsers(dest="firmware_command", required=True)
    fw_plan = firmware_sub.add_parser(
        "plan", help="read each BMC and print the BIOS attribute diff, stages and reboots; writes nothing"
    )
    fw_plan.add_argument("inventory", help="pyinfra inventory file, e.g. inventories/example_snp.py")
    fw_plan.add_argument("--limit", action="append", help="only hosts in this group, or this host (repeatable)")
    fw_plan.add_argument("--json", action="store_true", help="print the plans as JSON")
    fw_plan.add_argument("--parallel", type=_positive, default=PLAN_PARALLEL, metavar="N",
                         help=f"BMCs read at once (default {PLAN_PARALLEL}); each over one HTTPS connection and session")
    fw_plan.set_defaults(func=cmd_firmware_plan)

    lab = sub.add_parser("lab", help="the simulated fleet: up, down, status, reset, power", add_help=False)
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    lab.set_defaults(func=cmd_lab)

    bom = sub.add_parser("bom", help="the bill of materials: list, fetch and verify artifacts, pin from upstream", add_help=False)
    bom.add_argument("bom_args", nargs=argparse.REMAINDER)
    bom.set_defaults(func=cmd_bom)

    report = sub.add_parser("report", help="render a readiness report (reports/readiness.json) as Markdown")
    report.add_argument("json_file", nargs="?", default="reports/readiness.json")
    report.add_argument("-o", "--output", help="write the page here instead of printing it")
    report.add_argument("--fail-if-not-ready", action="store_true", help="exit 1 unless every node is ready")
    report.set_defaults(func=cmd_report)

    docs = sub.add_parser("docs", help="regenerate the README's configuration reference")
    docs.add_argument("--readme", default="README.md")
    docs.add_argument("--check", action="store_true", help="fail if the README is out of date")
    docs.set_defaults(func=cmd_docs)
    return parser


# Sub-commands with parsers of their own get their arguments untouched (incl. --help).
_DELEGATED = {"lab": "ccfactory.lab", "bom": "ccfactory.bom"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _DELEGATED:
        import importlib

        return importlib.import_module(_DELEGATED[argv[0]]).cli_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
