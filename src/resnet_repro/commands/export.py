"""`resnet-repro export CHECKPOINT`: a trained model's weights as safetensors, or as ONNX checked against PyTorch."""
from __future__ import annotations

import json

from ..errors import UserError
from .common import check_output_file, inputs_of, trained_from_args


def add(sub) -> None:
    x = sub.add_parser("export", help="write a checkpoint's weights as safetensors or ONNX")
    x.add_argument("checkpoint", metavar="CHECKPOINT")
    x.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    x.add_argument("--out", required=True)
    x.add_argument("--weights", choices=["model", "ema"], default="model")
    x.add_argument("--no-check", action="store_true", help="onnx: skip the onnxruntime-vs-PyTorch check")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=run)


def run(args) -> int:
    from ..export import ExportError, export_trained

    args.data = None
    check_output_file(args.out, inputs_of(args))
    try:
        info = export_trained(trained_from_args(args), args.format, args.out, check=not args.no_check)
    except (ExportError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"wrote {info['out']} ({info['bytes'] / 1e6:.1f} MB, {info['format']})")
    check = info.get("check")
    if isinstance(check, dict):
        print(f"checked with onnxruntime {check['onnxruntime']}: max |logit difference| {check['max_abs_diff']:.2e} "
              f"on a batch of {check['batch']} at two image sizes")
    elif check:
        print(f"not checked: {check.removeprefix('skipped: ')}")
    return 0
