"""`resnet-repro env`: this machine, and what a run (of a recipe, with --config) would choose on it."""
from __future__ import annotations

import json

from ..errors import UserError


def add(sub) -> None:
    ev = sub.add_parser("env", help="this machine (CPU class, cores, memory, torch/CUDA, GPUs) and what a run "
                                    "would choose on it (precision, profile, memory format, loader, decoder)")
    ev.add_argument("--config", help="also show what a run of this recipe would choose here (e.g. "
                                     "configs/fashion_mnist/resnet20.yaml, the make train recipe)")
    ev.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=run)


def run(args) -> int:
    from .. import env, runtime

    if args.set and not args.config:
        raise UserError("env --set changes a recipe's values: give the recipe too (--config FILE)")
    try:
        cfg = runtime.load_recipe(args.config, args.set) if args.config else None
        r = env.report(cfg, args.config)
    except runtime.DeviceError as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=1) if args.json else env.format_text(r))
    return 0
