"""``ccfactory kbs pki|rotate``: the site's KBS keys on the controller (explicit actions only).

``pki`` makes or reuses the keys and prints where they are (what a deploy does anyway);
``rotate KIND`` retires the site's ``ca``, ``server``, ``admin`` or ``token`` keys so the
next deploy makes new ones and pushes them (the KBS restarts; with ``admin`` the old admin
key stops working). Nothing here prints key material.

Example::

    ccfactory kbs rotate admin --pki-dir ~/.ccfactory/sites/kbs-01/pki
"""

from __future__ import annotations

import argparse
import sys

from ccfactory.kbs.errors import KbsError
from ccfactory.kbs.pki import KINDS, ensure_pki, rotate


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ccfactory kbs")
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("pki", help="make or reuse the KBS keys and certificates, print their paths")
    make.add_argument("--pki-dir", required=True)
    make.add_argument("--site", required=True, help="site name (certificate subjects)")
    make.add_argument("--kbs-url", required=True)
    make.add_argument("--name", action="append", default=[], help="extra certificate name (repeatable)")
    rot = sub.add_parser("rotate", help="retire keys so the next deploy makes new ones")
    rot.add_argument("kind", choices=KINDS)
    rot.add_argument("--pki-dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.action == "pki":
            pki = ensure_pki(args.pki_dir, site=args.site, names=args.name, kbs_url=args.kbs_url)
            for item in pki.created:
                print(f"made {item}")
            print(f"kbs_ca_cert (give to workers): {pki.tls_ca_cert}")
            print(f"admin key (stays here):        {pki.admin_key}")
            return 0
        moved = rotate(args.pki_dir, args.kind)
        for path in moved:
            print(f"retired {path}")
        print(f"{args.kind}: {'retired; run the kbs stage to make and deploy new ones' if moved else 'nothing to retire'}")
        return 0
    except KbsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
