"""`resnet-repro model NAME`: parameters, multiply-adds and output shape of a model."""
from __future__ import annotations

import json

from .. import config
from ..errors import UserError
from .common import whole


def add(sub) -> None:
    m = sub.add_parser("model", help="print parameters, multiply-adds and output shape of a model")
    m.add_argument("name")
    m.add_argument("--input-size", type=whole(1, zero="the default"), default=0,
                   help="default: 224 for ImageNet nets, 32 for CIFAR nets")
    m.add_argument("--in-channels", type=whole(1), default=3)
    m.add_argument("--num-classes", type=whole(1, zero="the default"), default=0)
    m.add_argument("--stride-in-3x3", action="store_true", help="ResNet v1.5 bottleneck")
    m.add_argument("--width", type=whole(1), default=1, help="CIFAR nets: every width times this (model.width)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run)


def run(args) -> int:
    from ..models.resnet import SPECS, build_model, count_macs, wide_names

    spec = SPECS.get(args.name)
    if spec is None:
        raise UserError(f"unknown model {args.name!r}; known: {', '.join(SPECS)}")
    if args.width != 1 and args.name not in wide_names():
        raise UserError(f"--width {args.width}: widens the CIFAR nets only; {args.name} has no width factor")
    classes = args.num_classes or (1000 if spec.stem == "imagenet" else 10)
    size = args.input_size or spec.input_size
    try:
        model = build_model(args.name, classes, args.in_channels, stride_in_3x3=args.stride_in_3x3, width=args.width)
        params = sum(p.numel() for p in model.parameters())
        macs, shape = count_macs(model, size, args.in_channels)  # one forward pass at the size asked for
    except (RuntimeError, MemoryError) as e:  # an allocation a size or class count this large cannot get
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"model {args.name} with {classes:,} classes at {args.in_channels}x{size}x{size} does not "
                        f"fit in memory here ({first}); give a smaller --input-size / --num-classes") from None
    info = {**config.model_entry(args.name, args.width), "parameters": params, "macs": macs,
            "input": [1, args.in_channels, size, size], "output": list(shape)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{config.model_label(args.name, args.width)}: {params:,} parameters ({params / 1e6:.2f} M); "
              f"{macs / 1e9:.3f} G multiply-adds at {args.in_channels}x{size}x{size}; output shape {tuple(shape)}")
    return 0
