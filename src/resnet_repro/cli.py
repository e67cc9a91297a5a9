"""Command line: ``resnet-repro SUBCOMMAND`` (or ``python -m resnet_repro``). See --help of each subcommand."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_model(args) -> int:
    from .models.resnet import SPECS, build_model, count_macs

    spec = SPECS.get(args.name)
    if spec is None:
        raise UserError(f"unknown model {args.name!r}; known: {', '.join(SPECS)}")
    classes = args.num_classes or (1000 if spec.stem == "imagenet" else 10)
    size = args.input_size or spec.input_size
    model = build_model(args.name, classes, args.in_channels, stride_in_3x3=args.stride_in_3x3)
    params = sum(p.numel() for p in model.parameters())
    macs, shape = count_macs(model, size, args.in_channels)
    info = {"model": args.name, "parameters": params, "macs": macs, "input": [1, args.in_channels, size, size],
            "output": list(shape)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.name}: {params:,} parameters ({params / 1e6:.2f} M); {macs / 1e9:.3f} G multiply-adds at "
              f"{args.in_channels}x{size}x{size}; output shape {tuple(shape)}")
    return 0


def _cmd_prepare(args) -> int:
    from .data.prepare import prepare_fashion_mnist

    if args.dataset == "fashion-mnist":
        out = prepare_fashion_mnist(Path(args.out), Path(args.src) if args.src else None, seed=args.seed,
                                    force=args.force)
        print(f"prepared {out}")
        return 0
    if args.dataset in ("cifar10", "cifar100"):
        from .data.cifar import VAL_SIZE, prepare_cifar

        val_size = VAL_SIZE if args.val_size is None else args.val_size
        out = prepare_cifar(args.dataset, Path(args.out), Path(args.src) if args.src else None, seed=args.seed,
                            val_size=val_size, force=args.force)
        print(f"prepared {out}")
        return 0
    if args.dataset in ("imagenet", "folder"):
        return _prepare_images(args)
    raise UserError(f"unknown data set {args.dataset!r}")


def _prepare_images(args) -> int:
    from .data.imagenet import discover_folder, discover_imagenet
    from .data.prepare import Encoding, prepare_images

    if not args.src:
        raise UserError(f"prepare {args.dataset} needs --src (the folder holding the images)")
    if args.dataset == "imagenet":
        source = discover_imagenet(args.src)
        default = {"train": 1024, "val": 128}  # the reference recipe's shard counts
    else:
        source = discover_folder(args.src, args.val_fraction, args.seed)
        # About ImageNet's 1,250 images per shard, at least one shard per split.
        default = {k: max(1, round(len(v) / 1250)) for k, v in source.splits.items()}
    shards = {"train": args.train_shards or default["train"], "val": args.val_shards or default.get("val", 1)}
    enc = Encoding(max_side=args.max_side, quality=args.quality, max_pixels=int(args.max_megapixels * 1e6))
    out = prepare_images(source, Path(args.out), shards, seed=args.seed, workers=args.workers, enc=enc,
                         skip_bad=args.skip_bad, force=args.force)
    print(f"prepared {out}")
    return 0


def _cmd_verify(args) -> int:
    from .data.verify import verify

    problems, total = verify(args.data, workers=args.workers, decode=not args.no_decode)
    if problems:
        print(f"{args.data}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{args.data}: OK ({total} samples)")
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .train import TrainingError, train

    cfg = load_config(args.config, args.set)
    try:
        result = train(cfg, Path(args.out), resume=args.resume)
    except TrainingError as e:  # e.g. a non-finite loss: the message says which checkpoint is kept
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0 if result else 1


def _cmd_evaluate(args) -> int:
    import torch

    from . import checkpoint
    from .config import config_from_dict
    from .data.augment import DeviceTransform, EvalGeometry
    from .data.loader import BatchDataset, DevicePrefetcher, Job, eval_batch_indices, make_loader
    from .data.records import RecordReader
    from .evaluate import evaluate
    from .models.resnet import build_model
    from .train import autocast_for

    state = checkpoint.load(args.checkpoint)
    cfg = config_from_dict(state["config"])
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    reader = RecordReader(args.data or cfg.data.path, args.split)
    manifest = reader.manifest
    channels = manifest["image"]["channels"]
    if manifest["classes"] != state["classes"]:
        raise UserError(f"{args.checkpoint} was trained on different classes than {reader.root}")
    model = build_model(cfg.model.name, len(state["classes"]), state["in_channels"], stride_in_3x3=cfg.model.stride_in_3x3)
    model.load_state_dict(state["model"])
    model = model.to(device, memory_format=torch.channels_last)
    ds = BatchDataset(reader, EvalGeometry(cfg.data, manifest["image"]["height"]), channels, 0, train=False)
    jobs = [Job(0, s, idx) for s, idx in enumerate(eval_batch_indices(len(reader), args.batch_size))]
    batches = DevicePrefetcher(make_loader(ds, jobs, args.workers, device.type == "cuda"), device,
                               DeviceTransform(cfg.data, channels, device))
    autocast, _ = autocast_for(cfg.train.precision, device)
    result = evaluate(model, batches, device, autocast)
    result.update(checkpoint=str(args.checkpoint), data=str(reader.root), split=args.split)
    print(json.dumps(result) if args.json else
          f"{args.split}: top-1 error {result['top1_err']:.2f}%  top-5 error {result['top5_err']:.2f}%  "
          f"({result['count']} images)")
    return 0


class UserError(RuntimeError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnet-repro", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="print parameters, multiply-adds and output shape of a model")
    m.add_argument("name")
    m.add_argument("--input-size", type=int, default=0, help="default: 224 for ImageNet nets, 32 for CIFAR nets")
    m.add_argument("--in-channels", type=int, default=3)
    m.add_argument("--num-classes", type=int, default=0)
    m.add_argument("--stride-in-3x3", action="store_true", help="ResNet v1.5 bottleneck")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_model)

    pr = sub.add_parser("prepare", help="convert a raw data set into record shards")
    pr.add_argument("dataset", choices=["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder"])
    pr.add_argument("--out", required=True)
    pr.add_argument("--src", help="folder with the raw files (default: the system copy or a download)")
    pr.add_argument("--seed", type=int, default=0, help="shuffle seed, recorded in the manifest")
    pr.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a manifest")
    pr.add_argument("--val-size", type=int, help="cifar10/cifar100: training images held out as split 'val' "
                    "(default 5000, the paper's 45k/5k split)")
    # imagenet / folder (--src: the folder with train/ and val/ or the Kaggle root; or <class>/<images>).
    pr.add_argument("--train-shards", type=int, default=0, help="imagenet default 1024; folder: ~1250 images each")
    pr.add_argument("--val-shards", type=int, default=0, help="imagenet default 128; folder: ~1250 images each")
    pr.add_argument("--workers", type=int, default=0, help="converter processes (default: one per CPU core)")
    pr.add_argument("--max-side", type=int, default=0, metavar="N",
                    help="shrink images whose longer side exceeds N pixels, re-encoded (default: keep sizes)")
    pr.add_argument("--quality", type=int, default=0, metavar="Q",
                    help="re-encode every image as JPEG quality Q (default: keep original JPEG bytes; 90 for "
                         "images shrunk by --max-side)")
    pr.add_argument("--skip-bad", action="store_true",
                    help="leave out undecodable files, listing them in the manifest (default: stop and list them)")
    pr.add_argument("--max-megapixels", type=float, default=100,
                    help="refuse larger images (decompression-bomb guard, checked in the header)")
    pr.add_argument("--val-fraction", type=float, default=0.1,
                    help="folder without train/ and val/: per-class fraction held out as val (seeded)")
    pr.set_defaults(func=_cmd_prepare)

    v = sub.add_parser("verify", help="re-check every shard's checksum and decode every image (exit 1 on problems)")
    v.add_argument("data", help="prepared data folder (with manifest.json)")
    v.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU core)")
    v.add_argument("--no-decode", action="store_true", help="checksums and indexes only")
    v.set_defaults(func=_cmd_verify)

    t = sub.add_parser("train", help="train a model from a recipe")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="run folder (config, metrics.jsonl, checkpoints, results)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--resume", metavar="auto|CHECKPOINT", help="auto: newest whole checkpoint in OUT")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="top-1/top-5 error of a checkpoint on a prepared split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", help="prepared data folder (default: the one the checkpoint was trained on)")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.prepare import PrepareError
    from .data.records import RecordError
    from .data.sources import SourceError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ConfigError, CheckpointError, RecordError, SourceError, PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
