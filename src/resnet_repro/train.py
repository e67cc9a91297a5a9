"""Training, read top to bottom: data -> model -> optimizer -> epochs -> precise BN -> evaluation -> results.

One process::

    resnet-repro train --config configs/fashion_mnist/resnet20.yaml --out runs/fm

One node with 8 GPUs (per-device batch x 8 = global batch)::

    torchrun --nproc-per-node 8 -m resnet_repro train --config configs/imagenet/resnet50_seed.yaml --out runs/r50

Several nodes: the same on every node with ``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT``.

Files in RUN_DIR (rank 0 writes): config.yaml (resolved), metrics.jsonl (one object per epoch),
checkpoints/ (complete state, see checkpoint.py), results.json and model.safetensors at the end.

`train` reads as the run's script, one function per phase: `start_processes` (device, precision), `open_data`,
`build_learner` (model, optimizer, EMA), `start_or_resume` (run folder, checkpoint); per epoch `train_one_epoch`,
`end_epoch` (its checkpoint) and `finish_epoch` (evaluation on val, log line); then `finish` (precise BN, final
evaluation on val, the test split scored once, results). They share `Run` (what the run is made of) and `RunState` (where it stands). Stop requests and the ranks'
meetings live in stopping.py; which run a folder holds and where a resume starts, in run_folder.py.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import __version__, checkpoint, dist, folder_lock, run_folder, runtime
from .config import Config, ConfigError, DataConfig
from .recipe import config_from_dict, save_config
from .data.augment.device import DeviceTransform
from .data.augment.geometry import EvalGeometry, TrainGeometry
from .data.loading.cores import CorePlan, available_cpus, pin_trainer, plan_cores, unpin_trainer
from .data.loading.loader import (BatchDataset, DevicePrefetcher, Job, eval_batch_indices, make_loader,
                                  train_batch_indices)
from .data.loading.memory import keep_batch_memory
from .data.shards.reader import RecordReader
from .data.shards.records import RecordError
from .data.shards.remote import open_reader
from .evaluate import eval_transform, evaluate, topk_correct
from .models.resnet import build_model
from .ema import EMA
from .precise_bn import update_bn_stats
from .schedule import lr_factor, schedule_position, train_image_size
from .stopping import RankMeeting, StopRequest


class TrainingError(RuntimeError):
    pass


def param_groups(model: nn.Module, weight_decay: float, no_wd_bn_bias: bool) -> list[dict]:
    if not no_wd_bn_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # BN gamma/beta and biases are the 1-d parameters
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg, lr: float, device: torch.device) -> torch.optim.SGD:
    """SGD over `param_groups`. On CUDA the fused kernel: one launch for all parameters, and it applies
    GradScaler's unscale/inf-check on the device, so an fp16 step never waits for the GPU either."""
    fast = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.no_wd_bn_bias), lr=lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, **fast)


def train_step(net, x, y, criterion, optimizer, scaler, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (the one `bench train` times). Returns loss and logits, detached and still on the
    device: nothing here reads a value back, so the host queues the next step while the GPU runs this one."""
    with autocast():
        logits = net(x)
        loss = criterion(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


class RunningSums:
    """Per-epoch training loss and top-1 sums, accumulated on the device so that a step never synchronizes
    with it; sample counts are host integers (known without asking the device). Read once, at `total`."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [loss x samples, top-1 correct]
        self.samples = self.bad = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, bad: int) -> None:
        self.sums += torch.stack([loss.double() * len(y), topk_correct(logits, y, (1,))[0].double()])
        self.samples += len(y)
        self.bad += bad

    def total(self) -> tuple[float, float, int, int]:
        """(loss sum, top-1 correct, samples, bad samples) summed over ranks: the one read-back."""
        both = torch.cat([self.sums, torch.tensor([self.samples, self.bad], dtype=torch.float64).to(self.sums.device)])
        loss_sum, correct, n, bad = dist.all_reduce_sum(both).tolist()
        return loss_sum, correct, int(n), int(bad)

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "samples": self.samples, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"].to(self.sums.device))
        self.samples, self.bad = int(state["samples"]), int(state["bad"])


# --- What the phases share ---------------------------------------------------------------------------------

@dataclass
class Data:
    """The run's data: readers, datasets, device transforms, the batch arithmetic and the loaders built from them.
    Which samples a batch holds is a pure function of (seed, epoch, step), whatever the number of ranks."""
    cfg: DataConfig
    seed: int
    env: dist.DistEnv
    device: torch.device
    train_reader: RecordReader
    val_reader: RecordReader
    num_classes: int
    train_ds: object
    val_ds: object
    train_transform: object
    val_transform: object
    core_plan: CorePlan
    global_batch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    val_held_out: bool = True  # False when data.train_splits includes the val split: its figures are then fit
    test_split: str | None = None  # scored once, by finish(), after precise BN; never opened before

    @property
    def manifest(self) -> dict:
        return self.train_reader.manifest

    @property
    def channels(self) -> int:
        return self.manifest["image"]["channels"]

    @property
    def stored(self) -> int:
        return self.manifest["image"]["height"]

    def steps_in(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)  # the last may be partial

    def train_jobs(self, epoch: int, count: int, size: int = 0) -> list[Job]:
        """This rank's first `count` training batches of `epoch`, at crop side `size` (0: the geometry's own)."""
        indices = train_batch_indices(len(self.train_reader), self.cfg.batch_size, self.seed, epoch, self.env.rank,
                                      self.env.world)[:count]
        return [Job(epoch, s, idx, size) for s, idx in enumerate(indices)]

    def train_batches(self, jobs: list[Job]):
        loader = make_loader(self.train_ds, jobs, self.core_plan.workers, self.device.type == "cuda", self.core_plan)
        if self.cfg.decode == "gpu":  # decoded a batch ahead on a side stream (gpu_decode.py)
            from .data.loading.gpu_decode import decode_ahead

            return decode_ahead(loader, self.train_transform)
        return DevicePrefetcher(loader, self.device, self.train_transform)

    def val_batches(self, dataset=None):
        """Batches of the val split (or of `dataset`, an eval-geometry BatchDataset: the test split at the end)."""
        ds = self.val_ds if dataset is None else dataset
        jobs = [Job(0, s, idx) for s, idx in enumerate(
            eval_batch_indices(len(ds.reader), self.cfg.eval_batch_size, self.env.rank, self.env.world))]
        loader = make_loader(ds, jobs, self.core_plan.workers, self.device.type == "cuda", self.core_plan)
        return DevicePrefetcher(loader, self.device, self.val_transform)


@dataclass
class Learner:
    """What the steps change: the model (`step_net`: the same weights, wrapped for DDP and compiled when asked),
    optimizer, loss scaler and EMA of the weights."""
    model: nn.Module
    step_net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    ema: EMA | None
    peak_lr: float

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


@dataclass
class Run:
    """What every phase reads, filled in by the first three: config, run folder, processes and device, precision,
    where log lines go, then the data and the learner."""
    cfg: Config
    out: Path
    env: dist.DistEnv
    device: torch.device
    autocast: Callable
    precision: str
    channels_last: bool
    log: Callable
    data: Data | None = None
    learner: Learner | None = None
    tb: object | None = None  # TensorBoard writer: rank 0, with train.tensorboard
    overrides: dict = field(default_factory=dict)  # recorded hardware-made choices this run replaces (a resume)
    chosen_on: dict | None = None  # the hardware facts that made the run's choices (config.yaml's chosen_on)
    facts: dict = field(default_factory=dict)  # this machine's facts (runtime.facts), recorded in every checkpoint
    allow_change: tuple = ()  # --allow-change: config keys a resume may change
    changes: dict = field(default_factory=dict)  # the allowed changes this resume made: key -> {saved, now}

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"


@dataclass
class RunState:
    """Where the run stands: which run it is, the first (epoch, step) this call trains, and what a resume
    carries into them."""
    run_id: str | None
    start_epoch: int = 0
    start_step: int = 0
    epoch_state: dict | None = None  # this rank's saved metric sums and timings of an unfinished epoch
    pending_record: dict | None = None  # an epoch whose checkpoint was saved but whose evaluation and log line were not
    last_ckpt_time: float = 0.0


class EpochTally:
    """One epoch's numbers on this rank: the next step, loss/top-1 sums (on the device), wall time and data wait,
    and the same since the last log line (for its img/s and data-wait %)."""

    def __init__(self, device: torch.device, step: int, size: int, saved: dict | None = None):
        self.step, self.size, self.stopped = step, size, False
        self.sums = RunningSums(device)  # no host sync per step
        self.t_start = self.t_log = time.time()
        self.wait = self.wait_log = 0.0
        self.seen_log = 0
        if saved is not None:  # resumed mid-epoch: the epoch's numbers go on
            self.sums.load_state_dict(saved["sums"])
            self.t_start -= saved["seconds"]
            self.wait = self.wait_log = saved["wait"]

    def timed(self, batches):
        """`batches`, adding the time spent waiting for each one to `wait`."""
        it = iter(batches)
        while True:
            t0 = time.time()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.time() - t0
            yield batch

    def elapsed(self) -> float:
        return time.time() - self.t_start


# --- The run, top to bottom --------------------------------------------------------------------------------

def train(cfg: Config, out: Path, resume: str | None = None, allow_change: tuple[str, ...] = (),
          force: bool = False) -> dict:
    """`resnet-repro train`: the run `cfg` describes, into `out` (resume: None, "auto" or a checkpoint path;
    allow_change: config keys a resume may change, see `_load_learner`; force: take over a lock left by another
    host)."""
    try:
        # Holds the run folder's lock (rank 0) until the last file is written, however the run ends.
        with contextlib.ExitStack() as held:
            return _train(cfg, Path(out), resume, held, tuple(allow_change), force)
    finally:
        # Errors included: a gloo group left to the interpreter's exit-time destructors can abort the process
        # ("terminate called without an active exception"), burying the error message under a SIGABRT.
        dist.shutdown()


def _train(cfg: Config, out: Path, resume: str | None, held: contextlib.ExitStack, allow_change: tuple,
           force: bool = False) -> dict:
    t_start = time.time()
    run = start_processes(cfg, out, resume)
    run.allow_change = allow_change
    run.data = open_data(run)
    run.learner = build_learner(run)
    state = start_or_resume(run, resume, held, force)
    done = _finished_results(run, state)
    if done is not None:
        return done

    # This thread and those it starts (pin-memory, decode-ahead) on the trainer's cores; given back however the run
    # ends (in-process callers). Workers move to theirs in their init.
    held.callback(unpin_trainer, pin_trainer(run.data.core_plan))
    stop = StopRequest()
    held.callback(stop.restore)  # however the run ends
    meeting = RankMeeting(run.env.world, run.device, cfg.train.log_interval)
    state.last_ckpt_time = time.time()
    run.tb = _tensorboard(out / "tensorboard") if cfg.train.tensorboard and run.env.is_main else None
    if state.pending_record is not None:
        run.log(f"epoch {state.pending_record['epoch']} was checkpointed but not evaluated and logged: doing that "
                "first")
        finish_epoch(run, state.pending_record)
    for epoch in range(state.start_epoch, run.data.epochs):
        tally = train_one_epoch(run, state, epoch, stop, meeting)
        if tally.stopped:
            return {"stopped": True, "epoch": epoch, "step": tally.step}
        finish_epoch(run, end_epoch(run, state, epoch, tally))
    return finish(run, state, stop, t_start)


# --- Processes, device and precision (runtime.py: chosen from the hardware, with the reason logged) ---------

def start_processes(cfg: Config, out: Path, resume: str | None = None) -> Run:
    """Join the ranks and settle the run's hardware-made choices (device, precision, memory format, profile, loader
    workers): on a resume the run's recorded ones (config.yaml), else chosen by rank 0 from its hardware; every
    rank then runs rank 0's config, and one that cannot honour it stops them all, naming itself."""
    recorded = run_folder.recorded(out, resume) if resume else None
    setting = cfg.train.device
    if recorded and setting == "auto":
        setting = recorded["config"].get("train", {}).get("device", setting)
    hw = runtime.detect(gpus=runtime.wants_gpus(setting))
    try:
        kind = runtime.device_type(setting, hw)
    except runtime.DeviceError:
        kind = "cpu"  # a recorded CUDA run on a machine without a GPU: settling names the choice and its --set
    env = dist.init(kind)
    log = print if env.is_main else (lambda *a, **k: None)
    settled = _settle_on_rank0(cfg, hw, env, recorded)
    for key, value in settled["values"].items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    device = runtime.pick_device(cfg.train.device, env.local_rank, hw)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    autocast, precision = runtime.autocast_for(cfg.train.precision, device)
    reasons = settled["reasons"]
    log(f"precision {precision} ({reasons['train.precision']}); memory format "
        f"{'channels_last' if cfg.train.channels_last == 'true' else 'NCHW'} ({reasons['train.channels_last']}); "
        f"recipe profile {cfg.train.profile} ({reasons['train.profile']})", flush=True)
    for key, o in settled["overrides"].items():
        log(f"override: {key} {o['now']} instead of the recorded {o['recorded']} (recorded in metrics.jsonl)",
            flush=True)
    for warning in settled["warnings"]:
        log(f"warning: {warning}", flush=True)
    return Run(cfg, out, env, device, autocast, precision, cfg.train.channels_last == "true", log,
               overrides=settled["overrides"], chosen_on=settled["chosen_on"], facts=runtime.facts(hw))


def _settle_on_rank0(cfg: Config, hw: runtime.Hardware, env: dist.DistEnv, recorded: dict | None) -> dict:
    """Rank 0's settled choices (runtime.settle) and config, on every rank; the same one-line error on every rank
    when rank 0 cannot settle them or some rank cannot honour them."""
    answer = None
    if env.is_main:
        local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), env.local_rank + 1)
        asked = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in runtime.HARDWARE_KEYS}
        chosen_on = (recorded or {}).get("chosen_on")
        try:
            s = runtime.settle(asked, recorded and recorded["config_flat"], hw,
                               lambda kind: plan_cores(available_cpus(), "auto", kind, 0, local_world).workers,
                               chosen_on, env.local_rank)
            overridden = s.overrides or not chosen_on
            answer = {"values": s.values, "reasons": s.reasons, "overrides": s.overrides, "warnings": s.warnings,
                      "config": cfg.to_dict(), "host": socket.gethostname(),
                      # the facts that chose: the record's, unless this run chose anew or overrides it
                      "chosen_on": runtime.facts(hw) if overridden else chosen_on}
        except runtime.DeviceError as e:
            answer = {"error": str(e)}
    answer = dist.broadcast_object(answer)
    if "error" in answer:
        raise runtime.DeviceError(answer["error"])
    if not env.is_main:
        # rank 0's config (its profile's values included), so that no rank trains another recipe
        rank0 = config_from_dict(answer["config"])
        cfg.__dict__.update(rank0.__dict__)
    mine = ""
    for key, value in answer["values"].items():
        why = runtime.cannot_honour(key, value, hw, str(answer["values"]["train.device"]).split(":")[0],
                                    env.local_rank)
        if why:
            mine = (f"rank {env.rank} on {socket.gethostname()} cannot honour {key}={value} (chosen by rank 0 on "
                    f"{answer['host']}): {why}; launch every rank on the same kind of machine, or pin {key} for all")
            break
    problems = [p for p in dist.all_gather_object(mine) if p]
    if problems:
        raise runtime.DeviceError(problems[0])
    return answer


# --- Data ----------------------------------------------------------------------------------------------------

def open_data(run: Run) -> Data:
    cfg, env, device = run.cfg, run.env, run.device
    train_reader = open_reader(cfg.data.path, cfg.data.train_splits, cfg.data.cache_dir)
    val_reader = open_reader(cfg.data.path, cfg.data.val_split, cfg.data.cache_dir)
    manifest = train_reader.manifest
    if manifest.get("dataset") == "fashion-mnist" and "evaluation_split" not in manifest:
        # Prepared before the three splits: its "val" is the official test set, which training must not read.
        raise RecordError(f"{cfg.data.path}: prepared before the held-out val split (its 'val' is the official "
                          f"test set); prepare it again: resnet-repro prepare fashion-mnist --out {cfg.data.path} "
                          "--force")
    published = manifest.get("evaluation_split")
    if published in cfg.data.train_splits:
        raise ConfigError(f"config key 'data.train_splits' is {cfg.data.train_splits}, but {published!r} is the split "
                          f"{cfg.data.path} reports published figures on (manifest.json evaluation_split); never "
                          "train on it")
    # The test split: scored once, after precise BN (finish); the data sets with two splits have none.
    test_split = "test" if "test" in manifest["splits"] and cfg.data.val_split != "test" else None
    val_held_out = cfg.data.val_split not in cfg.data.train_splits
    if not val_held_out:
        run.log(f"data.train_splits {cfg.data.train_splits} include the val split {cfg.data.val_split!r}: its "
                "figures are training-fit figures, not held out (labelled so in metrics.jsonl and results.json)")
    channels = manifest["image"]["channels"]
    stored = manifest["image"]["height"]
    if cfg.model.num_classes and cfg.model.num_classes != len(manifest["classes"]):
        raise ConfigError(f"config key 'model.num_classes' is {cfg.model.num_classes}, but {cfg.data.path} has "
                          f"{len(manifest['classes'])} classes (manifest.json); set model.num_classes=0 to take "
                          "the data's count")
    if cfg.model.in_channels and cfg.model.in_channels != channels:
        raise ConfigError(f"config key 'model.in_channels' is {cfg.model.in_channels}, but {cfg.data.path} holds "
                          f"{channels}-channel images (manifest.json); set model.in_channels=0 to take the data's")
    train_ds = BatchDataset(train_reader, TrainGeometry(cfg.data, stored), channels, cfg.train.seed, train=True)
    val_ds = BatchDataset(val_reader, EvalGeometry(cfg.data, stored), channels, cfg.train.seed, train=False)
    keep_batch_memory(device)  # this process transforms every batch on a CPU device: reuse its memory
    to_device = DeviceTransform(cfg.data, channels, device, run.channels_last)
    train_transform = to_device
    # Val batches get normalization only: colour distortion and lighting noise are training augmentation (and
    # val workers draw no colour parameters for them).
    val_transform = eval_transform(cfg.data, channels, device, run.channels_last)
    if cfg.data.decode == "gpu":
        # Workers ship JPEG bytes and the CPU path's crop boxes; the batch is decoded (nvJPEG) and resized on the
        # GPU, then takes the same DeviceTransform (data/gpu_decode.py). Val stays on the CPU path.
        from .data.loading.gpu_decode import EncodedBatchDataset, GpuDecoder

        if device.type != "cuda" or channels != 3:
            raise TrainingError(f"data.decode=gpu needs a CUDA device and RGB JPEGs (device {device}, {channels} "
                                "channel(s)); use data.decode=cpu")
        train_ds = EncodedBatchDataset(train_reader, TrainGeometry(cfg.data, stored), cfg.train.seed)
        train_transform = GpuDecoder(device, to_device)
    global_batch = cfg.data.batch_size * env.world
    steps_per_epoch = len(train_reader) // global_batch
    if steps_per_epoch == 0:
        raise TrainingError(f"{cfg.data.path}: {len(train_reader)} training samples is fewer than one global "
                            f"batch ({cfg.data.batch_size} x {env.world} processes)")
    # Run length: `train.max_steps` optimizer steps when set (recipes quoted in iterations), else whole epochs.
    epochs = cfg.train.epochs
    total_steps = epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = cfg.train.max_steps
        epochs = -(-total_steps // steps_per_epoch)
    # Worker count and core layout (data/cores.py): on a GPU the trainer's threads keep cores of their own.
    local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), env.local_rank + 1)  # torchrun sets it
    core_plan = plan_cores(available_cpus(), cfg.data.workers, device.type, env.local_rank, local_world)
    run.log(f"data loading: {core_plan.describe()}")
    return Data(cfg.data, cfg.train.seed, env, device, train_reader, val_reader,
                cfg.model.num_classes or len(manifest["classes"]), train_ds, val_ds, train_transform, val_transform,
                core_plan, global_batch, steps_per_epoch, epochs, total_steps, val_held_out, test_split)


# --- Model and optimizer -------------------------------------------------------------------------------------

def build_learner(run: Run) -> Learner:
    cfg, env, device, data, precision = run.cfg, run.env, run.device, run.data, run.precision
    global_batch = data.global_batch
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    model = build_model(cfg.model.name, data.num_classes, cfg.model.in_channels or data.channels,
                        cfg.model.zero_init_residual, cfg.model.stride_in_3x3, bn_eps=cfg.model.bn_eps,
                        init=cfg.model.init).to(device, memory_format=memory_format)
    bn_mode = f"per device ({cfg.data.batch_size} images)"
    if cfg.train.sync_bn and env.world > 1:
        if device.type != "cuda":
            raise TrainingError("train.sync_bn: torch's SyncBatchNorm runs on GPUs only; on CPU keep per-device BN "
                                "(train.sync_bn=false)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys: checkpoints interchange
        bn_mode = f"synchronized over the global batch ({global_batch} images)"
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.world > 1 else model
    # Linear scaling rule: the recipe's LR is quoted at global batch `lr_batch` (256 in the reference).
    peak_lr = cfg.optim.lr * global_batch / cfg.optim.lr_batch
    optimizer = make_optimizer(model, cfg.optim, peak_lr, device)
    # torch.compile traces the training forward/backward once (a minute or two for ResNet-50) and then runs fused
    # kernels; evaluation and precise BN keep the eager module (eval mode would be a second compilation).
    step_net = torch.compile(net) if cfg.train.compile else net
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    ema = EMA(model, cfg.train.ema, cfg.train.ema_warmup) if cfg.train.ema else None
    run.log(f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters; device {device}, "
            f"precision {precision}, {env.world} process(es); global batch {global_batch} = {cfg.data.batch_size} "
            f"x {env.world}; peak lr {peak_lr:g} = {cfg.optim.lr:g} x {global_batch}/{cfg.optim.lr_batch} (linear "
            f"scaling rule); BN statistics {bn_mode}")
    return Learner(model, step_net, optimizer, scaler, criterion, ema, peak_lr)


# --- Run folder and resume -----------------------------------------------------------------------------------

def start_or_resume(run: Run, resume: str | None, held: contextlib.ExitStack, force: bool = False) -> RunState:
    """Claim the run folder and, with `resume`, put the newest (or the given) checkpoint back into the learner.
    One writer per folder, and one run: rank 0 locks the folder (held until train() returns) and reads which run
    it holds; nothing in it changes until the resume checks have passed."""
    out, env = run.out, run.env
    folder = run_folder.claim(out, resume, env, held, force)  # force: take over a lock from another host
    state = RunState(folder["run_id"])
    if resume:
        found = run_folder.find_checkpoint(resume, run.ckpt_dir, env, folder["run_id"])
        results_held = [f for f in folder["held"] if f in run_folder.RUN_FILES]  # torn checkpoints alone hold nothing
        if found is None and results_held:
            raise folder_lock.LockError(
                f"--resume auto: {run.ckpt_dir} holds no whole checkpoint of this run, but {out} holds "
                f"{', '.join(results_held)}: nothing to continue from. Remove those files to start over, or "
                "choose another --out")
        if found is None:
            run.log(f"--resume auto: no checkpoint in {run.ckpt_dir}; starting from scratch")
        else:
            state = _restore(run, folder, *found)
    # The resume checks passed: only now does the folder take this run's identity and config.
    state.run_id = state.run_id or folder["new_id"]
    if env.is_main:
        if folder["run_id"] != state.run_id:
            checkpoint.write_atomic(out / "run.json", (json.dumps({"run_id": state.run_id}) + "\n").encode())
        save_config(run.cfg, out / "config.yaml", chosen_on=run.chosen_on)
        if run.overrides or run.changes:
            # At the step it takes effect, in the run's record (report and the resume logic skip "event" lines).
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"event": "resume", "at_epoch": state.start_epoch, "at_step": state.start_step,
                                    "overrides": run.overrides, "allowed_changes": run.changes,
                                    "hardware": run.facts}) + "\n")
    return state


def _restore(run: Run, folder: dict, path: Path, saved: dict) -> RunState:
    """The position checkpoint `path` holds, with weights, optimizer, RNG and an unfinished epoch's numbers put
    back; trims metrics.jsonl to it."""
    env, data, out = run.env, run.data, run.out
    run_id = folder["run_id"]
    if run_id is not None and saved.get("run_id") not in (None, run_id) and folder["held"]:
        raise checkpoint.CheckpointError(
            f"{path} belongs to run {saved['run_id']}, but {out} holds run {run_id} "
            f"({', '.join(folder['held'])}); resume it into its own folder or a new --out")
    state = RunState(run_id or saved.get("run_id"), saved["epoch"], saved["step"])
    saved_batch = saved.get("global_batch", data.global_batch)
    if state.start_step and saved_batch != data.global_batch:
        raise TrainingError(f"{path} was saved mid-epoch (step {state.start_step}) at global batch {saved_batch}; "
                            f"this run's global batch is {data.global_batch} = {run.cfg.data.batch_size} x "
                            f"{env.world}. Resume with the same global batch, or from an epoch-end checkpoint "
                            "(ckpt-EEEE-000000.pt)")
    _load_learner(run, path, saved)
    ranks = saved.get("ranks") or [{"rng": r} for r in saved["rng"]]  # "rng": before per-rank sums
    same_world = len(ranks) == env.world
    mine = ranks[env.rank] if same_world else ranks[0]
    checkpoint.set_rng_state(mine["rng"])
    if state.start_step and same_world:
        state.epoch_state = mine
    elif state.start_step:
        # Same global batch, another world size: the batches are the same (data/loader.py), so the sums
        # carry over whole; rank 0 takes them all, the others start at zero (the epoch total adds ranks).
        state.epoch_state = run_folder.merge_epoch_states(ranks) if env.is_main else None
    if env.is_main:
        run_folder.trim_metrics(out / "metrics.jsonl", state.start_epoch)
    logged = dist.broadcast_object(run_folder.logged_epochs(out / "metrics.jsonl") if env.is_main else None)
    if state.start_step == 0 and saved.get("epoch_record") and logged < state.start_epoch:
        state.pending_record = dict(saved["epoch_record"])
    run.log(f"resumed from {path} at epoch {state.start_epoch} step {state.start_step} (saved by {len(ranks)} "
            "process(es))")
    return state


def _load_learner(run: Run, path: Path, saved: dict) -> None:
    """Weights, optimizer, loss scaler and EMA from checkpoint `path`. A recipe value that differs from the run's
    is refused, one line listing the keys, unless --allow-change names each; an allowed one takes effect from here
    (the optimizer's hyperparameters included, which the saved param groups would otherwise bring back)."""
    learner = run.learner
    changed = _changes(run, saved.get("config", {}))
    refused = [k for k in changed if k not in run.allow_change]
    if refused:
        listed = "; ".join(f"{k}: {changed[k]['saved']!r} -> {changed[k]['now']!r}" for k in refused)
        raise checkpoint.CheckpointError(
            f"{path} was saved with another config ({listed}); resume with the run's own config "
            f"({run.out / 'config.yaml'}, left unchanged), or pass " + " ".join(f"--allow-change {k}" for k in refused)
            + " to change it from here on (recorded in metrics.jsonl), or start the new config in another --out")
    fresh = [{k: g[k] for k in ("momentum", "dampening", "nesterov", "weight_decay") if k in g}
             for g in learner.optimizer.param_groups]
    try:
        learner.model.load_state_dict(saved["model"])
        learner.optimizer.load_state_dict(saved["optimizer"])
        # A disabled GradScaler (fp32, bf16) saves {}: a run that now scales (fp16 after a precision override)
        # starts its loss scale afresh, and one that no longer scales has nothing to load.
        if saved.get("scaler") and learner.scaler.is_enabled():
            learner.scaler.load_state_dict(saved["scaler"])
        if learner.ema is not None and "ema" in saved:
            learner.ema.load_state_dict(saved["ema"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        listed = "; ".join(f"{k}: {v['saved']!r} -> {v['now']!r}" for k, v in changed.items())
        raise checkpoint.CheckpointError(
            f"{path} does not fit this config's model or optimizer ({first}); it was saved with "
            f"{listed or 'the same config'}. Resume with the config it was saved with "
            f"({run.out / 'config.yaml'}, left unchanged), or start the new config in another --out") from None
    for group, now in zip(learner.optimizer.param_groups, fresh):
        group.update(now)  # the config's momentum, nesterov and weight decay, not the checkpoint's
    for key, v in changed.items():
        run.log(f"allowed change (--allow-change {key}): {v['saved']!r} -> {v['now']!r}, in effect from this step")
    run.changes = changed
    if learner.ema is not None and "ema" not in saved:
        learner.ema = EMA(learner.model, run.cfg.train.ema, run.cfg.train.ema_warmup)
        run.log(f"warning: {path} holds no EMA state; the EMA restarts from the resumed weights")


def _changes(run: Run, saved_config: dict) -> dict:
    """key -> {saved, now} for each config value this resume changes, leaving out the hardware-made choices
    (start_processes settles those) and the keys that change how a run is watched, not what it trains."""
    out = {}
    for section, values in saved_config.items():
        now = run.cfg.to_dict().get(section, {})
        for key, old in values.items():
            name = f"{section}.{key}"
            if key in now and now[key] != old and name not in runtime.HARDWARE_KEYS and name not in run_folder.FREE_ON_RESUME:
                out[name] = {"saved": old, "now": now[key]}
    return out


def _finished_results(run: Run, state: RunState) -> dict | None:
    """A finished run (`make train` again, or --resume auto after the end) has nothing to train: its results.json,
    kept as it is rather than redoing precise BN and overwriting it with this call's timings."""
    data = run.data
    if state.start_epoch * data.steps_per_epoch + state.start_step < data.total_steps:
        return None
    done = dist.broadcast_object(json.loads((run.out / "results.json").read_text())
                                 if run.env.is_main and (run.out / "results.json").is_file() else None)
    if done is not None:
        split = done.get("headline", {}).get("split", "val")
        run.log(f"{run.out}: already trained for {data.epochs} epochs; results.json kept (top-1 error "
                f"{done['top1_err']:.2f}% on {split}, single centre view)" if "headline" in done else
                f"{run.out}: already trained for {data.epochs} epochs; results.json kept (top-1 error "
                f"{done['top1_err']:.2f}%)")
    return done


# --- Epochs --------------------------------------------------------------------------------------------------

def train_one_epoch(run: Run, state: RunState, epoch: int, stop: StopRequest, meeting: RankMeeting) -> EpochTally:
    """The steps of `epoch` from the first one not yet trained. A checkpoint is saved every
    train.checkpoint_every_steps, when rank 0's clock says train.checkpoint_interval_min has passed, and on a stop
    request, which ends the epoch (`stopped`) at the same step on every rank."""
    cfg, data, learner = run.cfg, run.data, run.learner
    epoch_steps = data.steps_in(epoch)
    resumed = epoch == state.start_epoch
    tally = EpochTally(run.device, state.start_step if resumed else 0,
                       train_image_size(cfg.data, epoch, data.stored),  # progressive resizing, else fixed
                       state.epoch_state if resumed else None)
    learner.model.train()
    jobs = data.train_jobs(epoch, epoch_steps, tally.size)[tally.step:]
    for x, y, bad in tally.timed(data.train_batches(jobs)):
        progress, total = schedule_position(cfg.schedule, epoch, tally.step, data.steps_per_epoch, data.total_steps)
        for group in learner.optimizer.param_groups:
            group["lr"] = learner.peak_lr * lr_factor(cfg.schedule, progress, total)
        loss, logits = train_step(learner.step_net, x, y, learner.criterion, learner.optimizer, learner.scaler,
                                  run.autocast)
        if learner.ema is not None:
            learner.ema.update(learner.model)
        tally.step += 1
        tally.sums.add(loss, logits, y, bad)
        tally.seen_log += len(y)
        step = tally.step
        log_now = step % cfg.train.log_interval == 0 or step == epoch_steps
        due = run.env.is_main and cfg.train.checkpoint_interval_min > 0 and \
            time.time() - state.last_ckpt_time >= 60 * cfg.train.checkpoint_interval_min
        # Between meetings (several ranks) no rank votes: nothing to log, no stop, no checkpoint at this step.
        loss_now, want_stop, want_ckpt = meeting(step, loss, bool(stop), due, log_now, run.env.is_main) or \
            (None, False, False)
        if log_now:
            _log_step(run, tally, epoch, epoch_steps, loss_now)
        every = cfg.train.checkpoint_every_steps
        if want_stop or want_ckpt or (every and step % every == 0 and step < epoch_steps):
            save(run, state, epoch, step, tally, tally.elapsed())
            if want_stop:
                why = f"signal {signal.Signals(stop.signum).name}" if stop else "a stop signal on another rank"
                run.log(f"{why}: checkpoint saved at epoch {epoch} step {step}; exiting. To continue, run the same "
                        f"command with --resume auto, e.g. resnet-repro train --config {run.out / 'config.yaml'} "
                        f"--out {run.out} --resume auto (under torchrun: the same torchrun line plus --resume auto)",
                        flush=True)
                tally.stopped = True
                break
    return tally


def _log_step(run: Run, tally: EpochTally, epoch: int, epoch_steps: int, loss: float) -> None:
    """The human line of one log interval (and its TensorBoard points); a non-finite loss ends the run here."""
    data, lr, step = run.data, run.learner.lr, tally.step
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite loss {loss} at epoch {epoch} step {step}; the newest good checkpoint, "
                            f"{_newest(run.ckpt_dir)}, is kept (lower the LR or check the data, then --resume auto)")
    now = time.time()
    rate = tally.seen_log * run.env.world / (now - tally.t_log)
    done = epoch * data.steps_per_epoch + step
    eta = (data.total_steps - done) * data.global_batch / rate
    if run.tb is not None:
        run.tb.add_scalar("train/loss_step", loss, done)
        run.tb.add_scalar("train/lr", lr, done)
    run.log(f"epoch {epoch + 1}/{data.epochs} step {step}/{epoch_steps} lr {lr:.4g} loss {loss:.4f} {rate:,.0f} "
            f"img/s data-wait {100 * (tally.wait - tally.wait_log) / (now - tally.t_log):.0f}% ETA {_fmt_time(eta)}",
            flush=True)
    tally.t_log, tally.wait_log, tally.seen_log = now, tally.wait, 0


def end_epoch(run: Run, state: RunState, epoch: int, tally: EpochTally) -> dict:
    """The trained epoch's record (training numbers summed over ranks), checkpointed before its evaluation: a val
    pass that fails (or is killed) costs no training."""
    learner, epoch_steps = run.learner, run.data.steps_in(epoch)
    seconds = tally.elapsed()
    loss_sum, correct, n, bad = tally.sums.total()
    if not math.isfinite(loss_sum):
        raise TrainingError(f"non-finite loss in epoch {epoch}; the newest good checkpoint, {_newest(run.ckpt_dir)}, "
                            "is kept (lower the LR or check the data, then --resume auto)")
    # Every rank evaluates (and the checkpoint stores) rank 0's BN statistics; see dist.broadcast_buffers.
    dist.broadcast_buffers(learner.model)
    if learner.ema is not None:
        dist.broadcast_buffers(learner.ema.module)
    record = {"epoch": epoch + 1, "lr": learner.lr, "train_loss": loss_sum / max(n, 1),
              "train_top1_err": 100 * (1 - correct / max(n, 1)), "images_per_s": n / seconds,
              "data_wait_fraction": tally.wait / seconds, "seconds": seconds, "bad_samples": int(bad),
              "image_size": tally.size}
    if epoch_steps < run.data.steps_per_epoch:
        # The last epoch, cut short by train.max_steps, is saved as the mid-epoch position it is, so that
        # a resume with a larger train.max_steps runs the rest of this epoch instead of skipping it.
        save(run, state, epoch, epoch_steps, tally, seconds, record=record)
    else:
        save(run, state, epoch + 1, 0, record=record)
    return record


def finish_epoch(run: Run, record: dict) -> None:
    """Evaluate (when due) and log an epoch whose checkpoint is already saved: a failure here loses no
    training, and a resume from that checkpoint comes back here first (RunState.pending_record)."""
    cfg, learner = run.cfg, run.learner
    if record["epoch"] % cfg.train.eval_every == 0 or record["epoch"] == run.data.epochs:
        val = _evaluate(run, learner.model)
        record.update(val_top1_err=val["top1_err"], val_top5_err=val["top5_err"], val_loss=val["loss"],
                      val_bad_samples=val["bad"], **_single_view(val, "val_"))
        if not run.data.val_held_out:
            record["val_held_out"] = False  # data.train_splits includes val: a fit figure, not a held-out one
        if learner.ema is not None:
            val = _evaluate(run, learner.ema.module)
            record.update(ema_val_top1_err=val["top1_err"], ema_val_top5_err=val["top5_err"],
                          ema_val_loss=val["loss"])
    run.log(json.dumps(record))
    if run.env.is_main:
        with open(run.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    if run.tb is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                run.tb.add_scalar(f"epoch/{key}", value, record["epoch"])
        run.tb.flush()


def _evaluate(run: Run, module: nn.Module) -> dict:
    """`module` (the model or its EMA) over the whole val split, every rank its share (evaluate/val_pass.py)."""
    return evaluate(module, run.data.val_batches(), run.device, run.autocast,
                    mirror=run.cfg.train.eval_protocol == "flip")


def _single_view(val: dict, prefix: str) -> dict:
    """With train.eval_protocol: flip, the single view's errors under `prefix` (nothing otherwise)."""
    return {f"{prefix}{k}": val[k] for k in ("top1_err_single", "top5_err_single") if k in val}


# --- Checkpoints ---------------------------------------------------------------------------------------------

def save(run: Run, state: RunState, epoch: int, step: int, tally: EpochTally | None = None, seconds: float = 0.0,
         record: dict | None = None) -> None:
    """Checkpoint (epoch, step): the next step to run. Collective: every rank calls it at the same step.
    `tally`, `seconds`: an unfinished epoch's numbers so far; `record`: the finished epoch's training numbers,
    for a resume to evaluate and log it if need be."""
    learner, data, env = run.learner, run.data, run.env
    # A diverged state must never become the newest checkpoint: every rank checks its weights and loss sums.
    finite = torch.stack([p.detach().isfinite().all() for p in learner.model.parameters()]).all()
    if tally is not None:
        finite = finite & tally.sums.sums.isfinite().all()
    if dist.all_reduce_sum((~finite).float().view(1)).item():
        raise TrainingError(f"non-finite weights or loss at epoch {epoch} step {step}; nothing saved, the newest "
                            f"good checkpoint is {_newest(run.ckpt_dir)} (lower the LR or check the data, then "
                            "--resume auto)")
    ranks = dist.all_gather_object({"rng": checkpoint.rng_state(), "seconds": seconds,
                                    "wait": tally.wait if tally is not None else 0.0,
                                    "sums": tally.sums.state_dict() if tally is not None else None})
    if env.is_main:
        saved = {**_model_file(run, epoch, step), "optimizer": learner.optimizer.state_dict(),
                 "scaler": learner.scaler.state_dict(), "run_id": state.run_id, "steps_per_epoch": data.steps_per_epoch,
                 "global_batch": data.global_batch, "world": env.world, "lr": learner.lr, "ranks": ranks,
                 "hardware": run.facts}
        if learner.ema is not None:
            saved["ema"] = learner.ema.state_dict()
        if record is not None:
            saved["epoch_record"] = record
        checkpoint.save(run.ckpt_dir, saved, epoch, step, keep=run.cfg.train.keep_checkpoints)
    dist.barrier()
    state.last_ckpt_time = time.time()


def _model_file(run: Run, epoch: int, step: int) -> dict:
    """What every checkpoint and final.pt hold: the weights, at (epoch, step), with what `evaluate`, `predict` and
    a resume need to rebuild the model."""
    manifest = run.data.manifest
    return {"model": run.learner.model.state_dict(), "epoch": epoch, "step": step, "config": run.cfg.to_dict(),
            "chosen_on": run.chosen_on, "version": __version__, "classes": manifest["classes"],
            "class_names": manifest.get("class_names", manifest["classes"]), "in_channels": run.data.channels}


# --- Precise BN, final evaluation, results -------------------------------------------------------------------

def finish(run: Run, state: RunState, stop: StopRequest, t_start: float) -> dict:
    """Precise BN and the final evaluation of the model (and of its EMA) on val, then the one scoring of the test
    split (where the data set has one), results.json and the weights files."""
    cfg, data, learner, log = run.cfg, run.data, run.learner, run.log
    # A stop signal from here on is not acted on: every step is trained and checkpointed, and what is left
    # (precise BN, evaluation, final files) is minutes at most; say so rather than ignore it silently.
    said = []

    def note_stop() -> None:
        if stop and not said:
            said.append(True)
            log(f"signal {signal.Signals(stop.signum).name} during the final precise BN / evaluation: finishing "
                f"them rather than stopping (training is complete and checkpointed in {run.ckpt_dir}; if the process "
                "is killed anyway, the same command with --resume auto redoes only this last part)", flush=True)

    train_wall = time.time() - t_start
    n_bn = cfg.train.precise_bn_batches
    before, after, used = _with_precise_bn(run, learner.model)
    if n_bn > 0:
        log(f"precise BN over {used} batches x {data.global_batch}: val top-1 error {before['top1_err']:.2f}% -> "
            f"{after['top1_err']:.2f}%" + (f" (centre + mirror; the centre view alone: {after['top1_err_single']:.2f}%)"
                                           if "top1_err_single" in after else ""))
    note_stop()
    ema_results = {}
    if learner.ema is not None:
        # The averaged weights get their own exact BN statistics (see ema.py), from the same batches.
        ema_before, ema_after, _ = _with_precise_bn(run, learner.ema.module)
        ema_results = {"ema_decay": cfg.train.ema, "ema_top1_err": ema_after["top1_err"],
                       "ema_top5_err": ema_after["top5_err"], "ema_top1_err_before_precise_bn": ema_before["top1_err"]}
        log(f"EMA weights (decay {cfg.train.ema:g}): val top-1 error {ema_before['top1_err']:.2f}% -> "
            f"{ema_after['top1_err']:.2f}% after precise BN")
    # The test split, scored once, here: after precise BN, with the recipe's protocol (and the single view).
    test = _score_test(run)
    note_stop()
    trained_steps = data.total_steps - state.start_epoch * data.steps_per_epoch - state.start_step
    val = {"split": cfg.data.val_split, "held_out": data.val_held_out, "images": after["count"],
           **_by_protocol(after), "before_precise_bn": _by_protocol(before)}
    head_split, head = (data.test_split, test) if test is not None else (cfg.data.val_split, after)
    single = _by_protocol(head)["single"]
    results = {"model": cfg.model.name, "dataset": data.manifest.get("dataset"), "epochs": data.epochs,
               # The headline: the single centre view on the test split (on val where the data set has no test
               # split), as the seed and the data sets' benchmarks report; other protocols are extra entries.
               "top1_err": single["top1_err"], "top5_err": single["top5_err"],
               "headline": {"split": head_split, "protocol": "single", "images": head["count"],
                            "held_out": True if test is not None else data.val_held_out},
               "val": val, **({"test": {"split": data.test_split, "images": test["count"], **_by_protocol(test)}}
                              if test is not None else {}),
               "precise_bn_batches": n_bn, "val_count": after["count"],
               **({"test_count": test["count"]} if test is not None else {}), "wall_s": time.time() - t_start,
               "train_wall_s": train_wall, "steps": data.total_steps,
               "images_per_s": trained_steps * data.global_batch / train_wall,
               "device": str(run.device), "precision": run.precision, "world_size": run.env.world,
               "version": __version__, "val_bad_samples": after["bad"], "eval_protocol": cfg.train.eval_protocol,
               "train_splits": list(cfg.data.train_splits), **ema_results}
    log(_headline_line(results))
    note_stop()
    if run.env.is_main:
        _write_results(run, results)
    if run.tb is not None:
        run.tb.close()
    dist.barrier()  # every rank done with the files before the group closes (train() closes it)
    return results


def _score_test(run: Run) -> dict | None:
    """The model on the test split (None where the data set has none), with the recipe's protocol: the one time
    a run reads the test split. Its reader and loader are built here, not in open_data."""
    data = run.data
    if data.test_split is None:
        return None
    reader = open_reader(run.cfg.data.path, data.test_split, run.cfg.data.cache_dir)
    dataset = BatchDataset(reader, data.val_ds.geometry, data.channels, run.cfg.train.seed, train=False)
    return evaluate(run.learner.model, data.val_batches(dataset), run.device, run.autocast,
                    mirror=run.cfg.train.eval_protocol == "flip")


def _by_protocol(scored: dict) -> dict:
    """One evaluation's errors per protocol, the single centre view first: {"single": {...}[, "flip": {...}]}."""
    if "top1_err_single" not in scored:
        return {"single": {k: scored[k] for k in ("top1_err", "top5_err", "loss")}}
    return {"single": {"top1_err": scored["top1_err_single"], "top5_err": scored["top5_err_single"]},
            "flip": {k: scored[k] for k in ("top1_err", "top5_err", "loss")}}


def _headline_line(results: dict) -> str:
    """The closing log line: the headline (single centre view, test split) first, then the extra rows."""
    head = results["headline"]
    out = (f"headline: {head['split']} split ({head['images']} images), single centre view: top-1 error "
           f"{results['top1_err']:.2f}%, top-5 {results['top5_err']:.2f}%")
    if not head["held_out"]:
        out += " (NOT held out: the split was trained on)"
    for name in ("test", "val"):
        block = results.get(name)
        if block is None:
            continue
        extra = [f"{p} {block[p]['top1_err']:.2f}%" for p in ("single", "flip") if p in block
                 and not (name == head["split"] and p == "single")]
        if extra:
            label = name if block.get("held_out", True) else f"{name}, not held out"
            out += f"; {label}: " + ", ".join(extra)
    return out


def _with_precise_bn(run: Run, module: nn.Module) -> tuple[dict, dict, int]:
    """(val numbers before, after, batches used): precise BN of `module` over the first train.precise_bn_batches
    batches of the epoch after the last, the same batches for the model and its EMA (none: after = before)."""
    n_bn = run.cfg.train.precise_bn_batches
    before = _evaluate(run, module)
    if n_bn <= 0:
        return before, before, 0
    bn_batches = run.data.train_batches(run.data.train_jobs(run.data.epochs, n_bn))
    used = update_bn_stats(module, bn_batches, n_bn, run.autocast)
    return before, _evaluate(run, module), used


def _write_results(run: Run, results: dict) -> None:
    """Rank 0's final files: the weights (safetensors, and final.pt for `evaluate` and `predict`) and results.json."""
    from .export import save_safetensors

    cfg, learner, classes = run.cfg, run.learner, run.data.manifest["classes"]
    save_safetensors(learner.model, run.out / "model.safetensors", {"model": cfg.model.name, "classes": classes})
    if learner.ema is not None:
        save_safetensors(learner.ema.module, run.out / "model_ema.safetensors",
                         {"model": cfg.model.name, "classes": classes, "ema_decay": cfg.train.ema})
    # Final weights (after precise BN).
    checkpoint.save_file(run.out / "final.pt", {**_model_file(run, run.data.epochs, 0),
                                                **({"model_ema": learner.ema.module.state_dict()}
                                                   if learner.ema is not None else {})})
    checkpoint.write_atomic(run.out / "results.json", json.dumps(results, indent=1).encode())
    run.log(json.dumps(results))


def _newest(ckpt_dir: Path) -> str:
    found = checkpoint.list_checkpoints(ckpt_dir)
    return str(found[-1]) if found else f"(none yet in {ckpt_dir})"


def _tensorboard(logdir: Path):
    """A TensorBoard SummaryWriter (optional: `train.tensorboard: true`); metrics.jsonl stays the record."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TrainingError(f"train.tensorboard is on but TensorBoard cannot be imported ({e}); "
                            "pip install tensorboard, or set train.tensorboard=false") from None
    return SummaryWriter(str(logdir))


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
