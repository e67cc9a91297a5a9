"""`resnet-repro predict IMAGE...`: the top classes of image files under a test protocol."""
from __future__ import annotations

import json

from .. import config
from ..errors import UserError
from .common import check_device, trained_from_args


def add(sub) -> None:
    pd = sub.add_parser("predict", help="top-5 classes of image files")
    pd.add_argument("images", nargs="+", metavar="IMAGE")
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
    from ..predict import PredictError, format_predictions, predict

    if args.topk < 1:
        raise UserError(f"--topk {args.topk}: give the number of classes to show, 1 or more")
    if args.device != "auto":
        check_device(args.device, "--device", "--device cpu (or auto)")
    try:
        trained = trained_from_args(args)
        preds = predict(trained, args.images, args.topk, args.protocol, args.device, args.precision)
    except (PredictError, ValueError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(preds) if args.json else format_predictions(preds))
    return 0
