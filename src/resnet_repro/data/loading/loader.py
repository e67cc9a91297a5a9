"""Deterministic batches from record shards: sampler, worker batches, prefetch to the device.

Sample order is a pure function of (seed, epoch): one permutation per epoch, cut into global batches of
``batch_size x world`` samples, of which rank r takes the r-th slice. A 1-process run with global batch G and
an N-process run with per-rank batch G/N therefore see the same samples in each step; the remainder that
does not fill a global batch is dropped, so every rank runs the same number of steps.

Each worker process builds a whole uint8 batch (decode + geometry per sample, see augment/); batches come
back in order whatever the number of workers.
"""
from __future__ import annotations

import functools
import signal
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from ..augment.rng import COLOR_STREAM, sample_rng
from ..decode.cpu import DecodeError, decode
from ..shards.reader import RecordReader
from ..shards.records import RecordError


class UnreadableSample(RecordError):
    """A damaged sample whose replacement is damaged too (BatchDataset.with_replacement): the message names
    both."""

    def __init__(self, message: str):
        # Raised in a loader worker, it reaches the training process rebuilt by torch from the worker's formatted
        # traceback ("Caught UnreadableSample in DataLoader worker process 0.\nOriginal Traceback ..."); its last
        # line holds the message, which is all the user is shown.
        lines = message.rstrip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught "):
            message = lines[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def train_steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    return n // (batch_size * world)


def train_batch_indices(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This rank's sample indices for every step of `epoch` (equal length on all ranks, remainder dropped)."""
    perm = epoch_permutation(n, seed, epoch)
    g = batch_size * world
    return [perm[s * g + rank * batch_size: s * g + (rank + 1) * batch_size]
            for s in range(train_steps_per_epoch(n, batch_size, world))]


def eval_batch_indices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Every sample exactly once across ranks (rank r takes r, r+world, ...): no padding, no duplicates."""
    mine = np.arange(rank, n, world)
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


@dataclass
class Job:
    epoch: int
    step: int
    indices: np.ndarray
    size: int = 0  # side of the train crops for this batch (progressive resizing); 0 = the geometry's own


class BatchDataset(torch.utils.data.Dataset):
    """Turns a Job into (images uint8 [B,H,W,C], labels int64 [B], bad-sample count, colour params float32 [B,P]).

    The colour parameters are drawn here from each sample's own colour stream (P = 0 without colour
    augmentation, and always for val); the device applies them (augment/device.py, augment/color.py)."""

    def __init__(self, reader: RecordReader, geometry, channels: int, seed: int, train: bool):
        self.reader, self.geometry, self.channels = reader, geometry, channels
        self.seed, self.train = seed, train
        self.default_size = getattr(geometry, "size", 0)

    def __len__(self):  # the sampler decides what is loaded
        return 0

    def load(self, i: int, epoch: int) -> np.ndarray:
        key, data, _ = self.reader[i]
        rng = sample_rng(self.seed, epoch, i) if self.train else None
        flip_of = getattr(self.geometry, "flip_of", None) if self.train else None  # TrainGeometry's flip schedule
        flip = (flip_of(self.seed, epoch, i),) if flip_of else ()
        if hasattr(self.geometry, "load"):  # decodes only what its crop needs (decode.cpu.decode_box)
            return self.geometry.load(data, self.channels, rng, *flip)
        return self.geometry(decode(data, self.channels), rng, *flip)

    def color_params(self, i: int, epoch: int) -> np.ndarray:
        draw = getattr(self.geometry, "color_params", None) if self.train else None
        return draw(sample_rng(self.seed, epoch, i, COLOR_STREAM)) if draw else np.zeros(0, np.float32)

    def with_replacement(self, sample, i: int, epoch: int):
        """``(sample(i, epoch), 0)``; for a sample damaged after prepare (DecodeError): a warning naming it and
        ``(sample(j, epoch), 1)`` for a deterministic other sample j, the 1 counting towards the batch's bad
        samples. Val too: the per-epoch val pass logs the count (val_bad_samples); `evaluate` refuses instead.
        loading/gpu_decode.py reads its samples through this as well, so both paths pick the same replacement.
        A replacement that is damaged too stops the run (UnreadableSample, naming both): the data set needs
        repair, and a second draw would only hide how much of it is damaged."""
        try:
            return sample(i, epoch), 0
        except DecodeError:
            print(f"warning: {self.reader.root} {self.reader.where(i)}: cannot decode; using a replacement "
                  "sample", file=sys.stderr)
            n = len(self.reader)
            if n < 2:
                raise UnreadableSample(f"{self.reader.root} {self.reader.where(i)}: cannot decode, and the split has "
                                       "no other sample to replace it: prepare the data set again") from None
            # Any sample but i itself: drawn from all n, the damaged one replaced itself once in n draws and
            # stopped the run as if two samples were damaged.
            j = int(sample_rng(self.seed, epoch, i).integers(n - 1))
            j += j >= i
        try:
            return sample(j, epoch), 1
        except DecodeError:
            raise UnreadableSample(
                f"{self.reader.root} {self.reader.where(i)}: cannot decode, nor its replacement "
                f"{self.reader.where(j)}: run `resnet-repro verify {self.reader.root}` to list every damaged "
                "sample, then prepare the data set again") from None

    def _sample(self, i: int, epoch: int):
        return self.load(i, epoch), int(self.reader.labels[i]), self.color_params(i, epoch)

    def __getitem__(self, job: Job):
        if self.train:  # the size travels with the job, so it holds in any worker process, persistent or not
            self.geometry.size = job.size or self.default_size
        images, labels, params, bad = [], [], [], 0
        for i in job.indices.tolist():
            (img, label, colour), b = self.with_replacement(self._sample, i, job.epoch)
            images.append(img)
            labels.append(label)
            params.append(colour)
            bad += b
        return (torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), bad,
                torch.from_numpy(np.stack(params)))


class JobSampler(torch.utils.data.Sampler):
    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __iter__(self):
        return iter(self.jobs)

    def __len__(self):
        return len(self.jobs)


def worker_init(_, plan=None):
    """Set up a DataLoader worker process (training's and evaluation's): one thread each for OpenCV and torch,
    since the parallelism is the workers themselves; pinned to ``plan``'s worker cores when there is a plan."""
    import cv2

    from .memory import keep_freed_memory
    from .cores import pin_workers

    pin_workers(plan)  # off the training process's cores (loading/cores.py); nothing without a plan
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    keep_freed_memory()
    # Preemption (SLURM, `timeout`, Ctrl-C) signals the whole process group. The trainer checkpoints on
    # SIGTERM/SIGUSR1 and then shuts its loader down itself; a worker dying first would abort it instead.
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def make_loader(dataset: BatchDataset, jobs: list[Job], workers: int, pin_memory: bool,
                plan=None, prefetch: int = 4) -> torch.utils.data.DataLoader:
    """`plan`: a loading/cores.py CorePlan whose worker cores the workers move to (None: they stay where forked).
    `prefetch`: batches each worker keeps loaded ahead. `dataset`: any Dataset that takes a Job (evaluation's
    view batches too)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=JobSampler(jobs), num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=functools.partial(worker_init, plan=plan) if workers else None,
        prefetch_factor=prefetch if workers else None, persistent_workers=False)


def close_workers(it) -> None:
    """Stop a DataLoader iterator's worker processes now. Left to the garbage collector, an iterator that an
    error's traceback keeps alive outlives the interpreter's exit handlers, which SIGTERM the workers (ignored:
    worker_init) and wait for them forever: the error printed, the process never ends."""
    shutdown = getattr(it, "_shutdown_workers", None)  # torch's own clean-up, what its __del__ calls
    if shutdown is not None:
        shutdown()


class DevicePrefetcher:
    """Copies the next batch to the device (non-blocking, from pinned memory, on a side stream on CUDA)
    while the current one trains, and applies the device-side transform there."""

    def __init__(self, loader, device: torch.device, transform):
        self.loader, self.device, self.transform = loader, device, transform
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _transform(self, x, params):
        # Colour parameters (train batches with colour augmentation) go with the images; otherwise the
        # transform gets the images alone.
        if params is not None and params.numel():
            return self.transform(x, params.to(self.device, non_blocking=True))
        return self.transform(x)

    def _to_device(self, batch):
        x, y, bad = batch[:3]
        params = batch[3] if len(batch) > 3 else None
        if self.stream is None:
            return self._transform(x.to(self.device), params), y.to(self.device), bad
        with torch.cuda.stream(self.stream):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            x = self._transform(x, params)
        return x, y, bad

    def __iter__(self):
        it = iter(self.loader)
        try:
            yield from self._batches(it)
        finally:
            close_workers(it)

    def _batches(self, it):
        nxt = None
        try:
            nxt = self._to_device(next(it))
        except StopIteration:
            return
        while nxt is not None:
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
                for t in nxt[:2]:
                    t.record_stream(torch.cuda.current_stream(self.device))
            cur = nxt
            try:
                nxt = self._to_device(next(it))
            except StopIteration:
                nxt = None
            yield cur

    def __len__(self):
        return len(self.loader)
