"""Training, read top to bottom: data -> model -> optimizer -> epochs -> precise BN -> evaluation -> results.

One process::

    resnet-repro train --config configs/fashion_mnist/resnet20.yaml --out runs/fm

One node with 8 GPUs (per-device batch x 8 = global batch)::

    torchrun --nproc-per-node 8 -m resnet_repro train --config configs/imagenet/resnet50_seed.yaml --out runs/r50

Several nodes: the same on every node with ``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT``.

Files in RUN_DIR (rank 0 writes): config.yaml (resolved), metrics.jsonl (one object per epoch),
checkpoints/ (complete state, see checkpoint.py), results.json and model.safetensors at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__, checkpoint, dist, folder_lock, runtime
from .config import Config, ConfigError, save_config
from .data.augment import DeviceTransform, EvalGeometry, TrainGeometry
from .data.cores import available_cpus, pin_trainer, plan_cores, unpin_trainer
from .data.loader import BatchDataset, DevicePrefetcher, Job, eval_batch_indices, make_loader, train_batch_indices
from .data.records import RecordReader
from .evaluate import eval_transform, evaluate, topk_correct
from .models.resnet import build_model
from .ema import EMA
from .precise_bn import update_bn_stats
from .schedule import lr_factor, schedule_position, train_image_size


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


class StopRequest:
    """SIGTERM / SIGUSR1 (cluster preemption) and SIGINT (Ctrl-C) ask the loop to checkpoint and exit cleanly
    (exit status 0); a second Ctrl-C interrupts at once, for a user who would rather not wait for the save.

    One process reads the flag after every step; several ranks agree on it at their meetings (`RankMeeting`):
    a signal can reach ranks at different steps, and a rank that checkpoints while another trains on would
    deadlock DDP."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        """Give the signals back to whoever had them (a caller of train() in a notebook or a test runner)."""
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __bool__(self):
        return self.signum is not None


class RankMeeting:
    """The ranks' meeting point: one small all-reduce that carries the loss to log (at log steps), any rank's stop
    request and rank 0's checkpoint clock, so every rank makes the same decision at the same step.

    Meetings fall every `period` steps, and rank 0 re-chooses the period at each one so that they are about
    `SECONDS` apart whatever a step costs: a stop then acts within a few seconds on every rank (clusters often
    grant 30 s between SIGTERM and SIGKILL), while a fast GPU step does not wait on the host every step. The
    period travels in the all-reduce, so all ranks always agree on where the next meeting is. One process needs
    no meeting: it reads its own flag after every step, and reads the loss only at log steps."""

    SECONDS = 2.0

    def __init__(self, world: int, device: torch.device, log_interval: int):
        self.world, self.device, self.log_interval = world, device, log_interval
        self.period, self.t_last, self.step_last = 1, time.time(), 0

    def __call__(self, step: int, loss: torch.Tensor, stop: bool, due: bool, log_now: bool, is_main: bool):
        """(loss averaged over ranks or None, stop, checkpoint) after `step`; None when no meeting is due."""
        if self.world == 1:
            return (loss.item() if log_now else None), stop, due
        if not log_now and step % self.period:
            return None
        proposal = 0.0
        if is_main:
            now = time.time()
            per_step = (now - self.t_last) / max(step - self.step_last, 1)
            proposal = float(min(max(int(self.SECONDS / max(per_step, 1e-6)), 1), self.log_interval))
            self.t_last, self.step_last = now, step
        votes = torch.tensor([float(stop), float(due), proposal], device=self.device)
        meet = dist.all_reduce_sum(torch.cat([loss.float().view(1) if log_now else votes.new_zeros(1), votes]))
        loss_sum, stop_votes, due_votes, period = meet.tolist()
        self.period = int(period)
        return (loss_sum / self.world if log_now else None), stop_votes > 0, due_votes > 0


def train(cfg: Config, out: Path, resume: str | None = None) -> dict:
    """`resnet-repro train`: the run `cfg` describes, into `out` (resume: None, "auto" or a checkpoint path)."""
    try:
        # Holds the run folder's lock (rank 0) until the last file is written, however the run ends.
        with contextlib.ExitStack() as held:
            return _train(cfg, Path(out), resume, held)
    finally:
        # Errors included: a gloo group left to the interpreter's exit-time destructors can abort the process
        # ("terminate called without an active exception"), burying the error message under a SIGABRT.
        dist.shutdown()


def _train(cfg: Config, out: Path, resume: str | None, held: contextlib.ExitStack) -> dict:
    t_start = time.time()

    # --- Processes, device and precision (runtime.py: chosen from the hardware, with the reason logged) -------
    hw = runtime.detect()
    env = dist.init(runtime.device_type(cfg.train.device, hw))
    device = runtime.pick_device(cfg.train.device, env.local_rank, hw)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    log = print if env.is_main else (lambda *a, **k: None)
    chosen = runtime.choose_precision(cfg.train.precision, device.type, hw, device.index or 0)
    autocast, precision = runtime.autocast_for(chosen.value, device)
    channels_last = runtime.choose_channels_last(cfg.train.channels_last, device.type)
    log(f"precision {precision} ({chosen.reason}); memory format {'channels_last' if channels_last.value else 'NCHW'} "
        f"({channels_last.reason})" + (f"; recipe profile {cfg.train.profile}" if cfg.train.profile != "auto" else ""),
        flush=True)
    if chosen.warning:
        log(f"warning: {chosen.warning}", flush=True)

    # --- Data -------------------------------------------------------------------------------------------
    train_reader = RecordReader(cfg.data.path, cfg.data.train_split)
    val_reader = RecordReader(cfg.data.path, cfg.data.val_split)
    manifest = train_reader.manifest
    channels = manifest["image"]["channels"]
    stored = manifest["image"]["height"]
    if cfg.model.num_classes and cfg.model.num_classes != len(manifest["classes"]):
        raise ConfigError(f"config key 'model.num_classes' is {cfg.model.num_classes}, but {cfg.data.path} has "
                          f"{len(manifest['classes'])} classes (manifest.json); set model.num_classes=0 to take "
                          "the data's count")
    if cfg.model.in_channels and cfg.model.in_channels != channels:
        raise ConfigError(f"config key 'model.in_channels' is {cfg.model.in_channels}, but {cfg.data.path} holds "
                          f"{channels}-channel images (manifest.json); set model.in_channels=0 to take the data's")
    num_classes = cfg.model.num_classes or len(manifest["classes"])
    train_ds = BatchDataset(train_reader, TrainGeometry(cfg.data, stored), channels, cfg.train.seed, train=True)
    val_ds = BatchDataset(val_reader, EvalGeometry(cfg.data, stored), channels, cfg.train.seed, train=False)
    to_device = DeviceTransform(cfg.data, channels, device, channels_last.value)
    train_transform = to_device
    # Val batches get normalization only: colour distortion and lighting noise are training augmentation (and
    # val workers draw no colour parameters for them).
    val_transform = eval_transform(cfg.data, channels, device, channels_last.value)
    if cfg.data.decode == "gpu":
        # Workers ship JPEG bytes and the CPU path's crop boxes; the batch is decoded (nvJPEG) and resized on the
        # GPU, then takes the same DeviceTransform (data/gpu_decode.py). Val stays on the CPU path.
        from .data.gpu_decode import EncodedBatchDataset, GpuDecoder

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
    pin = device.type == "cuda"
    # Worker count and core layout (data/cores.py): on a GPU the trainer's threads keep cores of their own.
    local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), env.local_rank + 1)  # torchrun sets it
    core_plan = plan_cores(available_cpus(), cfg.data.workers, device.type, env.local_rank, local_world)
    log(f"data loading: {core_plan.describe()}")

    def batches(ds, jobs, workers):
        loader = make_loader(ds, jobs, workers, pin, core_plan)
        if ds is train_ds and cfg.data.decode == "gpu":  # decoded a batch ahead on a side stream (gpu_decode.py)
            from .data.gpu_decode import decode_ahead

            return decode_ahead(loader, train_transform)
        return DevicePrefetcher(loader, device, train_transform if ds is train_ds else val_transform)

    def val_batches():
        jobs = [Job(0, s, idx) for s, idx in
                enumerate(eval_batch_indices(len(val_reader), cfg.data.eval_batch_size, env.rank, env.world))]
        return batches(val_ds, jobs, core_plan.workers)

    # --- Model and optimizer ----------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    memory_format = torch.channels_last if channels_last.value else torch.contiguous_format
    model = build_model(cfg.model.name, num_classes, cfg.model.in_channels or channels,
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
    log(f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters; device {device}, "
        f"precision {precision}, {env.world} process(es); global batch {global_batch} = {cfg.data.batch_size} x "
        f"{env.world}; peak lr {peak_lr:g} = {cfg.optim.lr:g} x {global_batch}/{cfg.optim.lr_batch} (linear scaling "
        f"rule); BN statistics {bn_mode}")

    # --- Run folder and resume --------------------------------------------------------------------------
    # One writer per folder, and one run: rank 0 locks the folder (held until train() returns) and reads
    # which run it holds; nothing in it changes until the resume checks below have passed.
    ckpt_dir = out / "checkpoints"
    folder = _claim_run_folder(out, resume, env, held)
    run_id = folder["run_id"]
    start_epoch, start_step = 0, 0
    epoch_state = None  # this rank's saved metric sums and timings of an unfinished epoch
    pending_record = None  # an epoch whose checkpoint was saved but whose evaluation and log line were not
    if resume:
        found = _find_checkpoint(resume, ckpt_dir, env, run_id)
        results_held = [f for f in folder["held"] if f in RUN_FILES]  # torn checkpoints alone hold nothing
        if found is None and results_held:
            raise folder_lock.LockError(
                f"--resume auto: {ckpt_dir} holds no whole checkpoint of this run, but {out} holds "
                f"{', '.join(results_held)}: nothing to continue from. Remove those files to start over, or "
                "choose another --out")
        if found is None:
            log(f"--resume auto: no checkpoint in {ckpt_dir}; starting from scratch")
        else:
            path, state = found
            if run_id is not None and state.get("run_id") not in (None, run_id) and folder["held"]:
                raise checkpoint.CheckpointError(
                    f"{path} belongs to run {state['run_id']}, but {out} holds run {run_id} "
                    f"({', '.join(folder['held'])}); resume it into its own folder or a new --out")
            run_id = run_id or state.get("run_id")
            start_epoch, start_step = state["epoch"], state["step"]
            saved_batch = state.get("global_batch", global_batch)
            if start_step and saved_batch != global_batch:
                raise TrainingError(f"{path} was saved mid-epoch (step {start_step}) at global batch {saved_batch}; "
                                    f"this run's global batch is {global_batch} = {cfg.data.batch_size} x {env.world}. "
                                    "Resume with the same global batch, or from an epoch-end checkpoint "
                                    "(ckpt-EEEE-000000.pt)")
            changed = _config_changes(state.get("config", {}), cfg.to_dict())
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
                if ema is not None and "ema" in state:
                    ema.load_state_dict(state["ema"])
            except (RuntimeError, ValueError, KeyError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                raise checkpoint.CheckpointError(
                    f"{path} does not fit this config's model or optimizer ({first}); it was saved with "
                    f"{'; '.join(changed) or 'the same config'}. Resume with the config it was saved with "
                    f"({out / 'config.yaml'}, left unchanged), or start the new config in another --out") from None
            if changed:
                log(f"warning: {path} was saved with a different config: {'; '.join(changed)}")
            if ema is not None and "ema" not in state:
                ema = EMA(model, cfg.train.ema, cfg.train.ema_warmup)
                log(f"warning: {path} holds no EMA state; the EMA restarts from the resumed weights")
            ranks = state.get("ranks") or [{"rng": r} for r in state["rng"]]  # "rng": before per-rank sums
            same_world = len(ranks) == env.world
            mine = ranks[env.rank] if same_world else ranks[0]
            checkpoint.set_rng_state(mine["rng"])
            if start_step and same_world:
                epoch_state = mine
            elif start_step:
                # Same global batch, another world size: the batches are the same (data/loader.py), so the sums
                # carry over whole; rank 0 takes them all, the others start at zero (the epoch total adds ranks).
                epoch_state = _merge_epoch_states(ranks) if env.is_main else None
            if env.is_main:
                _trim_metrics(out / "metrics.jsonl", start_epoch)
            logged = dist.broadcast_object(_logged_epochs(out / "metrics.jsonl") if env.is_main else None)
            if start_step == 0 and state.get("epoch_record") and logged < start_epoch:
                pending_record = dict(state["epoch_record"])
            log(f"resumed from {path} at epoch {start_epoch} step {start_step} (saved by {len(ranks)} process(es))")
    # The resume checks passed: only now does the folder take this run's identity and config.
    run_id = run_id or folder["new_id"]
    if env.is_main:
        if folder["run_id"] != run_id:
            checkpoint.write_atomic(out / "run.json", (json.dumps({"run_id": run_id}) + "\n").encode())
        tmp = out / "config.yaml.tmp"
        save_config(cfg, tmp)
        os.replace(tmp, out / "config.yaml")
    if start_epoch * steps_per_epoch + start_step >= total_steps:
        # A finished run (`make train` again, or --resume auto after the end): nothing to train. Keep its
        # results.json as it is, rather than redoing precise BN and overwriting it with this call's timings.
        done = dist.broadcast_object(json.loads((out / "results.json").read_text())
                                     if env.is_main and (out / "results.json").is_file() else None)
        if done is not None:
            log(f"{out}: already trained for {epochs} epochs; results.json kept (top-1 error {done['top1_err']:.2f}%)")
            return done

    def save_checkpoint(epoch: int, step: int, sums: RunningSums | None = None, seconds: float = 0.0,
                        wait: float = 0.0, record: dict | None = None) -> None:
        """Checkpoint (epoch, step): the next step to run. Collective: every rank calls it at the same step.
        `record`: the finished epoch's training numbers, for a resume to evaluate and log it if need be."""
        # A diverged state must never become the newest checkpoint: every rank checks its weights and loss sums.
        finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
        if sums is not None:
            finite = finite & sums.sums.isfinite().all()
        if dist.all_reduce_sum((~finite).float().view(1)).item():
            raise TrainingError(f"non-finite weights or loss at epoch {epoch} step {step}; nothing saved, the newest "
                                f"good checkpoint is {_newest(ckpt_dir)} (lower the LR or check the data, then "
                                "--resume auto)")
        ranks = dist.all_gather_object({"rng": checkpoint.rng_state(), "seconds": seconds, "wait": wait,
                                        "sums": sums.state_dict() if sums is not None else None})
        if env.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "run_id": run_id, "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                     "global_batch": global_batch, "world": env.world, "lr": optimizer.param_groups[0]["lr"], "ranks": ranks,
                     "config": cfg.to_dict(), "version": __version__, "classes": manifest["classes"],
                     "class_names": manifest.get("class_names", manifest["classes"]), "in_channels": channels}
            if ema is not None:
                state["ema"] = ema.state_dict()
            if record is not None:
                state["epoch_record"] = record
            checkpoint.save(ckpt_dir, state, epoch, step, keep=cfg.train.keep_checkpoints)
        dist.barrier()

    def finish_epoch(record: dict) -> None:
        """Evaluate (when due) and log an epoch whose checkpoint is already saved: a failure here loses no
        training, and a resume from that checkpoint comes back here first (pending_record)."""
        if record["epoch"] % cfg.train.eval_every == 0 or record["epoch"] == epochs:
            val = evaluate(model, val_batches(), device, autocast)
            record.update(val_top1_err=val["top1_err"], val_top5_err=val["top5_err"], val_loss=val["loss"],
                          val_bad_samples=val["bad"])
            if ema is not None:
                val = evaluate(ema.module, val_batches(), device, autocast)
                record.update(ema_val_top1_err=val["top1_err"], ema_val_top5_err=val["top5_err"],
                              ema_val_loss=val["loss"])
        log(json.dumps(record))
        if env.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if tb is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    tb.add_scalar(f"epoch/{key}", value, record["epoch"])
            tb.flush()

    # --- Epochs -----------------------------------------------------------------------------------------
    # This thread and those it starts (pin-memory, decode-ahead) on the trainer's cores; given back however the run
    # ends (in-process callers). Workers move to theirs in their init.
    held.callback(unpin_trainer, pin_trainer(core_plan))
    stop = StopRequest()
    held.callback(stop.restore)  # however the run ends
    meeting = RankMeeting(env.world, device, cfg.train.log_interval)
    last_ckpt_time = time.time()
    metrics_path = out / "metrics.jsonl"
    tb = _tensorboard(out / "tensorboard") if cfg.train.tensorboard and env.is_main else None
    if pending_record is not None:
        log(f"epoch {pending_record['epoch']} was checkpointed but not evaluated and logged: doing that first")
        finish_epoch(pending_record)
    for epoch in range(start_epoch, epochs):
        size = train_image_size(cfg.data, epoch, stored)  # progressive resizing, else fixed
        epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)  # the last may be partial
        jobs = [Job(epoch, s, idx, size) for s, idx in enumerate(
            train_batch_indices(len(train_reader), cfg.data.batch_size, cfg.train.seed, epoch, env.rank,
                                env.world)[:epoch_steps])]
        first = start_step if epoch == start_epoch else 0
        model.train()
        sums = RunningSums(device)  # no host sync per step
        t_epoch = t_log = time.time()
        wait = wait_log = 0.0
        if epoch == start_epoch and epoch_state is not None:  # resumed mid-epoch: the epoch's numbers go on
            sums.load_state_dict(epoch_state["sums"])
            t_epoch -= epoch_state["seconds"]
            wait = wait_log = epoch_state["wait"]
        want_stop = want_ckpt = False
        seen_log = 0
        step = first
        it = iter(batches(train_ds, jobs[first:], core_plan.workers))
        while True:
            t0 = time.time()
            try:
                x, y, bad = next(it)
            except StopIteration:
                break
            wait += time.time() - t0
            progress, total = schedule_position(cfg.schedule, epoch, step, steps_per_epoch, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = peak_lr * lr_factor(cfg.schedule, progress, total)
            loss, logits = train_step(step_net, x, y, criterion, optimizer, scaler, autocast)
            if ema is not None:
                ema.update(model)
            step += 1
            sums.add(loss, logits, y, bad)
            seen_log += len(y)
            log_now = step % cfg.train.log_interval == 0 or step == epoch_steps
            due = env.is_main and cfg.train.checkpoint_interval_min > 0 and \
                time.time() - last_ckpt_time >= 60 * cfg.train.checkpoint_interval_min
            met = meeting(step, loss, bool(stop), due, log_now, env.is_main)
            if met is not None:
                loss_now, want_stop, want_ckpt = met
            if log_now:
                if not math.isfinite(loss_now):
                    raise TrainingError(f"non-finite loss {loss_now} at epoch {epoch} step {step}; the newest good "
                                        f"checkpoint, {_newest(ckpt_dir)}, is kept (lower the LR or check the data, "
                                        "then --resume auto)")
                now = time.time()
                rate = seen_log * env.world / (now - t_log)
                done = epoch * steps_per_epoch + step
                eta = (total_steps - done) * global_batch / rate
                if tb is not None:
                    tb.add_scalar("train/loss_step", loss_now, done)
                    tb.add_scalar("train/lr", optimizer.param_groups[0]["lr"], done)
                log(f"epoch {epoch + 1}/{epochs} step {step}/{epoch_steps} lr {optimizer.param_groups[0]['lr']:.4g} "
                    f"loss {loss_now:.4f} {rate:,.0f} img/s data-wait {100 * (wait - wait_log) / (now - t_log):.0f}% "
                    f"ETA {_fmt_time(eta)}", flush=True)
                t_log, wait_log, seen_log = now, wait, 0
            every = cfg.train.checkpoint_every_steps
            if want_stop or want_ckpt or (every and step % every == 0 and step < epoch_steps):
                save_checkpoint(epoch, step, sums, time.time() - t_epoch, wait)
                last_ckpt_time = time.time()
                want_ckpt = False
                if want_stop:
                    why = f"signal {signal.Signals(stop.signum).name}" if stop else "a stop signal on another rank"
                    log(f"{why}: checkpoint saved at epoch {epoch} step {step}; exiting. To continue, run the same "
                        f"command with --resume auto, e.g. resnet-repro train --config {out / 'config.yaml'} "
                        f"--out {out} --resume auto (under torchrun: the same torchrun line plus --resume auto)",
                        flush=True)
                    return {"stopped": True, "epoch": epoch, "step": step}
        seconds = time.time() - t_epoch
        loss_sum, correct, n, bad = sums.total()
        if not math.isfinite(loss_sum):
            raise TrainingError(f"non-finite loss in epoch {epoch}; the newest good checkpoint, {_newest(ckpt_dir)}, "
                                "is kept (lower the LR or check the data, then --resume auto)")
        # Every rank evaluates (and the checkpoint stores) rank 0's BN statistics; see dist.broadcast_buffers.
        dist.broadcast_buffers(model)
        if ema is not None:
            dist.broadcast_buffers(ema.module)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(n, 1),
                  "train_top1_err": 100 * (1 - correct / max(n, 1)), "images_per_s": n / seconds,
                  "data_wait_fraction": wait / seconds, "seconds": seconds, "bad_samples": int(bad),
                  "image_size": size}
        # The checkpoint before the evaluation: a val pass that fails (or is killed) costs no training.
        if epoch_steps < steps_per_epoch:
            # The last epoch, cut short by train.max_steps, is saved as the mid-epoch position it is, so that
            # a resume with a larger train.max_steps runs the rest of this epoch instead of skipping it.
            save_checkpoint(epoch, epoch_steps, sums, seconds, wait, record=record)
        else:
            save_checkpoint(epoch + 1, 0, record=record)
        last_ckpt_time = time.time()
        finish_epoch(record)

    # --- Precise BN, final evaluation, results -----------------------------------------------------------
    # A stop signal from here on is not acted on: every step is trained and checkpointed, and what is left
    # (precise BN, evaluation, final files) is minutes at most; say so rather than ignore it silently.
    said = []

    def note_stop() -> None:
        if stop and not said:
            said.append(True)
            log(f"signal {signal.Signals(stop.signum).name} during the final precise BN / evaluation: finishing "
                f"them rather than stopping (training is complete and checkpointed in {ckpt_dir}; if the process "
                "is killed anyway, the same command with --resume auto redoes only this last part)", flush=True)

    train_wall = time.time() - t_start
    before = evaluate(model, val_batches(), device, autocast)
    n_bn = cfg.train.precise_bn_batches
    if n_bn > 0:
        bn_jobs = [Job(epochs, s, idx) for s, idx in enumerate(train_batch_indices(
            len(train_reader), cfg.data.batch_size, cfg.train.seed, epochs, env.rank, env.world)[:n_bn])]
        used = update_bn_stats(model, batches(train_ds, bn_jobs, core_plan.workers), n_bn, autocast)
        after = evaluate(model, val_batches(), device, autocast)
        log(f"precise BN over {used} batches x {global_batch}: val top-1 error {before['top1_err']:.2f}% -> "
            f"{after['top1_err']:.2f}%")
    else:
        after = before
    note_stop()
    ema_results = {}
    if ema is not None:
        # The averaged weights get their own exact BN statistics (see ema.py), from the same batches.
        ema_before = evaluate(ema.module, val_batches(), device, autocast)
        if n_bn > 0:
            update_bn_stats(ema.module, batches(train_ds, bn_jobs, core_plan.workers), n_bn, autocast)
            ema.module.eval()
        ema_after = evaluate(ema.module, val_batches(), device, autocast) if n_bn > 0 else ema_before
        ema_results = {"ema_decay": cfg.train.ema, "ema_top1_err": ema_after["top1_err"],
                       "ema_top5_err": ema_after["top5_err"], "ema_top1_err_before_precise_bn": ema_before["top1_err"]}
        log(f"EMA weights (decay {cfg.train.ema:g}): val top-1 error {ema_before['top1_err']:.2f}% -> "
            f"{ema_after['top1_err']:.2f}% after precise BN")
    results = {"model": cfg.model.name, "dataset": manifest.get("dataset"), "epochs": epochs,
               "top1_err": after["top1_err"], "top5_err": after["top5_err"],
               "top1_err_before_precise_bn": before["top1_err"], "top5_err_before_precise_bn": before["top5_err"],
               "precise_bn_batches": n_bn, "val_count": after["count"], "wall_s": time.time() - t_start,
               "train_wall_s": train_wall, "steps": total_steps,
               "images_per_s": (total_steps - start_epoch * steps_per_epoch - start_step) * global_batch / train_wall,
               "device": str(device), "precision": precision, "world_size": env.world, "version": __version__,
               "val_bad_samples": after["bad"], **ema_results}
    note_stop()
    if env.is_main:
        from .export import save_safetensors

        save_safetensors(model, out / "model.safetensors", {"model": cfg.model.name, "classes": manifest["classes"]})
        if ema is not None:
            save_safetensors(ema.module, out / "model_ema.safetensors",
                             {"model": cfg.model.name, "classes": manifest["classes"], "ema_decay": cfg.train.ema})
        # Final weights (after precise BN) with what `evaluate` and `predict` need to rebuild the model.
        checkpoint.save_file(out / "final.pt", {"model": model.state_dict(), "config": cfg.to_dict(),
                                                "classes": manifest["classes"], "in_channels": channels,
                                                "class_names": manifest.get("class_names", manifest["classes"]),
                                                "epoch": epochs, "step": 0, "version": __version__,
                                                **({"model_ema": ema.module.state_dict()} if ema else {})})
        checkpoint.write_atomic(out / "results.json", json.dumps(results, indent=1).encode())
        log(json.dumps(results))
    if tb is not None:
        tb.close()
    dist.barrier()  # every rank done with the files before the group closes (train() closes it)
    return results


# What makes a folder hold a run that a fresh start would overwrite or mix with (config.yaml alone does not:
# a run stopped before its first checkpoint has nothing to lose).
RUN_FILES = ("final.pt", "results.json", "metrics.jsonl")


def _claim_run_folder(out: Path, resume: str | None, env: dist.DistEnv, held: contextlib.ExitStack) -> dict:
    """Rank 0 locks ``out`` for this process (released when ``held`` closes, or by the kernel if the process
    dies) and checks that a fresh start would not overwrite another run. Every rank gets the same answer,
    {"run_id": the folder's run id or None, "new_id": an id for a new run, "held": run files present}, or
    raises the same error: no rank is left waiting in a collective for one that failed."""
    import uuid

    answer = None
    if env.is_main:
        try:
            held.enter_context(folder_lock.hold_folder(out, "a training run"))
            run_id = None
            if (out / "run.json").is_file():
                try:
                    run_id = json.loads((out / "run.json").read_text())["run_id"]
                except (ValueError, KeyError, TypeError):
                    raise folder_lock.LockError(f"{out / 'run.json'}: damaged (no run_id); it names the run this "
                                                "folder holds: remove the run folder's files to start over, or "
                                                "choose another --out") from None
            found = [n for n in RUN_FILES if (out / n).exists()]
            n_ckpt = len(checkpoint.list_checkpoints(out / "checkpoints"))
            if n_ckpt:
                found.insert(0, f"{n_ckpt} checkpoint(s) in checkpoints/")
            # A fresh start (allowed only where no run files are) is a new run, whatever run.json said.
            answer = {"run_id": run_id if resume else None, "new_id": uuid.uuid4().hex[:16], "held": found}
            if resume is None and found:
                answer = {"error": f"{out} holds another run ({', '.join(found)}); continue it with --resume auto "
                                   f"(resnet-repro train --config {out / 'config.yaml'} --out {out} --resume auto), "
                                   "or remove those files / choose another --out to start a new run"}
        except folder_lock.LockError as e:
            answer = {"error": str(e)}
    answer = dist.broadcast_object(answer)
    if "error" in answer:
        raise folder_lock.LockError(answer["error"])
    return answer


def _find_checkpoint(resume: str, ckpt_dir: Path, env: dist.DistEnv,
                     run_id: str | None = None) -> tuple[Path, dict] | None:
    """``--resume auto``: the newest whole checkpoint of run ``run_id`` in ckpt_dir (rank 0 chooses, skipping
    torn ones and other runs' with a warning; every rank then loads that file), or None if there is none.
    Otherwise ``resume`` is a path."""
    if resume == "auto":
        found = checkpoint.load_latest(ckpt_dir, run_id=run_id) if env.is_main else None
        chosen = dist.broadcast_object(str(found[0]) if found else None)
        if chosen is None or env.is_main:
            return found
        path = Path(chosen)
    else:
        path = Path(resume)
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        if env.world > 1:
            raise checkpoint.CheckpointError(f"rank {env.rank}: {e} (with several nodes, RUN_DIR must be on a file "
                                             "system every node sees)") from None
        raise
    if "optimizer" not in state:
        raise checkpoint.CheckpointError(
            f"{path} holds a run's final weights, not a training checkpoint: it has no optimizer state to resume "
            "from. Continue a run with --resume auto (or --resume RUN/checkpoints/ckpt-EEEE-SSSSSS.pt); to train "
            "further from these weights, start a new run")
    return path, state


def _merge_epoch_states(ranks: list[dict]) -> dict | None:
    """The unfinished epoch's sums of all saved ranks as one (resuming with another number of processes)."""
    parts = [r["sums"] for r in ranks if r.get("sums") is not None]
    if not parts:
        return None
    return {"sums": {"sums": sum(p["sums"] for p in parts), "samples": sum(p["samples"] for p in parts),
                     "bad": sum(p["bad"] for p in parts)},
            "seconds": ranks[0]["seconds"], "wait": ranks[0]["wait"]}


def _metric_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of metrics.jsonl. A last line cut off by a crash mid-write is dropped with a warning
    (the resumed run logs that epoch again); a damaged line before it is an error naming the line."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    out = []
    for n, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        try:
            out.append((ln if ln.endswith("\n") else ln + "\n", json.loads(ln)))
        except json.JSONDecodeError as e:
            if n == len(lines):
                print(f"warning: {path} line {n}: cut off (a crash while it was written); dropping it",
                      file=sys.stderr)
                break
            raise checkpoint.CheckpointError(f"{path} line {n}: not valid JSON ({e}); fix or delete that line, "
                                             "then resume again") from None
    return out


def _logged_epochs(path: Path) -> int:
    """The last epoch metrics.jsonl has a line for (0: none)."""
    return max((rec.get("epoch", 0) for _, rec in _metric_lines(path)), default=0)


def _trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop metrics.jsonl lines of epochs after the checkpoint (written before a crash that the checkpoint
    missed) and a torn last line, so the resumed run does not log an epoch twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln, rec in _metric_lines(path) if rec.get("epoch", 0) <= epochs_done]
    if keep != lines:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def _config_changes(saved: dict, now: dict) -> list[str]:
    """'section.key: saved -> now' for every value that differs between a checkpoint's config and this run's."""
    return [f"{section}.{key}: {old!r} -> {now[section][key]!r}"
            for section, values in saved.items() if section in now
            for key, old in values.items() if key in now[section] and now[section][key] != old]


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
