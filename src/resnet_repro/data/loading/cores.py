"""Which CPU cores the trainer and its loader workers use, and how many workers ``data.workers: auto`` means.

Why: on a GPU machine the training process is mostly a kernel launcher plus the DataLoader's pin-memory thread
(and, with ``data.decode: gpu``, the decode-ahead thread). When loader workers run on every core, the scheduler
puts a worker beside the training thread now and then, the GPU's next kernels are queued late and the step
stretches (issue 15: 0.86 x compute end to end with 14 CPU-decode workers on 16 cores, 0.7 % data wait). So the
plan keeps a few cores for the trainer's threads and gives the workers the rest, both by
``os.sched_setaffinity``; the worker count follows from the cores. Measured on an H200 with 16 cores (2026-12-04,
ResNet-50 eager bf16, 14 CPU-decode workers, three alternating rounds): pinned 0.995 x compute, every round at or
above the unpinned layout's (0.982 x median, one round 0.89 x).

``plan_cores`` is pure (the cores are an argument), so the rule is tested with made-up core sets and
``resnet-repro env`` can print the plan a run would get. Applying it: ``pin_workers`` in each worker process
(loading/loader.py's worker init), ``pin_trainer`` on the training thread before its loader starts (threads and
processes it starts afterwards, the pin-memory thread included, inherit the set; the workers then move to
theirs).

Caveats: processes started from the training thread after ``pin_trainer`` share its cores, torch.compile's
compile workers included, so a compiled run's first step compiles on the trainer's cores (once per run). Hyper-
threads are not told apart: the trainer's cores may be siblings of two worker cores.

On a CPU device nothing is pinned: the model's own threads compute on the cores, so the split is left to
torch's thread pool and the scheduler, and ``auto`` gives loading a quarter of the cores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ...config import MAX_WORKERS

# Cores kept for the training process on a GPU machine: one for the training thread (kernel launches, the step's
# Python), one for the pin-memory thread, which copies every batch into page-locked memory (38.5 MB per
# 256 x 224 x 224 x 3 uint8 batch). Fewer when the machine has few cores, so workers always get at least one.
TRAINER_CORES = 2


@dataclass(frozen=True)
class CorePlan:
    """The outcome of ``plan_cores``. Empty ``trainer_cpus`` / ``worker_cpus``: that side is not pinned."""

    workers: int  # loader worker processes for this process (rank)
    usable: tuple[int, ...]  # this process's share of the cores it may run on
    trainer_cpus: tuple[int, ...]  # the training thread, the pin-memory thread, the decode-ahead thread
    worker_cpus: tuple[int, ...]  # every loader worker may run on any of these
    rule: str  # how `workers` was chosen, for the log

    @property
    def pinned(self) -> bool:
        return bool(self.worker_cpus)

    def describe(self) -> str:
        """One log line: the worker count, its rule, and the core layout."""
        text = f"{self.workers} loader worker(s) ({self.rule})"
        if not self.pinned:
            return f"{text}; cores not pinned ({len(self.usable)} usable: {_ranges(self.usable)})"
        return (f"{text}; workers on cores {_ranges(self.worker_cpus)}, training + pin-memory threads on cores "
                f"{_ranges(self.trainer_cpus)}")


def parse_workers(value) -> int | str:
    """A ``data.workers`` / ``--workers`` value: a count >= 0 or "auto"; anything else is an error naming it."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise ValueError(f"workers: {value!r} is not a count >= 0 or 'auto'")
    if n > MAX_WORKERS:
        raise ValueError(f"workers: {value!r} loader processes is more than {MAX_WORKERS}; give a count per core "
                         "you have (or auto)")
    return n


def plan_cores(available_cpus, workers_setting, device_type: str, local_rank: int = 0,
               local_world: int = 1) -> CorePlan:
    """The core layout and worker count for one training process.

    available_cpus: the cores this process may use (``os.sched_getaffinity(0)``: a container's or a scheduler's
    limit included). workers_setting: ``data.workers``, a count (kept as given) or "auto". device_type: "cuda"
    pins, anything else does not (see the module docstring). local_rank / local_world: processes on this machine
    (torchrun's LOCAL_RANK / LOCAL_WORLD_SIZE): each gets its own contiguous slice of the cores, so eight ranks'
    workers do not all crowd onto the same ones.

    With "auto" on a GPU: workers = the slice's cores minus the trainer's (at least 1). An explicit count is kept
    even if it exceeds the worker cores (they then share them; the trainer's cores stay free). With 0 workers
    the trainer loads the data itself, so nothing is pinned."""
    cpus = sorted({int(c) for c in available_cpus})
    if not cpus:
        raise ValueError("plan_cores: no CPU cores available to this process")
    if not 0 <= local_rank < local_world:
        raise ValueError(f"plan_cores: local rank {local_rank} is outside 0..{local_world - 1}")
    workers_setting = parse_workers(workers_setting)
    shared = ""
    if local_world > 1 and len(cpus) >= local_world:
        # Contiguous slices, sizes differing by at most one (the first `extra` slices one core larger).
        size, extra = divmod(len(cpus), local_world)
        start = local_rank * size + min(local_rank, extra)
        cpus = cpus[start:start + size + (local_rank < extra)]
    elif local_world > 1:
        shared = f", shared by {local_world} local processes"
    usable = tuple(cpus)
    n = len(usable)
    gpu = device_type == "cuda"
    reserved = min(TRAINER_CORES, n - 1) if gpu and not shared else 0
    if workers_setting == "auto":
        if gpu:
            workers = max(1, n - reserved)
            rule = f"auto: {n} usable core(s){shared} - {reserved} for the trainer"
        else:
            workers = max(1, n // 4)
            rule = f"auto: a quarter of {n} usable core(s){shared}; a CPU trainer computes on the rest"
    else:
        workers = workers_setting
        rule = "data.workers as set"
    if reserved == 0 or workers == 0:
        return CorePlan(workers, usable, (), (), rule)
    return CorePlan(workers, usable, usable[:reserved], usable[reserved:], rule)


def available_cpus() -> set[int]:
    """The cores this process may run on (its affinity mask; all cores where the OS has no such call)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def pin_workers(plan: CorePlan | None) -> None:
    """In a loader worker: run on the plan's worker cores (nothing without a plan or where it pins nothing)."""
    if plan is not None and plan.worker_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, plan.worker_cpus)


def pin_trainer(plan: CorePlan | None) -> set[int] | None:
    """On the training thread: run on the plan's trainer cores; returns the previous set (for
    ``unpin_trainer``), or None when nothing changed. On Linux this sets the calling thread's mask, which
    threads and processes started from it afterwards inherit."""
    if plan is None or not plan.trainer_cpus or not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, plan.trainer_cpus)
    return before


def unpin_trainer(before: set[int] | None) -> None:
    if before is not None:
        os.sched_setaffinity(0, before)


def _ranges(cpus) -> str:
    """(0, 1, 2, 5, 7, 8) -> '0-2,5,7-8'."""
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out) or "none"
