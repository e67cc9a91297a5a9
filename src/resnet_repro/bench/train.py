"""``resnet-repro bench train``: training throughput, the model alone and fed from record shards, in one run.

Two phases share one model, optimizer, precision and the trainer's own step (training.loop.train_step):

* compute: one fixed batch that is already on the device (normalized float, channels_last), so nothing but
  the model, loss and optimizer is timed: the ceiling the input pipeline has to keep up with;
* end to end (with ``--data``): the real input path of ``resnet-repro train``: loader worker processes ->
  pinned memory -> DevicePrefetcher (side-stream copy) -> device transform, or GPU JPEG decode
  (``--decode gpu``, data/loading/gpu_decode.py).

Timing is honest in the airbench / NVIDIA DeepLearningExamples sense: warm-up steps (cuDNN autotuning,
torch.compile, loader start-up) are excluded, and each timed step is bracketed by marks on the device's own
clock: CUDA events recorded in stream order on a GPU (they time the GPU's work, not how fast the host queued
it), perf_counter on a CPU (where every op is synchronous). Throughput is images over the span from the first
timed step's start to the last one's end. Data-wait fraction is the share of that span in which the device sat
between steps with nothing to do (the sum of gaps between one step's end and the next step's start): the GPU's
own view of starvation, not the host's time blocked on the loader, which the GPU hides while queued work runs.
Each phase also keeps its fastest and slowest step, and with ``--rounds`` its spread over the rounds
(measure.py); the machine (machine.py) is printed first.

Model FLOP/s counts a training step as 3 x the forward pass (forward, input gradients, weight gradients) and
2 FLOPs per multiply-add (models.resnet.count_macs: convolutions and the FC layer, as the paper counts).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..config import Config, choices, model_entry, model_label
from ..recipe import load_config
from ..runtime import load_recipe, peak_memory_mb
from . import e2e
from .measure import Spread, StepTimer, lower_median

TRAIN_FLOPS_PER_MAC = 3 * 2  # forward + backward (input and weight gradients) = 3 forwards; 2 FLOPs per MAC


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def _bench_config(config: str | None, overrides: list[str], data: str | None) -> Config:
    """The data settings the end-to-end phase uses: a recipe's, or defaults that fit the shards' image kind."""
    if config:
        cfg = load_recipe(config, overrides)
    else:
        cfg = load_config(None, overrides)
        if not any(o.startswith("data.normalize") for o in overrides):
            cfg.data.normalize = "scale"  # any channel count; normalization does not change the speed
        if data:
            from ..data.shards.records import load_manifest

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
@dataclass
class TrainOptions:
    """What `bench train` runs (commands/bench.py's options); the defaults are the command's."""

    model: str | None = None  # None: the config's model.name (a recipe's, or --set model.name), else resnet50
    data: str | None = None  # record shards: also time the end-to-end phase
    batch_size: int | None = None  # None: the recipe's data.batch_size with `config` (its profile's), else 256
    steps: int = 50  # timed, per phase and round
    warmup: int = 10  # untimed, before each phase
    compile: bool | str = False  # False, True (torch.compile's default mode) or a mode of COMPILE_MODES
    precision: str | None = None  # None: the recipe's with `config`, else auto
    decode: str | None = None  # None: the recipe's data.decode
    workers: int | str | None = None  # None: the recipe's data.workers with `config`, else auto
    device: str = "auto"
    channels_last: bool | None = None  # None: as `train` would choose (runtime.py)
    config: str | None = None  # recipe (with this machine's profile) whose model, batch and data settings apply
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    rounds: int = 1  # the phases alternate this many times; each phase reports its median round
    e2e: list[dict] | None = None  # end-to-end variants (e2e.parse_e2e); None: one, from `decode` and `workers`

    def compile_mode(self) -> str | None:
        """Checks the options; the torch.compile mode, None for eager."""
        from ..models.resnet import SPECS

        if self.model not in SPECS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(SPECS)}")
        if self.steps < 1 or self.warmup < 0 or self.batch_size < 1 or self.rounds < 1:
            raise ValueError("need --steps >= 1, --warmup >= 0, --batch-size >= 1 and --rounds >= 1")
        mode = ("default" if self.compile is True else self.compile) or None
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
        return mode


def bench_train(opts: TrainOptions, log=print) -> dict:
    """Run the compute phase and, given ``opts.data``, the end-to-end phase; return the figures as a dict.

    Each end-to-end variant is timed after the same compute phase with the same compiled model. The first
    variant's figures are the top-level end-to-end fields (as before variants existed); all of them are in
    ``end_to_end``. ``rounds`` > 1 alternates the phases that many times (each end-to-end round with a fresh
    loader) and reports each phase's median round: on a shared machine, load that comes and goes then hits both
    alike; the min-max over the rounds is printed and stored with it."""
    from . import machine

    # --model first, the --set overrides after it: the config is checked for the net the bench builds (model.width
    # is for the CIFAR nets, and the default model.name is ResNet-50).
    from ..models.resnet import SPECS

    named = [f"model.name={opts.model}"] if opts.model in SPECS else []  # an unknown one: refused by its name below
    cfg = _bench_config(opts.config, named + list(opts.overrides or []), opts.data)
    opts = _with_recipe_sizes(opts, cfg)
    compile_mode = opts.compile_mode()
    if opts.decode is not None:
        cfg.data.decode = opts.decode
    bench = _Session(opts, cfg, compile_mode)
    out = {**model_entry(opts.model, cfg.model.width), "rounds": opts.rounds, "batch_size": opts.batch_size,
           "image_size": bench.size, "in_channels": bench.channels,
           "precision": bench.precision, "compile": compile_mode is not None, "compile_mode": compile_mode,
           "channels_last": bench.channels_last, "device": str(bench.dev), "device_name": _device_name(bench.dev),
           "torch": torch.__version__, "steps": opts.steps, "warmup": opts.warmup,
           "train_flops_per_image": bench.flops_per_image, "machine": machine.describe(bench.hw)}
    log(machine.line(out["machine"]))
    log(f"bench train {model_label(opts.model, cfg.model.width)}: batch {opts.batch_size} at "
        f"{bench.size}x{bench.size}, {bench.precision}, "
        f"{f'compiled ({compile_mode})' if compile_mode else 'eager'}, "
        f"{'channels_last' if bench.channels_last else 'NCHW'}, {out['device_name']}; {opts.warmup} warm-up + "
        f"{opts.steps} timed steps")
    variants = e2e.variants(bench, opts) if bench.reader is not None else []
    runs: dict[str, list[dict]] = {"compute": [], **{f"e2e{k}": [] for k in range(len(variants))}}
    for _ in range(opts.rounds):
        _timed(runs["compute"], bench.compute_round)
        for k, v in enumerate(variants):
            _timed(runs[f"e2e{k}"], functools.partial(bench.e2e_round, v))
    _summarize(out, runs, variants, cfg, opts.data, log)
    out["peak_memory_mb"] = peak_memory_mb(bench.dev)
    log(f"  peak memory {out['peak_memory_mb']:,.0f} MB ({'device' if bench.dev.type == 'cuda' else 'host RSS'})")
    return out


def _with_recipe_sizes(opts: TrainOptions, cfg: Config) -> TrainOptions:
    """The model and batch the command line left open: the recipe's with --config (as `train` would run it on
    this machine, profile included) or --set, else ResNet-50 at 256, the ImageNet reference."""
    batch_set = opts.config or any(o.split("=", 1)[0].strip() == "data.batch_size" for o in opts.overrides or [])
    return replace(opts, model=cfg.model.name if opts.model is None else opts.model,
                   batch_size=opts.batch_size if opts.batch_size is not None
                   else cfg.data.batch_size if batch_set else 256)


def _timed(rounds: list[dict], run) -> None:
    """Append `run()`'s figures with its wall time, warm-up and loader start-up included (what a round costs)."""
    t0 = time.perf_counter()
    rounds.append(run())
    rounds[-1]["wall_s"] = time.perf_counter() - t0


class _Session:
    """What every phase and round shares: the device, precision, model, optimizer and the trainer's step."""

    def __init__(self, opts: TrainOptions, cfg: Config, compile_mode: str | None):
        from .. import runtime
        from ..models.resnet import build_model, count_macs
        from ..training.setup import make_optimizer

        self.opts, self.cfg = opts, cfg
        precision = opts.precision
        if precision is None:
            precision = cfg.train.precision if opts.config else "auto"
        self.hw = runtime.detect()
        dev = self.dev = runtime.pick_device(opts.device, 0, self.hw)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # autotune conv algorithms once per shape (during warm-up)
            torch.cuda.reset_peak_memory_stats(dev)
        # The same choices as `train` (runtime.py) unless the command line pins them.
        self.autocast, self.precision = runtime.autocast_for(
            runtime.choose_precision(precision, dev.type, self.hw, dev.index or 0).value, dev)
        self.channels_last = opts.channels_last
        if self.channels_last is None:
            self.channels_last = runtime.choose_channels_last(cfg.train.channels_last, dev.type,
                                                                self.precision).value
        self.reader, self.geometry, self.channels, self.size, num_classes = _data_shape(opts, cfg)

        torch.manual_seed(opts.seed)
        model = build_model(opts.model, num_classes, self.channels, stride_in_3x3=cfg.model.stride_in_3x3,
                            width=cfg.model.width)
        macs, _ = count_macs(model, self.size, self.channels)
        self.flops_per_image = TRAIN_FLOPS_PER_MAC * macs
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = model.to(dev, memory_format=self.memory_format).train()
        self.step_net = model
        if compile_mode is not None:
            self.step_net = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
        # CUDA graphs replay into the same output memory: each step tells the graph trees a new iteration begins,
        # so the previous step's outputs (already consumed) may be overwritten. The call itself queues no GPU work.
        self.step_begin = (torch.compiler.cudagraph_mark_step_begin if compile_mode in CUDAGRAPH_MODES
                           else (lambda: None))
        self.optimizer = make_optimizer(model, cfg.optim, 0.01, dev)  # small LR: random data must not blow it up
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.precision == "fp16")
        self.criterion = nn.CrossEntropyLoss()
        # The compute phase's batch: already on the device, so nothing but model, loss and optimizer is timed.
        self.x = torch.randn(opts.batch_size, self.channels, self.size, self.size,
                             device=dev).contiguous(memory_format=self.memory_format)
        self.y = torch.randint(0, num_classes, (opts.batch_size,), device=dev)

    def run_steps(self, batches) -> dict:
        from ..training.loop import train_step

        opts = self.opts
        timer = StepTimer(self.dev)
        for i in range(opts.warmup + opts.steps):
            x, y = next(batches)[:2]
            if i >= opts.warmup:
                timer.mark()
            self.step_begin()
            loss, _ = train_step(self.step_net, x, y, self.criterion, self.optimizer, self.scaler, self.autocast)
            if i >= opts.warmup:
                timer.mark()
        result = timer.result(opts.batch_size)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"bench train: non-finite loss with {opts.model} at {self.precision}")
        return result

    def compute_round(self) -> dict:
        return self.run_steps(iter(lambda: (self.x, self.y), None))

    def e2e_round(self, v: dict) -> dict:
        """The trainer's input path from the shards, with a fresh loader."""
        from ..data.loading.cores import pin_trainer, unpin_trainer
        from ..data.loading.loader import DevicePrefetcher, make_loader

        plan = v["plan"] if v["affinity"] != "none" else None
        before = pin_trainer(plan) if v["affinity"] == "plan" else None
        try:
            loader = make_loader(v["dataset"], v["jobs"], v["workers"], pin_memory=self.dev.type == "cuda", plan=plan)
            if v["decode"] == "gpu":  # the trainer's path: decoded a batch ahead on a side stream
                from ..data.loading.gpu_decode import decode_ahead

                batches = iter(decode_ahead(loader, v["transform"]))
            else:
                batches = iter(DevicePrefetcher(loader, self.dev, v["transform"]))
            try:
                return self.run_steps(batches)
            finally:
                batches.close()  # stops the loader's worker processes (and a decode-ahead thread)
        finally:
            unpin_trainer(before)


def _data_shape(opts: TrainOptions, cfg: Config) -> tuple:
    """(reader or None, train geometry or None, channels, image size, classes): the shards' or, without data,
    the model's own input."""
    from ..data.augment.geometry import TrainGeometry
    from ..models.resnet import SPECS

    if not opts.data:
        # The input `train` would build: the config's model.in_channels / num_classes, else (with a recipe) its
        # data set's manifest where that is prepared (Fashion-MNIST: 1 channel, 10 classes), else the model's own.
        spec = SPECS[opts.model]
        channels, classes = cfg.model.in_channels, cfg.model.num_classes
        if opts.config and not (channels and classes):
            from ..data.shards.records import RecordError, load_manifest

            try:
                manifest = load_manifest(Path(cfg.data.path))
            except RecordError:
                manifest = {}
            channels = channels or manifest.get("image", {}).get("channels")
            classes = classes or len(manifest.get("classes", []))
        return (None, None, channels or 3, cfg.data.image_size or spec.input_size,
                classes or (1000 if spec.stem == "imagenet" else 10))
    from ..data.shards.reader import RecordReader

    reader = RecordReader(opts.data, cfg.data.train_splits)
    geometry = TrainGeometry(cfg.data, reader.manifest["image"].get("height") or 0)
    if len(reader) < opts.batch_size:
        raise ValueError(f"{opts.data}: {len(reader)} training samples, fewer than one batch of {opts.batch_size}")
    return reader, geometry, reader.manifest["image"]["channels"], geometry.size, len(reader.manifest["classes"])


def _summarize(out: dict, runs: dict[str, list[dict]], variants: list[dict], cfg: Config, data, log) -> None:
    """Each phase's median round into `out`, its spread over the rounds alongside, and the log lines."""
    def by_rate(phase: str) -> dict:
        return lower_median(runs[phase], key=lambda r: r["images_per_s"])

    compute = by_rate("compute")
    flops = out["train_flops_per_image"]
    out.update(compute_images_per_s=compute["images_per_s"], compute_step_ms=compute["step_ms"],
               compute_tflops=compute["images_per_s"] * flops / 1e12, compute_wall_s=compute["wall_s"],
               compute_images_per_s_rounds=[r["images_per_s"] for r in runs["compute"]],
               compute_step_ms_min=compute["step_ms_min"], compute_step_ms_max=compute["step_ms_max"])
    log(f"  compute     {compute['images_per_s']:10,.1f} img/s  {compute['step_ms']:8.1f} ms/step  "
        f"{out['compute_tflops']:.3g} TFLOP/s model")
    out.update(end_to_end_images_per_s=None, end_to_end_step_ms=None, end_to_end_over_compute=None,
               data_wait_fraction=None, data=data, decode=None, workers=None, end_to_end=[])
    for k, v in enumerate(variants):
        e2e_k = by_rate(f"e2e{k}")
        ratio = e2e_k["images_per_s"] / compute["images_per_s"]
        row = {"decode": v["decode"], "workers": v["workers"], "affinity": v["affinity"],
               "gpu_decode_share": v.get("share") if v["decode"] == "gpu" else None,
               "core_plan": v["plan"].describe(), "images_per_s": e2e_k["images_per_s"], "step_ms": e2e_k["step_ms"],
               "over_compute": ratio, "data_wait_fraction": e2e_k["wait_fraction"], "wall_s": e2e_k["wall_s"],
               "images_per_s_rounds": [r["images_per_s"] for r in runs[f"e2e{k}"]],
               "step_ms_min": e2e_k["step_ms_min"], "step_ms_max": e2e_k["step_ms_max"]}
        out["end_to_end"].append(row)
        if k == 0:
            out.update(end_to_end_images_per_s=row["images_per_s"], end_to_end_step_ms=row["step_ms"],
                       end_to_end_over_compute=ratio, data_wait_fraction=row["data_wait_fraction"],
                       end_to_end_wall_s=row["wall_s"], decode=row["decode"], workers=row["workers"],
                       crop=cfg.data.crop, end_to_end_images_per_s_rounds=row["images_per_s_rounds"])
        log(f"  end to end  {row['images_per_s']:10,.1f} img/s  {row['step_ms']:8.1f} ms/step  "
            f"{ratio:.3f} x compute, data wait {100 * row['data_wait_fraction']:.1f} %  "
            f"({v['decode']} decode{e2e.share_text(row)}, crop {cfg.data.crop}, affinity {v['affinity']}: "
            f"{row['core_plan']}; {data})")
    phases = [("compute", out["compute_images_per_s_rounds"], compute)] + [
        (f"end to end ({r['decode']}{e2e.share_text(r)}, {r['affinity']})", r["images_per_s_rounds"], r)
        for r in out["end_to_end"]]
    log("  img/s over the alternating rounds, and the median round's fastest-slowest step: " + "; ".join(
        f"{name} {Spread.of(rates).text(',.1f')}, steps {r['step_ms_min']:.1f}-{r['step_ms_max']:.1f} ms"
        for name, rates, r in phases))

