"""``resnet-repro bench gpu-decode``: where the time of ``data.decode: gpu`` goes, without a trainer.

Why: on a lent H200 (2026-12-04) GPU decoding fed an eager ResNet-50 at 0.82 x its compute with 4 loader
workers and with 8 alike, so the limit was not the workers but the trainer's decode-ahead thread
(data/loading/gpu_decode.py). That thread's work per batch is timed here step by step, on the same prepared
batches (the workers' part, bytes and crop boxes, is done before the clock starts):

* ``decode``: the batched nvJPEG call alone (torchvision's ``decode_jpeg`` with a list, on the device);
* ``decode_threads``: the batch split over ``threads`` threads decoding at once: whether the call lets another
  thread decode meanwhile (torchvision's source holds one process-wide lock over the whole call, so this is
  expected to be no faster than ``decode``; the phase checks it on the installed version);
* ``crops``: decode, then each image's crop, antialiased resize and flip (``GpuDecoder.resized_crops``);
* ``batch``: all of one decode-ahead batch: the crops plus the trainer's DeviceTransform (colour, normalize).

Each is images/s over ``batches`` batches after one untimed batch, the device synchronized before the clock
starts and stops (so GPU work counts), with its spread over the batches. A step of the trainer takes the
``bench train`` compute time per batch: the decode-ahead thread keeps up only if ``batch`` is faster than that,
while sharing the GIL and the GPU with the training thread.

It times the GPU side of whole batches: a ``data.gpu_decode_share`` below 1 moves part of each batch to the
workers, whose end-to-end effect ``bench train --e2e gpu:WORKERS:plan:SHARE`` measures.

The decoders can be handed in (tests use OpenCV stand-ins on the CPU, as tests/test_gpu_decode.py does); by
default they are torchvision's, which this command needs.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .measure import Spread


@dataclass
class GpuDecodeOptions:
    data: str  # prepared JPEG shards
    batch_size: int = 256
    batches: int = 10  # timed, after one untimed
    threads: int = 2  # for the decode_threads phase
    config: str | None = None  # recipe whose data section is used (default: bench loader's DEFAULT_DATA)
    overrides: list[str] = field(default_factory=list)
    device: str = "auto"
    seed: int = 0


def bench_gpu_decode(opts: GpuDecodeOptions, log=print, decode=None, decode_cpu=None) -> dict:
    """The machine, then each phase's img/s (module docstring). `decode` / `decode_cpu`: GpuDecoder's."""
    from ..data.augment.device import DeviceTransform
    from ..data.augment.geometry import TrainGeometry
    from ..data.loading.gpu_decode import EncodedBatchDataset, GpuDecoder
    from ..data.loading.loader import Job, train_batch_indices
    from ..data.shards.reader import RecordReader
    from ..runtime import load_recipe, pick_device
    from . import machine
    from .loader import DEFAULT_DATA

    if opts.batches < 1 or opts.batch_size < 1 or opts.threads < 1:
        raise ValueError("need --batches >= 1, --batch-size >= 1 and --threads >= 1")
    cfg = load_recipe(opts.config, ([] if opts.config else list(DEFAULT_DATA)) + list(opts.overrides))
    dev = pick_device(opts.device)
    reader = RecordReader(opts.data, "train")
    if reader.manifest["image"].get("channels", 3) != 3:
        raise ValueError(f"{opts.data}: bench gpu-decode is for RGB JPEG data sets (ImageNet layout)")
    steps = train_batch_indices(len(reader), opts.batch_size, opts.seed, 0)
    if not steps:
        raise ValueError(f"{reader.root}: {len(reader)} images, fewer than one batch of {opts.batch_size}")
    try:
        decoder = GpuDecoder(dev, DeviceTransform(cfg.data, 3, dev, dev.type == "cuda"), decode, decode_cpu)
    except RuntimeError as e:  # no torchvision
        raise ValueError(str(e)) from None
    info = machine.describe()
    log(machine.line(info))
    dataset = EncodedBatchDataset(reader, TrainGeometry(cfg.data, reader.manifest["image"].get("height") or 0),
                                  opts.seed)
    n = opts.batches + 1
    batches = [dataset[Job(0, s, steps[s % len(steps)])] for s in range(n)]  # (EncodedBatch, labels, bad, params)
    mean_kb = sum(len(b[0].data) for b in batches) / sum(len(b[0]) for b in batches) / 1e3
    log(f"bench gpu-decode: {opts.batches} timed batches of {opts.batch_size} ({mean_kb:.0f} kB JPEGs, crop "
        f"{cfg.data.crop}, {cfg.data.image_size} px) on {dev}")

    pool = ThreadPoolExecutor(opts.threads)

    def in_threads(b):
        chunks = b[0].chunks()
        parts = [chunks[k::opts.threads] for k in range(opts.threads)]

        def one(part):
            if dev.type == "cuda":
                torch.cuda.set_device(dev)  # each thread's current device
            return decoder.decode(part, dev)
        return list(pool.map(one, [p for p in parts if p]))

    phases = {"decode": lambda b: decoder.decode_batch(b[0]), "decode_threads": in_threads,
              "crops": lambda b: decoder.resized_crops(b[0]),
              "batch": lambda b: decoder(b[0], b[3])}  # what decode_ahead's producer does with a loader batch
    rates, spreads = {}, {}
    try:
        for name, run in phases.items():
            rates[name], spreads[name] = _rate(run, batches, dev)
            log(f"  {name:15s} {rates[name]:9.0f} img/s  (per batch: {spreads[name].text(what='batch')})")
    finally:
        pool.shutdown()
    ms = {name: 1e3 * opts.batch_size / r for name, r in rates.items()}
    log(f"  one decode-ahead batch of {opts.batch_size}: {ms['batch']:.1f} ms ({ms['decode']:.1f} decode, "
        f"{ms['crops'] - ms['decode']:.1f} crops, {ms['batch'] - ms['crops']:.1f} transform)")
    return {"device": str(dev), "batch_size": opts.batch_size, "batches": opts.batches, "threads": opts.threads,
            "mean_kb": mean_kb, "images_per_s": rates, "batch_ms": ms,
            "images_per_s_per_batch": {k: list(s.values) for k, s in spreads.items()},
            "crop": cfg.data.crop, "image_size": cfg.data.image_size, "machine": info}


def _rate(run, batches: list, dev: torch.device) -> tuple[float, Spread]:
    """Images/s of `run` over batches[1:] after batches[0] untimed; per-batch rates for the spread (host clock,
    each batch synchronized: what one hand-over costs)."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    run(batches[0])
    sync()
    per_batch = []
    start = time.perf_counter()
    for b in batches[1:]:
        t = time.perf_counter()
        run(b)
        sync()
        per_batch.append(len(b[0]) / (time.perf_counter() - t))
    images = sum(len(b[0]) for b in batches[1:])
    return images / (time.perf_counter() - start), Spread.of(per_batch)
