"""What the benches measure with: the one-core JPEG decode limit, the spread over timed rounds, and the step
timer on the device's clock (``bench train``).

Decode limit: bare ``cv2.imdecode`` of the full image on one core, the encoded files already in memory, nothing
else. It is the ceiling per worker of the training input pipeline (``bench loader``: everything the pipeline adds
may cost at most 15 %) and of copy-mode ``prepare`` (``bench prepare``: it must decode every image to find the
undecodable ones), so both benches take it from here, on the very images they time. The same decoding in N
processes at once (``parallel_decode_limit``) says what each of N busy cores gives: all-core turbo clocks, shared
caches and memory bandwidth can put it below the one-core figure, and that is the machine's, not the pipeline's.

Spread: one round's figure does not say where the next round would land on a shared machine, so each bench
reports the median and the min-max over its timed rounds (airbench reports mean +- std over runs). Of an even
number of rounds the median is the lower middle one: an actual round, never flattered.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass


def lower_median(items: list, key=lambda v: v):
    """The lower middle item by `key`."""
    ordered = sorted(items, key=key)
    return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True)
class Spread:
    """A figure over its timed rounds."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> Spread:
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("a spread needs at least one round")
        return cls(values)

    @property
    def median(self) -> float:
        return lower_median(list(self.values))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, fmt: str = ".0f", what: str = "round") -> str:
        """E.g. "median 1305, min-max 1240-1368 over 5 rounds", or "1305 in 1 round"."""
        if len(self.values) == 1:
            return f"{self.median:{fmt}} in 1 {what}"
        return (f"median {self.median:{fmt}}, min-max {self.low:{fmt}}-{self.high:{fmt}} over {len(self.values)} "
                f"{what}s")

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "rounds": list(self.values)}


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (e.g. `prepare`'s worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def decode_limit(blobs: list[bytes], rounds: int = 1, seconds: float = 0.0) -> tuple[Spread, Spread]:
    """Images/s of bare full-size decoding on one core, per round: (per wall second, per CPU second). A round is
    at least one pass over `blobs` and at least `seconds` long."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    arrays = [np.frombuffer(b, np.uint8) for b in blobs]
    wall, cpu = [], []
    for _ in range(rounds):
        n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
        while True:
            for a in arrays:
                if cv2.imdecode(a, cv2.IMREAD_COLOR) is None:
                    raise ValueError("an image in the benchmark data cannot be decoded (for record shards: run "
                                     "`resnet-repro verify`)")
            n += len(arrays)
            if time.perf_counter() - t0 >= seconds:
                break
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / max(cpu_seconds() - c0, 1e-9))
    return Spread.of(wall), Spread.of(cpu)


def parallel_decode_limit(blobs: list[bytes], processes: int, seconds: float = 2.0,
                          timeout_s: float = 300.0) -> Spread:
    """decode_limit's bare decoding in `processes` processes started together, each for at least `seconds`:
    images/s of each process (one value per process)."""
    import multiprocessing as mp

    # fork: the children inherit `blobs` instead of unpickling a copy each (spawn where there is no fork).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_decode_in_child, args=(blobs, seconds, start, out, timeout_s), daemon=True)
             for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        rates = [out.get(timeout=timeout_s) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    failed = [r for r in rates if isinstance(r, str)]
    if failed:
        raise ValueError(failed[0])
    return Spread.of(rates)


def _decode_in_child(blobs: list[bytes], seconds: float, start, out, timeout_s: float) -> None:
    try:
        start.wait(timeout_s)
        out.put(decode_limit(blobs, seconds=seconds)[0].median)
    except Exception as e:  # noqa: BLE001 - the parent raises it, as the one-core limit would
        out.put(str(e))


class StepTimer:
    """Start and end marks of each timed step on the device's clock (`bench train`; its module docstring says what
    the figures mean): CUDA events recorded in stream order on a GPU, perf_counter on a CPU."""

    def __init__(self, device):  # a torch.device
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            import torch  # only here: the benches that time no training step load no torch for this module

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def result(self, batch_size: int) -> dict:
        """Images/s over the span of all marked steps and the fraction of it spent between steps."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            t = [self.marks[0].elapsed_time(e) / 1000.0 for e in self.marks]  # ms -> s, from the first mark
        else:
            t = [m - self.marks[0] for m in self.marks]
        starts, ends = t[0::2], t[1::2]
        span = ends[-1] - starts[0]
        gaps = sum(max(0.0, s - e) for s, e in zip(starts[1:], ends[:-1]))
        steps = len(ends)
        each = [e - s for s, e in zip(starts, ends)]
        return {"images_per_s": steps * batch_size / span, "step_ms": 1000.0 * span / steps,
                "wait_fraction": gaps / span, "seconds": span, "steps": steps,
                "step_ms_min": 1000.0 * min(each), "step_ms_max": 1000.0 * max(each)}
