"""``resnet-repro evaluate``: a trained model (evaluate/trained_model.py) on a prepared split under each test protocol
(evaluate/protocols.py), in one pass, on one process or on every rank torchrun started: its arguments (`add`), the
handler (`run`) and the evaluation on the ranks (`evaluate_trained`).

The device is the run-time choice of runtime.pick_device ("auto": the local rank's GPU when there is one); the
precision and memory format are the run's recorded ones (train.precision, train.channels_last in its config)
unless --precision / --memory-format say otherwise.

torch and the evaluation modules are imported inside the functions that use them, as every command's handler does,
so that `resnet-repro --help` and argument errors do not wait for them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import config
from ..errors import UserError
from .common import check_device, check_output_file, inputs_of, trained_from_args, whole, write_json

if TYPE_CHECKING:
    import torch

    from ..evaluate import Trained


def add(sub) -> None:
    e = sub.add_parser("evaluate", help="top-1/top-5 error of a checkpoint on a prepared split, per test protocol",
                       description="Protocols: single = centre crop; flip = + mirror; 10crop = 4 corners + centre "
                       "and mirrors; multiscale = whole image at shorter sides {224,256,384,480,640} and mirrors "
                       "(the ResNet paper's fully-convolutional test). Sizes default to the run's data.val_resize / "
                       "data.val_size; views are averaged as softmax probabilities. Works under torchrun.")
    e.add_argument("--checkpoint", help="final.pt or checkpoints/ckpt-*.pt of a run")
    e.add_argument("--torchvision-weights", metavar="FILE", help="instead of --checkpoint: a torchvision-layout "
                   "ResNet state_dict (.pth/.safetensors), evaluated as our v1.5 net; needs --model and --data")
    e.add_argument("--model", help="with --torchvision-weights: resnet18|34|50|101|152")
    e.add_argument("--weights", choices=["model", "ema"], default="model", help="ema: the run's EMA weights")
    e.add_argument("--data", help="prepared data folder (default: the one the checkpoint was trained on)")
    e.add_argument("--split", help="split to score, e.g. test or val (default: test where the data set has one, "
                   "else val; the output says which)")
    e.add_argument("--protocol", action="append", choices=["single", "flip", "10crop", "multiscale"],
                   help="repeat for several (one pass over the data); default: single")
    e.add_argument("--resize", type=whole(1, zero="keep the stored size"),
                   help="shorter side before cropping, pixels (default: data.val_resize)")
    e.add_argument("--crop", type=whole(1), help="crop side, pixels (default: data.val_size or the stored size)")
    e.add_argument("--scales", type=whole(1), nargs="+", help="multiscale shorter sides, pixels (default: the paper's, "
                   "times crop/224)")
    e.add_argument("--pad", type=whole(0), help="10crop: zero border, pixels, before cropping (default: data.pad for "
                   "nets trained with pad-crop and tested at the stored size, else 0)")
    e.add_argument("--batch-size", type=whole(1), default=256, help="views per forward pass")
    e.add_argument("--workers", type=whole(0), default=2)
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", choices=config.choices("train", "precision"),
                   help="default: the run's recorded train.precision (auto: chosen for this device)")
    e.add_argument("--memory-format", choices=["nchw", "channels_last"],
                   help="default: the run's recorded train.channels_last")
    e.add_argument("--json", action="store_true", help="print the results as one JSON object")
    e.add_argument("--out", help="also write the JSON here (RUN_DIR/evaluation.json goes into `report`)")
    e.set_defaults(func=run)


def run(args) -> int:
    from ..data.decode.cpu import DecodeError
    from ..evaluate import format_table

    if args.out:  # before the evaluation, which can take hours, not after it
        check_output_file(args.out, inputs_of(args))
    if args.device != "auto":
        check_device(args.device, "--device", "--device cpu (or auto)")
    try:
        trained = trained_from_args(args)
        out = evaluate_trained(trained, EvalOptions(
            protocols=tuple(args.protocol or ["single"]), data=args.data, split=args.split, resize=args.resize,
            crop=args.crop, scales=tuple(args.scales) if args.scales else None, batch_size=args.batch_size,
            workers=args.workers, device=args.device, pad=args.pad, precision=args.precision,
            channels_last=None if args.memory_format is None else args.memory_format == "channels_last"))
    except (ValueError, DecodeError) as e:  # protocol, class list or image size that does not fit; WeightsError
        raise UserError(str(e)) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.out:
        write_json(args.out, out)
    if args.json:
        print(json.dumps(out))
    else:
        chosen = "" if args.split else " (the default: test where the data set has one, else val)"
        print(f"{out['model']} ({out['weights']}) on {out['data']} split {out['split']}{chosen}, {out['precision']} "
              f"on {out['device']} x{out['world_size']}:")
        print(format_table(out["results"]))
    return 0


@dataclass(frozen=True)
class EvalOptions:
    """What `resnet-repro evaluate` was asked for; None = the run's own value (data.val_resize, data.val_size,
    data.pad, data.path)."""
    protocols: tuple[str, ...] = ("single",)
    data: str | None = None
    split: str | None = None  # None: "test" where the data set has one, else "val" (default_split)
    resize: int | None = None
    crop: int | None = None
    scales: tuple[int, ...] | None = None
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"  # auto, cpu, cuda, cuda:N; a GPU without an index is the local rank's
    pad: int | None = None
    precision: str | None = None  # None: the run's recorded train.precision
    channels_last: bool | None = None  # None: the run's recorded train.channels_last


def evaluate_trained(trained: Trained, opts: EvalOptions) -> dict:
    """`resnet-repro evaluate`: a trained model on a prepared split under each protocol (one pass, all ranks)."""
    from .. import dist
    from ..runtime import detect, device_type, pick_device, wants_gpus

    hw = detect(gpus=wants_gpus(opts.device))
    owned = not dist.is_available_and_initialized()  # a caller's process group is the caller's to close
    env = dist.init(device_type(opts.device, hw))  # torchrun: each rank scores its own share; one process otherwise
    try:
        out = _evaluate_on_ranks(trained, opts, pick_device(opts.device, env.local_rank, hw), env)
    except BaseException:
        if owned:
            dist.shutdown()  # no barrier: the other ranks may not have failed the same way
        raise
    if owned:
        # Close the group before the interpreter exits: a gloo group left to the exit-time destructors aborted a rank
        # ("terminate called without an active exception") in 4 of 15 two-rank runs on the loaded 2-core CI machine.
        dist.barrier()
        dist.shutdown()
    return out


def default_split(manifest: dict) -> str:
    """The split `evaluate` scores when none is named: the test split where the data set has one (Fashion-MNIST,
    CIFAR: the official test set, held out of every recipe choice), else val (ImageNet's published split)."""
    return "test" if "test" in manifest.get("splits", {}) else "val"


def _evaluate_on_ranks(trained: Trained, opts: EvalOptions, device: torch.device, env) -> dict:
    import torch

    from ..data.shards.records import MANIFEST
    from ..data.shards.remote import is_url, load_manifest, open_reader
    from ..evaluate import eval_transform, evaluate_protocols, make_protocol
    from ..paired import labels_digest
    from ..runtime import autocast_for, choose_channels_last

    root = opts.data or trained.cfg.data.path
    if opts.data is None and not is_url(root) and not (Path(root) / MANIFEST).is_file():
        # Neither where the run's data.path led when it trained (load_trained reads it from there) nor the path as
        # given, read from here, holds the data: it was moved or deleted, or the run predates that record.
        was = f"{trained.data_folder}, " if trained.data_folder and trained.data_folder != str(root) else ""
        raise UserError(f"{trained.source} was trained on {was}data.path {root}, which holds no prepared data "
                        f"now{'' if Path(root).is_absolute() else f' (read from {Path.cwd()})'}: pass --data FOLDER")
    split = opts.split or default_split(load_manifest(root))
    reader = open_reader(root, split, trained.cfg.data.cache_dir)
    if reader.classes != trained.classes:
        raise ValueError(f"{trained.source} was trained on other classes than {reader.root} has")
    channels = reader.manifest["image"]["channels"]
    if channels != trained.in_channels:
        raise ValueError(f"{trained.source} takes {trained.in_channels}-channel images, {reader.root} has {channels}")
    stored = reader.manifest["image"].get("height")
    protocols = [make_protocol(name, trained.cfg.data, stored, opts.resize, opts.crop, opts.scales, opts.pad)
                 for name in opts.protocols]
    # The run's own precision and memory format as it recorded them (a run from before they were recorded says
    # auto: resolved for this device as training resolves them, runtime.py), unless the options say otherwise.
    autocast, precision = autocast_for(opts.precision or trained.cfg.train.precision, device)
    channels_last = opts.channels_last
    if channels_last is None:
        channels_last = choose_channels_last(trained.cfg.train.channels_last, device.type, precision).value
    model = trained.model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    results = evaluate_protocols(model, reader, protocols, eval_transform(trained.cfg.data, channels, device,
                                                                          channels_last),
                                 device, opts.batch_size, opts.workers, autocast, env.rank, env.world)
    return {"model": trained.cfg.model.name, "weights": trained.source, "data": str(reader.root), "split": split,
            "split_chosen_by": "--split" if opts.split else "default (test where the data set has one, else val)",
            # Which images the results' top1_hits refer to, in their order (paired.py: runs are paired only on the
            # same images).
            "labels_sha256": labels_digest(reader.labels),
            "precision": precision, "device": str(device), "world_size": env.world, "results": results}
