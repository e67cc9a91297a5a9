"""Training, read top to bottom: data -> model -> optimizer -> epochs -> precise BN -> evaluation -> results.

One process::

    resnet-repro train --config configs/fashion_mnist/resnet20.yaml --out runs/fm

One node with 8 GPUs (per-device batch x 8 = global batch)::

    torchrun --nproc-per-node 8 -m resnet_repro train --config configs/imagenet/resnet50_seed.yaml --out runs/r50

Several nodes: the same on every node with ``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT``.

Files in RUN_DIR (rank 0 writes): config.yaml (resolved), metrics.jsonl (one object per epoch),
checkpoints/ (complete state, see checkpoint.py), results.json and model.safetensors at the end.

`train` reads as the run's script, one function per phase: `start_processes` (device, precision), `open_data`,
`build_learner` (model, optimizer, EMA) in setup.py, `start_or_resume` (run folder, checkpoint) in resume.py; per
epoch, here, `train_one_epoch`, `end_epoch` (its checkpoint) and `finish_epoch` (evaluation on val, log line); then
`finish` (precise BN, final evaluation on val, the test split scored once, results) in finish.py. They share `Run`
(what the run is made of) and `RunState` (where it stands), in state.py. Stop requests and the ranks' meetings live
in stopping.py; which run a folder holds and where a resume starts, in run_folder.py.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path

import torch

from .. import dist
from ..config import Config
from ..data.loading.cores import pin_trainer, unpin_trainer
from ..runtime import peak_memory_mb
from ..schedule import lr_factor, schedule_position, train_image_size
from ..stopping import RankMeeting, StopRequest
from .finish import _evaluate, finish
from .resume import _finished_results, _newest, save, start_or_resume
from .setup import build_learner, open_data, start_processes
from .state import EpochTally, Run, RunState, TrainingError


# --- The run, top to bottom --------------------------------------------------------------------------------

def train(cfg: Config, out: Path, resume: str | None = None, allow_change: tuple[str, ...] = (),
          force: bool = False) -> dict:
    """`resnet-repro train`: the run `cfg` describes, into `out` (resume: None, "auto" or a checkpoint path;
    allow_change: config keys a resume may change, see resume.py `_load_learner`; force: take over a lock left by
    another host)."""
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


def _log_step(run: Run, tally: EpochTally, epoch: int, epoch_steps: int, loss: float) -> None:
    """The human line of one log interval (and its TensorBoard points); a non-finite loss ends the run here."""
    data, lr, step = run.data, run.learner.lr, tally.step
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite loss {loss} at epoch {epoch} step {step}; the newest good checkpoint, "
                            f"{_newest(run.ckpt_dir)}, is kept (lower the LR or check the data, then --resume auto)")
    now = time.time()
    rate = tally.seen_log * run.env.world / (now - tally.t_log)
    done = epoch * data.steps_per_epoch + step
    eta = data.work_left(epoch, step, tally.size) * data.global_batch / rate
    if run.tb is not None:
        run.tb.add_scalar("train/loss_step", loss, done)
        run.tb.add_scalar("train/lr", lr, done)
    run.log(f"epoch {epoch + 1}/{data.epochs} step {step}/{epoch_steps} lr {lr:.4g} loss {loss:.4f} {rate:,.0f} "
            f"img/s data-wait {100 * (tally.wait - tally.wait_log) / (now - tally.t_log):.0f}% peak mem "
            f"{peak_memory_mb(run.device):,.0f} MB ETA {_fmt_time(eta)}", flush=True)
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
              "image_size": tally.size, "peak_memory_mb": peak_memory_mb(run.device)}
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


def _single_view(val: dict, prefix: str) -> dict:
    """With train.eval_protocol: flip, the single view's errors under `prefix` (nothing otherwise)."""
    return {f"{prefix}{k}": val[k] for k in ("top1_err_single", "top5_err_single") if k in val}


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
