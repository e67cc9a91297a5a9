"""`resnet-repro predict IMAGE|FOLDER...`: the top classes of image files under a test protocol."""
from __future__ import annotations

import json
import sys

from .. import config
from ..errors import UserError
from .common import check_device, trained_from_args


def add(sub) -> None:
    pd = sub.add_parser("predict", help="top-5 classes of image files (a folder: the images under it)")
    pd.add_argument("images", nargs="+", metavar="IMAGE|FOLDER")
    pd.add_argument("--checkpoint", required=True)
    pd.add_argument("--weights", choices=["model", "ema"], default="model")
    pd.add_argument("--data", help="prepared data folder whose manifest gives the image size (default: the run's)")
    pd.add_argument("--topk", type=int, default=5)
    pd.add_argument("--protocol", choices=["single", "flip", "10crop", "multiscale"], default="single")
    pd.add_argument("--device", default="auto")
    pd.add_argument("--precision", choices=config.choices("train", "precision"),
                    help="default: the run's recorded train.precision")
    pd.add_argument("--json", action="store_true")
    pd.set_defaults(func=run)


def run(args) -> int:
    from ..predict import PredictError, format_predictions, image_files, predict_iter

    if args.topk < 1:
        raise UserError(f"--topk {args.topk}: give the number of classes to show, 1 or more")
    if args.device != "auto":
        check_device(args.device, "--device", "--device cpu (or auto)")
    # Text is printed a chunk at a time (a folder of photos takes a while); a file that cannot be read is named
    # where it falls and the others are still scored, and the command then ends with status 2 and a count.
    failed, results = [], []
    try:
        trained = trained_from_args(args)
        files = image_files(args.images)
        for pred in predict_iter(trained, files, args.topk, args.protocol, args.device, args.precision,
                                 errors="report"):
            if "error" in pred:
                failed.append(f"{pred['image']}: {pred['error']}")
                if len(files) > 1:
                    print(f"not scored: {failed[-1]}", file=sys.stderr, flush=True)
            if args.json:
                results.append(pred)
            elif "error" not in pred:
                print(format_predictions([pred]), flush=True)
    except (PredictError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(results))
    if len(files) == 1 and failed:
        raise UserError(failed[0])
    if failed:
        raise UserError(f"{len(failed)} of {len(files)} images not scored (each named above; in --json, the entries "
                        f"with an \"error\"); the other {len(files) - len(failed)} were scored")
    return 0
