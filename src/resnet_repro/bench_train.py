"""``resnet-repro bench train``: training throughput, the model alone and fed from record shards, in one run.

Two phases share one model, optimizer, precision and the trainer's own step (train.train_step):

* compute: one fixed batch that is already on the device (normalized float, channels_last), so nothing but
  the model, loss and optimizer is timed: the ceiling the input pipeline has to keep up with;
* end to end (with ``--data``): the real input path of ``resnet-repro train``: loader worker processes ->
  pinned memory -> DevicePrefetcher (side-stream copy) -> device transform, or GPU JPEG decode
  (``--decode gpu``, data/gpu_decode.py).

Timing is honest in the airbench / NVIDIA DeepLearningExamples sense: warm-up steps (cuDNN autotuning,
torch.compile, loader start-up) are excluded, and each timed step is bracketed by marks on the device's own
clock: CUDA events recorded in stream order on a GPU (they time the GPU's work, not how fast the host queued
it), perf_counter on a CPU (where every op is synchronous). Throughput is images over the span from the first
timed step's start to the last one's end. Data-wait fraction is the share of that span in which the device sat
between steps with nothing to do (the sum of gaps between one step's end and the next step's start): the GPU's
own view of starvation, not the host's time blocked on the loader, which the GPU hides while queued work runs.

Model FLOP/s counts a training step as 3 x the forward pass (forward, input gradients, weight gradients) and
2 FLOPs per multiply-add (models.resnet.count_macs: convolutions and the FC layer, as the paper counts).
"""
from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import torch
import torch.nn as nn

from .config import Config, choices, load_config

TRAIN_FLOPS_PER_MAC = 3 * 2  # forward + backward (input and weight gradients) = 3 forwards; 2 FLOPs per MAC


class StepTimer:
    """Start and end marks of each timed step on the device's clock (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def result(self, batch_size: int) -> dict:
        """Images/s over the span of all marked steps and the fraction of it spent between steps."""
        if self.cuda:
            torch.cuda.synchronize()
            t = [self.marks[0].elapsed_time(e) / 1000.0 for e in self.marks]  # ms -> s, from the first mark
        else:
            t = [m - self.marks[0] for m in self.marks]
        starts, ends = t[0::2], t[1::2]
        span = ends[-1] - starts[0]
        gaps = sum(max(0.0, s - e) for s, e in zip(starts[1:], ends[:-1]))
        steps = len(ends)
        return {"images_per_s": steps * batch_size / span, "step_ms": 1000.0 * span / steps,
                "wait_fraction": gaps / span, "seconds": span, "steps": steps}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # No device allocator on the CPU: the process's peak resident set (Linux reports KiB).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def _bench_config(config: str | None, overrides: list[str], data: str | None) -> Config:
    """The data settings the end-to-end phase uses: a recipe's, or defaults that fit the shards' image kind."""
    if config:
        cfg = load_config(config, overrides)
    else:
        cfg = load_config(None, overrides)
        if not any(o.startswith("data.normalize") for o in overrides):
            cfg.data.normalize = "scale"  # any channel count; normalization does not change the speed
        if data:
            from .data.records import load_manifest

            image = load_manifest(Path(data)).get("image", {})
            if not image.get("height") or image["height"] > 64:  # ImageNet-style shards: variable-size JPEGs
                if not any(o.startswith("data.crop") for o in overrides):
                    crops = choices("data", "crop")
                    cfg.data.crop = "inception" if "inception" in crops else "none"
                if not any(o.startswith("data.image_size") for o in overrides):
                    cfg.data.image_size = 224
    if data:
        cfg.data.path = data
    return cfg


# torch.compile modes (torch.compile's own names). "default" compiles kernels only; "reduce-overhead" adds CUDA graphs
# (one launch per graph instead of one per kernel); "max-autotune" also benchmarks kernel choices (convolution and
# matmul templates) while compiling, with CUDA graphs; "max-autotune-no-cudagraphs" the same without them.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
AFFINITIES = ("plan", "workers", "none")  # data/cores.py applied in full, to the workers only, or not at all


def parse_e2e(spec: str) -> dict:
    """An end-to-end variant, DECODE[:WORKERS[:AFFINITY]]: "cpu", "gpu:4", "cpu:auto:none" (WORKERS: a count or
    auto; AFFINITY: plan = workers on their cores and the training thread on its own, workers = only the
    workers pinned, none = nothing pinned)."""
    from .data.cores import parse_workers

    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or parts[0] not in ("cpu", "gpu"):
        raise ValueError(f"--e2e {spec!r}: expected DECODE[:WORKERS[:AFFINITY]] with DECODE cpu or gpu, e.g. gpu:4")
    try:
        workers = parse_workers(parts[1]) if len(parts) > 1 and parts[1] else None
    except ValueError as e:
        raise ValueError(f"--e2e {spec!r}: {e}") from None
    affinity = parts[2] if len(parts) > 2 else "plan"
    if affinity not in AFFINITIES:
        raise ValueError(f"--e2e {spec!r}: affinity {affinity!r} is not one of {', '.join(AFFINITIES)}")
    return {"decode": parts[0], "workers": workers, "affinity": affinity}


def bench_train(model_name: str = "resnet50", data: str | None = None, batch_size: int = 256, steps: int = 50,
                warmup: int = 10, compile: bool | str = False, precision: str | None = None, decode: str | None = None,
                workers: int | str | None = None, device: str = "auto", channels_last: bool | None = None,
                config: str | None = None, overrides: list[str] | None = None, seed: int = 0, rounds: int = 1,
                e2e: list[dict] | None = None, log=print) -> dict:
    """Run the compute phase and, given ``data``, the end-to-end phase; return the figures as a dict.

    ``compile``: False, True (torch.compile's default mode) or a mode of COMPILE_MODES. ``e2e``: end-to-end
    variants (parse_e2e), each timed after the same compute phase with the same compiled model; without it, one
    variant from ``decode`` and ``workers``. The first variant's figures are the top-level end-to-end fields (as
    before variants existed); all of them are in ``end_to_end``.

    ``rounds`` > 1 alternates the phases that many times (each end-to-end round with a fresh loader) and
    reports each phase's median round: on a shared machine, load that comes and goes then hits both alike."""
    from .data.augment import DeviceTransform, TrainGeometry
    from .data.cores import available_cpus, pin_trainer, plan_cores, unpin_trainer
    from .data.loader import BatchDataset, DevicePrefetcher, Job, make_loader, train_batch_indices
    from .models.resnet import SPECS, build_model, count_macs
    from . import runtime
    from .runtime import autocast_for
    from .train import make_optimizer, train_step

    if model_name not in SPECS:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(SPECS)}")
    if steps < 1 or warmup < 0 or batch_size < 1 or rounds < 1:
        raise ValueError("need --steps >= 1, --warmup >= 0, --batch-size >= 1 and --rounds >= 1")
    compile_mode = ("default" if compile is True else compile) or None
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
    cfg = _bench_config(config, list(overrides or []), data)
    if decode is not None:
        cfg.data.decode = decode
    if precision is None:
        precision = cfg.train.precision if config else "auto"
    hw = runtime.detect()
    dev = runtime.pick_device(device, 0, hw)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune conv algorithms once per shape (during warm-up)
        torch.cuda.reset_peak_memory_stats(dev)
    # The same choices as `train` (runtime.py) unless the command line pins them.
    autocast, precision = autocast_for(runtime.choose_precision(precision, dev.type, hw, dev.index or 0).value, dev)
    if channels_last is None:
        channels_last = runtime.choose_channels_last(cfg.train.channels_last, dev.type).value

    spec = SPECS[model_name]
    reader = None
    if data:
        from .data.records import RecordReader

        reader = RecordReader(data, cfg.data.train_split)
        channels = reader.manifest["image"]["channels"]
        stored = reader.manifest["image"].get("height") or 0
        geometry = TrainGeometry(cfg.data, stored)
        size = geometry.size
        num_classes = len(reader.manifest["classes"])
        if len(reader) < batch_size:
            raise ValueError(f"{data}: {len(reader)} training samples, fewer than one batch of {batch_size}")
    else:
        channels, size = 3, cfg.data.image_size or spec.input_size
        num_classes = 1000 if spec.stem == "imagenet" else 10

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes, channels, stride_in_3x3=cfg.model.stride_in_3x3)
    macs, _ = count_macs(model, size, channels)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format).train()
    step_net = model
    if compile_mode is not None:
        step_net = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    # CUDA graphs replay into the same output memory: each step tells the graph trees a new iteration begins, so
    # the previous step's outputs (already consumed) may be overwritten. The call itself queues no GPU work.
    step_begin = torch.compiler.cudagraph_mark_step_begin if compile_mode in CUDAGRAPH_MODES else (lambda: None)
    optimizer = make_optimizer(model, cfg.optim, 0.01, dev)  # small LR: random data must not blow the weights up
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    criterion = nn.CrossEntropyLoss()

    def run_steps(batches, n_warmup: int, n_steps: int) -> dict:
        timer = StepTimer(dev)
        for i in range(n_warmup + n_steps):
            x, y = next(batches)[:2]
            if i >= n_warmup:
                timer.mark()
            step_begin()
            loss, _ = train_step(step_net, x, y, criterion, optimizer, scaler, autocast)
            if i >= n_warmup:
                timer.mark()
        result = timer.result(batch_size)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"bench train: non-finite loss with {model_name} at {precision}")
        return result

    flops_per_image = TRAIN_FLOPS_PER_MAC * macs
    out = {"model": model_name, "rounds": rounds, "batch_size": batch_size, "image_size": size, "precision": precision,
           "compile": compile_mode is not None, "compile_mode": compile_mode, "channels_last": channels_last,
           "device": str(dev), "device_name": _device_name(dev), "torch": torch.__version__, "steps": steps,
           "warmup": warmup, "train_flops_per_image": flops_per_image}
    log(f"bench train {model_name}: batch {batch_size} at {size}x{size}, {precision}, "
        f"{f'compiled ({compile_mode})' if compile_mode else 'eager'}, {'channels_last' if channels_last else 'NCHW'}, "
        f"{out['device_name']}; {warmup} warm-up + {steps} timed steps")

    # --- Compute: one batch already on the device ------------------------------------------------------------
    x = torch.randn(batch_size, channels, size, size, device=dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)

    def compute_round() -> dict:
        return run_steps(iter(lambda: (x, y), None), warmup, steps)

    # --- End to end: the trainer's input path from the shards, once per variant ------------------------------
    variants = []
    if reader is not None:
        total = warmup + steps
        per_epoch = len(reader) // batch_size
        jobs = []
        for epoch in range(-(-total // per_epoch)):  # as many epochs as the run needs, one loader for all
            jobs += [Job(epoch, s, idx) for s, idx in
                     enumerate(train_batch_indices(len(reader), batch_size, seed, epoch))]
        jobs = jobs[:total]
        to_device = DeviceTransform(cfg.data, channels, dev, channels_last)
        if e2e is None:  # the recipe's worker count, else auto (data/cores.py)
            e2e = [{"decode": cfg.data.decode, "affinity": "plan",
                    "workers": workers if workers is not None else (cfg.data.workers if config else "auto")}]
        for v in e2e:
            v = dict(v)
            setting = v.get("workers")
            setting = setting if setting is not None else (cfg.data.workers if config else "auto")
            v["plan"] = plan_cores(available_cpus(), setting, dev.type)
            v["workers"] = v["plan"].workers
            if v["decode"] == "gpu":
                from .data.gpu_decode import EncodedBatchDataset, GpuDecoder

                v["dataset"] = EncodedBatchDataset(reader, geometry, seed)
                v["transform"] = GpuDecoder(dev, to_device)
            else:
                v["dataset"] = BatchDataset(reader, geometry, channels, seed, train=True)
                v["transform"] = to_device
            variants.append(v)

    def e2e_round(v: dict) -> dict:
        plan = v["plan"] if v["affinity"] != "none" else None
        before = pin_trainer(plan) if v["affinity"] == "plan" else None
        try:
            loader = make_loader(v["dataset"], jobs, v["workers"], pin_memory=dev.type == "cuda", plan=plan)
            if v["decode"] == "gpu":  # the trainer's path: decoded a batch ahead on a side stream
                from .data.gpu_decode import decode_ahead

                batches = iter(decode_ahead(loader, v["transform"]))
            else:
                batches = iter(DevicePrefetcher(loader, dev, v["transform"]))
            try:
                return run_steps(batches, warmup, steps)
            finally:
                batches.close()  # stops the loader's worker processes (and a decode-ahead thread)
        finally:
            unpin_trainer(before)

    runs: dict[str, list[dict]] = {"compute": [], **{f"e2e{k}": [] for k in range(len(variants))}}
    for _ in range(rounds):
        t0 = time.perf_counter()
        runs["compute"].append(compute_round())
        runs["compute"][-1]["wall_s"] = time.perf_counter() - t0
        for k, v in enumerate(variants):
            t0 = time.perf_counter()
            runs[f"e2e{k}"].append(e2e_round(v))
            runs[f"e2e{k}"][-1]["wall_s"] = time.perf_counter() - t0

    def median(phase: str) -> dict:
        ordered = sorted(runs[phase], key=lambda r: r["images_per_s"])
        return ordered[(len(ordered) - 1) // 2]  # the lower median: an actual round, never flattered

    compute = median("compute")
    out.update(compute_images_per_s=compute["images_per_s"], compute_step_ms=compute["step_ms"],
               compute_tflops=compute["images_per_s"] * flops_per_image / 1e12, compute_wall_s=compute["wall_s"],
               compute_images_per_s_rounds=[r["images_per_s"] for r in runs["compute"]])
    log(f"  compute     {compute['images_per_s']:10,.1f} img/s  {compute['step_ms']:8.1f} ms/step  "
        f"{out['compute_tflops']:.3g} TFLOP/s model")
    out.update(end_to_end_images_per_s=None, end_to_end_step_ms=None, end_to_end_over_compute=None,
               data_wait_fraction=None, data=data, decode=None, workers=None, end_to_end=[])
    for k, v in enumerate(variants):
        e2e_k = median(f"e2e{k}")
        ratio = e2e_k["images_per_s"] / compute["images_per_s"]
        row = {"decode": v["decode"], "workers": v["workers"], "affinity": v["affinity"],
               "core_plan": v["plan"].describe(), "images_per_s": e2e_k["images_per_s"], "step_ms": e2e_k["step_ms"],
               "over_compute": ratio, "data_wait_fraction": e2e_k["wait_fraction"], "wall_s": e2e_k["wall_s"],
               "images_per_s_rounds": [r["images_per_s"] for r in runs[f"e2e{k}"]]}
        out["end_to_end"].append(row)
        if k == 0:
            out.update(end_to_end_images_per_s=row["images_per_s"], end_to_end_step_ms=row["step_ms"],
                       end_to_end_over_compute=ratio, data_wait_fraction=row["data_wait_fraction"],
                       end_to_end_wall_s=row["wall_s"], decode=row["decode"], workers=row["workers"],
                       crop=cfg.data.crop, end_to_end_images_per_s_rounds=row["images_per_s_rounds"])
        log(f"  end to end  {row['images_per_s']:10,.1f} img/s  {row['step_ms']:8.1f} ms/step  "
            f"{ratio:.3f} x compute, data wait {100 * row['data_wait_fraction']:.1f} %  "
            f"({v['decode']} decode, crop {cfg.data.crop}, affinity {v['affinity']}: {row['core_plan']}; {data})")
    if rounds > 1:
        log(f"  (median of {rounds} alternating rounds; compute img/s per round "
            + ", ".join(f"{v:,.1f}" for v in out["compute_images_per_s_rounds"])
            + "".join(f"; end to end ({r['decode']}, {r['affinity']}) "
                      + ", ".join(f"{v:,.1f}" for v in r["images_per_s_rounds"]) for r in out["end_to_end"]) + ")")
    out["peak_memory_mb"] = _peak_memory_mb(dev)
    log(f"  peak memory {out['peak_memory_mb']:,.0f} MB ({'device' if dev.type == 'cuda' else 'host RSS'})")
    return out

