"""`resnet-repro verify DATA`: every shard's checksum and every image of a prepared folder re-checked; --upgrade
rewrites an older manifest after a clean check."""
from __future__ import annotations

import os
import sys

from ..errors import UserError
from .common import whole


def add(sub) -> None:
    v = sub.add_parser("verify", help="re-check every shard's checksum and decode every image (exit 1 on problems)")
    v.add_argument("data", help="prepared data folder (with manifest.json)")
    v.add_argument("--workers", type=whole(1, zero="one per CPU core"), default=0,
                   help="processes (default: one per CPU core)")
    v.add_argument("--no-decode", action="store_true", help="checksums and indexes only")
    v.add_argument("--upgrade", action="store_true", help="after a clean check, rewrite a manifest of an older "
                   "version in this version's format (adding the manifest's own SHA-256)")
    v.set_defaults(func=run)


def run(args) -> int:
    from ..data.shards.remote import is_url
    from ..data.shards.verify import verify

    if is_url(args.data):  # it hashes every byte: where the data set was prepared, not over the network
        raise UserError(f"verify {args.data}: verify checks a local folder; run it where the data set was prepared "
                        "(before uploading it), or on a local copy")
    # A path that is no data folder is the user's mistake (exit 2), not a problem found in the data (exit 1).
    if not os.path.isdir(args.data):
        raise UserError(f"verify {args.data}: {'is a file' if os.path.exists(args.data) else 'not found'}; give a "
                        "prepared data folder (the one holding manifest.json)")
    if not os.path.exists(os.path.join(args.data, "manifest.json")):
        raise UserError(f"verify {args.data}: no manifest.json; not a prepared data folder (resnet-repro prepare ...)")
    problems, total = verify(args.data, workers=args.workers, decode=not args.no_decode)
    if problems:
        print(f"{args.data}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        if args.upgrade:
            print(f"{args.data}: not upgraded (its data does not match the manifest)", file=sys.stderr)
        return 1
    print(f"{args.data}: OK ({total} samples)")
    if args.upgrade:
        from ..data.shards.verify import upgrade

        print(f"{args.data}: {upgrade(args.data)}")
    return 0
