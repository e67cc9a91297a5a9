"""``resnet-repro evaluate``: a trained model (trained_model.py) on a prepared split under each test protocol
(protocols.py), in one pass, on one process or on every rank torchrun started.

The device is the run-time choice of runtime.pick_device ("auto": the local rank's GPU when there is one); the
precision and memory format are the run's recorded ones (train.precision, train.channels_last in its config)
unless --precision / --memory-format say otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import dist
from ..data.shards.remote import load_manifest, open_reader
from ..runtime import autocast_for, choose_channels_last, detect, device_type, pick_device, wants_gpus
from .protocols import evaluate_protocols, make_protocol
from .trained_model import Trained
from .val_pass import eval_transform


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
    root = opts.data or trained.cfg.data.path
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
    channels_last = opts.channels_last
    if channels_last is None:
        channels_last = choose_channels_last(trained.cfg.train.channels_last, device.type).value
    model = trained.model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    autocast, precision = autocast_for(opts.precision or trained.cfg.train.precision, device)
    results = evaluate_protocols(model, reader, protocols, eval_transform(trained.cfg.data, channels, device,
                                                                          channels_last),
                                 device, opts.batch_size, opts.workers, autocast, env.rank, env.world)
    return {"model": trained.cfg.model.name, "weights": trained.source, "data": str(reader.root), "split": split,
            "split_chosen_by": "--split" if opts.split else "default (test where the data set has one, else val)",
            "precision": precision, "device": str(device), "world_size": env.world, "results": results}
