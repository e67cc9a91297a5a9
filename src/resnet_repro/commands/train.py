"""`resnet-repro train`: a recipe (with --set overrides) trained into a run folder, or resumed there (training/)."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import config
from ..errors import UserError
from .common import check_device


def add(sub) -> None:
    t = sub.add_parser("train", help="train a model from a recipe")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="run folder (config, metrics.jsonl, checkpoints, results)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--resume", metavar="auto|CHECKPOINT", help="auto: newest whole checkpoint in OUT. The run's "
                   "recorded hardware-made choices (precision, memory format, profile, device, loader workers) are "
                   "kept; a pinned --set overrides one, recorded in metrics.jsonl")
    t.add_argument("--allow-change", action="append", default=[], metavar="SECTION.KEY",
                   help="on a resume, let the recipe change this key (repeatable; recorded in metrics.jsonl); other "
                        "changed keys are refused")
    t.add_argument("--force", action="store_true", help="take over OUT's lock left by a process on another host "
                   "(whether it still runs cannot be checked from here)")
    t.set_defaults(func=run)


def run(args) -> int:
    from ..run_folder import recorded
    from ..runtime import load_recipe
    from ..training.loop import train
    from ..training.state import TrainingError

    known = {f"{section}.{key}" for section, values in config.Config().to_dict().items() for key in values}
    if args.allow_change and not args.resume:  # it only ever applies to a resume: given alone, it says nothing
        raise UserError("--allow-change only applies with --resume (a changed value of a run being continued)")
    for key in args.allow_change:
        if key not in known:
            raise UserError(f"--allow-change {key}: not a config key (section.key, e.g. train.epochs)")
    # On a resume the run's recorded profile wins over this machine's class: a run moved to another machine keeps
    # its recipe (epochs, sizes) instead of silently taking another profile's.
    record = recorded(Path(args.out), args.resume) if args.resume else None
    cfg = load_recipe(args.config, args.set, recorded_profile=record and record["config_flat"].get("train.profile"))
    check_device(cfg.train.device, "config key 'train.device'", "train.device=cpu (or auto)")
    try:
        result = train(cfg, Path(args.out), resume=args.resume, allow_change=tuple(args.allow_change),
                       force=args.force)
    except TrainingError as e:  # e.g. a non-finite loss: the message says which checkpoint is kept
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0 if result else 1
