"""``ccfactory lab ...``: the lab's command line (the top-level CLI delegates here).

Examples::

    ccfactory lab up --nodes 3
    ccfactory lab up --profile amd-snp-hgx --profile plain --vendor dell
    ccfactory lab status
    ccfactory lab power node1 force-restart
    ccfactory lab fault node2 fail_next_requests=3 ignore_graceful=true
    ccfactory lab fault node2 --clear
    ccfactory lab reset
    ccfactory lab down --wipe
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ccfactory.lab.errors import LabError
from ccfactory.lab.hwprofile import BMC_VENDORS, profile_names
from ccfactory.lab.layout import DEFAULT_LAB_DIR, ENV_LAB_DIR, lab_path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ccfactory lab", description="Simulated bare-metal nodes and BMCs on this machine.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--lab-dir", help=f"lab directory (default ${ENV_LAB_DIR} or {DEFAULT_LAB_DIR})")
    common.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", parents=[common], help="create/start the lab (idempotent)")
    p.add_argument("--nodes", type=int, help="number of nodes (default: as before, else 3)")
    p.add_argument(
        "--profile", action="append", dest="profiles", metavar="P",
        help=f"hardware profile, repeat to cycle ({', '.join(profile_names())})",
    )  # fmt: skip
    p.add_argument(
        "--vendor", action="append", dest="vendors", metavar="V", choices=BMC_VENDORS,
        help=f"BMC vendor override, repeat to cycle ({', '.join(BMC_VENDORS)})",
    )  # fmt: skip
    p.add_argument("--inventory", help="inventory to write (default inventories/lab.py of the repository)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for SSH")
    p.add_argument(
        "--platform-source", choices=("auto", "bmc", "local"),
        help="where nodes read their applied BIOS state: the BMC emulator (auto, when present) "
        "or nodes/<n>/platform.json (local)",
    )  # fmt: skip
    p.add_argument(
        "--ipv6", action=argparse.BooleanOptionalAction, default=None,
        help="name nodes and BMCs by their IPv6 (ULA) addresses in the inventory, BMCs listening there "
        "(default: as before, else IPv4)",
    )  # fmt: skip
    p = sub.add_parser("down", parents=[common], help="stop everything the lab started")
    p.add_argument("--wipe", action="store_true", help="also delete the lab directory (base image, apt cache, disks)")
    p = sub.add_parser("status", parents=[common], help="show nodes, power and services")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("reset", parents=[common], help="fresh disks and factory state for every node")
    p.add_argument("--inventory")
    p = sub.add_parser("power", parents=[common], help="power a node like its BMC would")
    p.add_argument("node")
    p.add_argument("action", choices=("on", "off", "force-off", "restart", "force-restart", "status"))
    p = sub.add_parser(
        "fault", parents=[common],
        help="show or set a BMC's fault switches (rehearse a rollout against a misbehaving BMC)",
        description="Switches (see ccfactory.lab.bmc.faults): fail_next_requests=N, fail_status=5xx, "
        "delay_seconds=S, fail_next_job=true, reset_hang=off|on, revert_after_reset='[\"Snp\"]', "
        "ignore_graceful=true. With no switch: print the current ones.",
    )  # fmt: skip
    p.add_argument("node")
    p.add_argument("switches", nargs="*", metavar="KEY=VALUE", help="JSON values; bare words are strings")
    p.add_argument("--clear", action="store_true", help="turn every switch off")
    return ap


def _switch_values(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LabError(f"fault switch {pair!r}: expected KEY=VALUE, e.g. fail_next_requests=3")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print_status(st: dict) -> None:
    print(f"lab {st['lab_dir']}: {'up' if st['up'] else 'down'}")
    proxy = st["apt_proxy"]
    print(f"apt proxy: {'running, pid ' + str(proxy['pid']) if proxy['running'] else 'stopped'} ({proxy['url']})")
    bmc = st["bmc"]
    if isinstance(bmc, list):
        up_ = sum(1 for b in bmc if b.get("listening"))
        bmc = f"{up_}/{len(bmc)} BMC endpoint(s) listening"
    print(f"BIOS state source: {st['platform_source']}; BMC emulator: {bmc if bmc is not None else '-'}")
    rows = [["node", "address", "profile", "tee", "bmc", "power", "boots", "ssh"]]
    for n in st["nodes"]:
        rows.append(
            [
                n["name"] + ("" if n["in_lab"] else " (removed)"),
                n["address"] or "-",
                n["profile"] or "-",
                n["tee"] or "-",
                f"{n['bmc_vendor']}@{n['bmc_address']}" if n["bmc_address"] else "-",
                n["power"],
                str(n["boots"]),
                "yes" if n["ssh"] else "no",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for n in st["nodes"]:
        if n.get("error"):
            print(f"{n['name']}: last boot failed: {n['error']}")


def cli_main(argv: list[str] | None = None) -> int:
    """Run ``lab`` with ``argv`` (without the leading ``lab``); returns the exit status.

    Example: ``cli_main(["up", "--nodes", "3"])``
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="lab: %(message)s",
        stream=sys.stderr,
    )
    from ccfactory.lab import manager, power

    try:
        if args.cmd == "up":
            st = manager.up(
                args.nodes,
                args.profiles,
                args.vendors,
                lab_dir=args.lab_dir,
                inventory=args.inventory,
                wait=not args.no_wait,
                platform_source=args.platform_source,
                ipv6=args.ipv6,
            )
            _print_status(st)
        elif args.cmd == "down":
            manager.down(lab_dir=args.lab_dir, wipe=args.wipe)
        elif args.cmd == "status":
            st = manager.status(lab_dir=args.lab_dir)
            print(json.dumps(st, indent=2)) if args.json else _print_status(st)
        elif args.cmd == "reset":
            _print_status(manager.reset(lab_dir=args.lab_dir, inventory=args.inventory))
        elif args.cmd == "power":
            print(power.power(lab_path(args.lab_dir), args.node, args.action))
        elif args.cmd == "fault":
            from ccfactory.lab.bmc import faults

            lab_dir = lab_path(args.lab_dir)
            try:
                known = faults.faults_path(lab_dir, args.node).parent.is_dir()
            except ValueError:  # not a node name at all
                known = False
            if not known:
                raise LabError(f"{args.node}: no BMC of that name in the lab at {lab_dir} (see `ccfactory lab status`)")
            if args.clear:
                faults.clear_faults(lab_dir, args.node)
            if args.switches:
                faults.set_faults(lab_dir, args.node, **_switch_values(args.switches))
            print(json.dumps(faults.get_faults(lab_dir, args.node).model_dump()))
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
