"""What the phases of a run share: `Run` (what the run is made of), `RunState` (where it stands), `Data` (readers,
datasets, transforms, the batch arithmetic), `Learner` (what the steps change), and one epoch's numbers on a rank
(`EpochTally`, `RunningSums`)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import dist
from ..config import Config, DataConfig
from ..data.loading.cores import CorePlan
from ..data.loading.loader import DevicePrefetcher, Job, eval_batch_indices, make_loader, train_batch_indices
from ..data.shards.reader import RecordReader
from ..ema import EMA
from ..evaluate import topk_correct
from ..schedule import train_image_size


class TrainingError(RuntimeError):
    pass


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

    def work_left(self, epoch: int, step: int, size: int) -> float:
        """Steps left from `step` of `epoch` to the end, each counted by its crop's pixels relative to a step at side
        `size`: what an ETA measured at `size` scales by. Under progressive resizing the 28-px steps ahead cost 2-3x
        the 16-px ones an early rate is measured on (pixels say 3x; fixed per-step costs make it less on a CPU), and
        counting steps alone promised about half the time a Fashion-MNIST run takes. Pixels err the other way, by
        less, and the error shrinks as the run reaches its full size."""
        def weight(e: int) -> float:
            side = train_image_size(self.cfg, e, self.stored)
            return (side / size) ** 2 if side and size else 1.0
        left = (self.steps_in(epoch) - step) * weight(epoch)
        return left + sum(self.steps_in(e) * weight(e) for e in range(epoch + 1, self.epochs))

    def train_jobs(self, epoch: int, count: int, size: int = 0) -> list[Job]:
        """This rank's first `count` training batches of `epoch`, at crop side `size` (0: the geometry's own)."""
        indices = train_batch_indices(len(self.train_reader), self.cfg.batch_size, self.seed, epoch, self.env.rank,
                                      self.env.world)[:count]
        return [Job(epoch, s, idx, size) for s, idx in enumerate(indices)]

    def train_batches(self, jobs: list[Job]):
        loader = make_loader(self.train_ds, jobs, self.core_plan.workers, self.device.type == "cuda", self.core_plan)
        if self.cfg.decode == "gpu":  # decoded a batch ahead on a side stream (gpu_decode.py)
            from ..data.loading.gpu_decode import decode_ahead

            return decode_ahead(loader, self.train_transform)
        return DevicePrefetcher(loader, self.device, self.train_transform)

    def val_batches(self, dataset=None):
        """Batches of the val split (or of `dataset`, an eval-geometry BatchDataset: the test split at the end)."""
        ds = self.val_ds if dataset is None else dataset
        jobs = [Job(0, s, idx) for s, idx in enumerate(self._eval_indices(ds))]
        loader = make_loader(ds, jobs, self.core_plan.workers, self.device.type == "cuda", self.core_plan)
        return DevicePrefetcher(loader, self.device, self.val_transform)

    def val_order(self, dataset=None) -> tuple[np.ndarray, int]:
        """(the split's indices of the images val_batches brings on this rank, in that order; the split's size): what
        evaluate needs to say which images were right (val_pass.evaluate's `order`)."""
        ds = self.val_ds if dataset is None else dataset
        return np.concatenate(self._eval_indices(ds) or [np.zeros(0, dtype=np.int64)]), len(ds.reader)

    def _eval_indices(self, ds) -> list[np.ndarray]:
        return eval_batch_indices(len(ds.reader), self.cfg.eval_batch_size, self.env.rank, self.env.world)


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
    # Optimizer steps the run took before (start_epoch, start_step): not start_epoch x steps per epoch when an
    # allowed change (data, batch size) changed the steps per epoch on the way.
    steps_before: int = 0
    epoch_state: dict | None = None  # this rank's saved metric sums and timings of an unfinished epoch
    pending_record: dict | None = None  # an epoch whose checkpoint was saved but whose evaluation and log line were not
    last_ckpt_time: float = 0.0

    def steps_done(self, position: int, steps_per_epoch: int) -> int:
        """Optimizer steps the run has taken when this call reaches `position` (epoch x steps_per_epoch + step,
        in this call's steps per epoch): those before it, and this call's own."""
        return self.steps_before + position - (self.start_epoch * steps_per_epoch + self.start_step)


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
