"""``resnet-repro bench loader``: images/s of the training input pipeline against the JPEG decode limit.

What is timed is the real input path of ``resnet-repro train``: loader worker processes (read from the
shards, header, crop box, DCT-reduced decode, resize, flip, colour parameters; data/augment/) -> the
DataLoader's transfer -> DevicePrefetcher -> the device-side colour distortion and normalization
(data/augment/color.py). The yardstick, measured in the same run on the same files, is the decode limit (measure.py):
bare ``cv2.imdecode`` of the full image on one core, nothing else. Per worker the pipeline should reach >= 0.85 x
that limit (issue 3), i.e. everything we add costs at most 15 % over decoding, and N workers on N idle cores
should give >= 0.9 N x one worker. Both ratios are printed, after the machine (machine.py). For N > 1 the same
bare decoding also runs in N processes at once, and the per-worker rate is set against that too: where N busy
cores each decode slower than one (all-core clocks, shared caches, memory bandwidth), that part of a shortfall is
the machine's.

Timing: the first batches (every worker's start-up, the device's first transform) are not timed; the rate is
the timed batches' images over the time from the last untimed batch to the last timed one, with the device
synchronized. Its spread is over the timed batches cut into up to five consecutive windows (host clock), each a
round of its own. The decode limit is measured before and after the pipeline runs and averaged, so a shared
machine's load drifts into both sides alike. Worker peak RSS is each worker's VmHWM (it includes the pages
it shares with the parent after fork); RSS growth is a worker's resident size at its last batch minus at its
first timed one, which stays flat when nothing accumulates per sample (no copy-on-read growth). The growth
from its very first batch is printed too: the first batches grow the heap to one batch's working set.

``--compare torchvision`` runs the familiar torchvision pipeline (ImageFolder + RandomResizedCrop + flip +
ColorJitter + ToTensor + Normalize) on the same images, batch size and worker count; torchvision is optional.
Its ColorJitter does the colour work the configured ``data.color`` does (loader_torchvision.py), so both sides run
the same operations: the seed recipe's tf_cnn distortion includes a hue shift, ColorJitter(0.4, 0.4,
0.4) has none, and in torchvision the hue shift is the most expensive of the four.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .measure import Spread, decode_limit, parallel_decode_limit

if TYPE_CHECKING:  # imported where it runs: `bench --help` loads no torch
    import torch

# tf_cnn_benchmarks' own augmentation (its bounding-box crop and colour; the seed recipe has since taken the paper's
# crop, issue 12): what `bench loader` runs unless --config / --set say else; kept so figures stay comparable.
DEFAULT_DATA = ("data.crop=tf_cnn", "data.color=tf_cnn", "data.image_size=224", "data.normalize=scale_pm1")


def device_threads(device, workers: int) -> int | None:
    """Torch threads for the device-side ops: on a CPU "device", the cores the workers leave (at least one), rather
    than torch's default of every core, which would take time from the workers being measured; None elsewhere."""
    return max(1, (os.cpu_count() or 1) - workers) if device.type == "cpu" else None


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: as they are), then restore the count."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _MeasuredDataset:
    """The training BatchDataset, plus per batch: (worker pid, seconds spent building it, peak RSS MB, RSS MB)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return 0

    def __getitem__(self, job):
        t0 = time.perf_counter()
        out = self.inner[job]
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
        return (*out, (os.getpid(), seconds, peak, _rss_mb()))


def _split_stats(loader, sink: list):
    """Pass the loader's batches on without their measurement tuple, which goes to `sink`."""
    for batch in loader:
        sink.append(batch[-1])
        yield batch[:-1]


def pipeline_rate(cfg, reader, workers: int, batch_size: int, batches: int, device: torch.device,
                  warmup: int | None = None, seed: int = 0, affinity: str = "plan") -> dict:
    """Run the train input pipeline (workers -> device transform) for warmup + `batches` batches, over as many
    epochs of the data as that takes (later epochs read the same files again, as training does).

    affinity: "plan" lays the cores out as training does (data/loading/cores.py: on a GPU machine the workers on their
    cores, this thread and the pin-memory thread on the trainer's), "none" leaves every process where it is."""
    import torch

    from ..data.augment.device import DeviceTransform
    from ..data.augment.geometry import TrainGeometry
    from ..data.loading.cores import available_cpus, pin_trainer, plan_cores, unpin_trainer
    from ..data.loading.loader import BatchDataset, DevicePrefetcher, Job, make_loader, train_batch_indices
    from ..data.loading.memory import keep_batch_memory

    warmup = 2 * max(workers, 1) + 2 if warmup is None else warmup
    need = warmup + batches
    if not train_batch_indices(len(reader), batch_size, seed, 0):
        raise ValueError(f"{reader.root}: {len(reader)} images, fewer than one batch of {batch_size} (lower "
                         "--batch-size or make more data)")
    jobs, epoch = [], 0
    while len(jobs) < need:
        jobs += [Job(epoch, s, idx) for s, idx in enumerate(train_batch_indices(len(reader), batch_size, seed, epoch))]
        epoch += 1
    jobs = jobs[:need]
    plan = plan_cores(available_cpus(), workers, device.type)
    ds = _MeasuredDataset(BatchDataset(reader, TrainGeometry(cfg.data, 0), 3, seed, train=True))
    keep_batch_memory(device)  # as training does: the same transform cost
    transform = DeviceTransform(cfg.data, 3, device)
    stats: list = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = None
    count = 0
    marks = []  # (host time, images so far) after each timed batch: the windows of the spread
    before = pin_trainer(plan) if affinity == "plan" else None
    try:
        loader = make_loader(ds, jobs, workers, pin_memory=device.type == "cuda",
                             plan=plan if affinity == "plan" else None)
        with _torch_threads(device_threads(device, workers)):
            for k, (x, y, bad) in enumerate(DevicePrefetcher(_split_stats(loader, stats), device, transform)):
                if k == warmup - 1:
                    sync()
                    t0, cpu0 = time.perf_counter(), time.process_time()
                elif k >= warmup:
                    count += len(y)
                    marks.append((time.perf_counter(), count))
            sync()
    finally:
        unpin_trainer(before)
    seconds, main_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    marks[-1] = (t0 + seconds, count)  # the last window ends when the device is done
    timed = stats[warmup:]
    per_pid: dict[int, list] = {}
    for k, (pid, sec, peak, rss) in enumerate(stats):
        per_pid.setdefault(pid, []).append((sec, peak, rss, k >= warmup))
    # RSS growth over the timed batches: a worker's first batches grow its heap to the working set of one
    # batch (glibc keeps freed memory, loading.memory.keep_freed_memory), a plateau; what must stay flat is after.
    timed_rss = [[v[2] for v in vals if v[3]] for vals in per_pid.values()]
    # Worker compute rate: images over the time the workers spent building the timed batches (no transfer).
    compute = sum(len(j.indices) for j in jobs[warmup:]) / max(sum(s[1] for s in timed), 1e-9) * max(workers, 1)
    return {
        "workers": workers,
        "images_per_s": count / seconds,
        "images_per_s_windows": _window_rates(t0, marks),
        "images_per_s_per_worker": count / seconds / max(workers, 1),
        "worker_compute_images_per_s": compute / max(workers, 1),
        "peak_rss_mb_per_worker": max(v[1] for vals in per_pid.values() for v in vals),
        "rss_growth_mb_per_worker": max((r[-1] - r[0] for r in timed_rss if r), default=0.0),
        "rss_growth_from_first_batch_mb": max(vals[-1][2] - vals[0][2] for vals in per_pid.values()),
        # The training process's own CPU time per image (receiving batches, device transform on a CPU device,
        # all its threads): what the workers' cores must leave free.
        "main_cpu_ms_per_image": 1e3 * main_cpu / count,
        "timed_images": count,
        "seconds": seconds,
        "affinity": affinity,
        "core_plan": plan.describe() if affinity == "plan" else "not pinned (--affinity none)",
    }


def _window_rates(t0: float, marks: list, windows: int = 5) -> list[float]:
    """Images/s in up to `windows` consecutive windows of the timed batches (`marks`: time, images so far)."""
    n = len(marks)
    w = min(windows, n)
    bounds = [round(i * n / w) for i in range(w + 1)]
    points = [(t0, 0)] + marks
    return [(points[e][1] - points[s][1]) / max(points[e][0] - points[s][0], 1e-9) for s, e in zip(bounds, bounds[1:])]


def transform_rate(cfg, batch_size: int, device, threads: int | None, seconds: float = 1.0) -> float:
    """Images/s of the device-side transform alone (colour matrix + normalization) on `device`, with `threads`
    torch threads (device_threads): where the pipeline's rate stops being the workers'."""
    import numpy as np
    import torch

    from ..data.augment.device import DeviceTransform
    from ..data.augment.geometry import TrainGeometry
    from ..data.augment.rng import COLOR_STREAM, sample_rng
    from ..data.loading.memory import keep_batch_memory

    keep_batch_memory(device)  # as training does: the same transform cost
    geometry, transform = TrainGeometry(cfg.data, 0), DeviceTransform(cfg.data, 3, device)
    size = geometry.size
    x = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8).to(device)
    params = torch.from_numpy(np.stack([geometry.color_params(sample_rng(0, 0, i, COLOR_STREAM))
                                        for i in range(batch_size)])).to(device)
    run = (lambda: transform(x, params)) if params.numel() else (lambda: transform(x))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with _torch_threads(threads):
        run()
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run()
            n += batch_size
        sync()
        return n / (time.perf_counter() - t0)


@dataclass
class LoaderOptions:
    """What `bench loader` runs (commands/bench.py's options)."""

    data: str  # prepared JPEG shards
    workers: list = field(default_factory=lambda: [1])  # counts, or "auto": the count training would use here
    batch_size: int = 64
    batches: int = 30  # timed, after 2 x workers + 2 untimed
    config: str | None = None  # recipe whose data section is used (default: DEFAULT_DATA)
    overrides: list[str] = field(default_factory=list)
    device: str = "auto"
    split: str = "train"
    compare: str | None = None  # "torchvision": also time torchvision's pipeline on the same images
    affinity: str = "plan"  # pipeline_rate's


def bench_loader(opts: LoaderOptions, log=print) -> dict:
    """The machine, the decode limit, then each worker count's pipeline rate and the ratios between them."""
    from ..data.augment.geometry import whole_image_reason
    from ..data.loading.cores import available_cpus, plan_cores
    from ..data.shards.reader import RecordReader
    from ..runtime import load_recipe, pick_device
    from . import machine

    cfg = load_recipe(opts.config, ([] if opts.config else list(DEFAULT_DATA)) + list(opts.overrides))
    dev = pick_device(opts.device)
    reader = RecordReader(opts.data, opts.split)
    if len(reader) < opts.batch_size:
        raise ValueError(f"{reader.root}: {len(reader)} images, fewer than one batch of {opts.batch_size} (lower "
                         "--batch-size or make more data)")
    workers = [plan_cores(available_cpus(), w, dev.type).workers if w == "auto" else w for w in opts.workers]
    if reader.manifest["image"].get("channels", 3) != 3:
        raise ValueError(f"{opts.data}: bench loader is for RGB JPEG data sets (ImageNet layout)")
    info = machine.describe()
    log(machine.line(info))
    blobs = _decode_limit_images(reader, opts, cfg, dev, log)
    why_whole = whole_image_reason(cfg.data)
    log("crop decode: " + (f"whole images (OpenCV): {why_whole}" if why_whole else
                           "the crop's rows and columns only (libjpeg-turbo, native helper)"))
    limits = [decode_limit(blobs, seconds=2.0)[0].median]
    log(f"decode limit (bare full-size cv2.imdecode, one core): {limits[0]:.0f} img/s")
    runs = []
    for n in workers:
        r = pipeline_rate(cfg, reader, n, opts.batch_size, opts.batches, dev, affinity=opts.affinity)
        limits.append(decode_limit(blobs, seconds=2.0)[0].median)
        if n > 1:  # the same bare decoding on n cores at once: what n busy cores give each (measure.py)
            r["decode_limit_parallel_per_s"] = statistics.mean(parallel_decode_limit(blobs, n).values)
        runs.append(r)
        _log_run(n, r, log)
    # With a CPU "device" the colour ops run in the main process on the cores the workers leave; say what that
    # costs, so that a pipeline rate capped by it is not read as the workers'.
    threads = device_threads(dev, max(workers))
    device_rate = transform_rate(cfg, opts.batch_size, dev, threads)
    log(f"device-side transform alone (colour + normalize on {dev}"
        f"{f', {threads} thread(s)' if threads else ''}): {device_rate:.0f} img/s")
    limit = statistics.mean(limits)
    result = {**runs[-1], "region_decode": not why_whole, "decode_limit_per_s": limit,
              "decode_limit_samples_per_s": limits, "runs": runs,
              "batch_size": opts.batch_size, "batches": opts.batches, "device": str(dev), "cpu_count": os.cpu_count(),
              "crop": cfg.data.crop, "color": cfg.data.color, "lighting": cfg.data.lighting,
              "device_transform_images_per_s": device_rate, "machine": info}
    log(f"decode limit over the run: {limit:.0f} img/s (samples {', '.join(f'{v:.0f}' for v in limits)}; "
        f"{Spread.of(limits).text()})")
    _ratios(runs, limit, result, log)
    if opts.compare == "torchvision":
        from .loader_torchvision import compare_torchvision

        compare_torchvision(cfg, reader, opts, workers[-1], result, log)
    return result


def _decode_limit_images(reader, opts: LoaderOptions, cfg, dev, log) -> list[bytes]:
    """The images the decode limit is measured on: the pipeline's first timed batches. Logs what they are."""
    import cv2
    import numpy as np

    from ..data.loading.loader import train_batch_indices
    from ..data.loading.memory import keep_freed_memory

    keep_freed_memory()  # as in the loader workers: the decode limit is measured at its best
    batch_size = opts.batch_size
    sample_idx = np.concatenate(train_batch_indices(len(reader), batch_size, 0, 0)[:max(1, 256 // batch_size)])
    blobs = [reader[int(i)][1] for i in sample_idx]
    hw = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape for b in blobs[:32]]
    log(f"data: {opts.data} split {opts.split} ({len(reader)} images, mean "
        f"{np.mean([len(b) for b in blobs]) / 1e3:.0f} kB, about {8 * np.mean([s[1] for s in hw]):.0f}x"
        f"{8 * np.mean([s[0] for s in hw]):.0f}); crop {cfg.data.crop}, colour {cfg.data.color}, lighting "
        f"{cfg.data.lighting}, size {cfg.data.image_size}, batch {batch_size}, device {dev}")
    return blobs


def _log_run(n: int, r: dict, log) -> None:
    log(f"workers {n} ({r['core_plan']}): {r['images_per_s']:.0f} img/s = "
        f"{r['images_per_s_per_worker']:.0f} per worker "
        f"({r['worker_compute_images_per_s']:.0f} img/s building batches, before transfer); peak RSS "
        f"{r['peak_rss_mb_per_worker']:.0f} MB per worker, RSS growth {r['rss_growth_mb_per_worker']:+.1f} MB "
        f"over the timed batches ({r['rss_growth_from_first_batch_mb']:+.1f} MB from the first batch); main "
        f"process CPU {r['main_cpu_ms_per_image']:.2f} ms per image")
    log(f"workers {n}: img/s over windows of the timed batches: "
        f"{Spread.of(r['images_per_s_windows']).text(what='window')}")


def _ratios(runs: list[dict], limit: float, result: dict, log) -> None:
    """Per worker against the decode limit, and N workers against N x one worker (issue 3's two targets)."""
    for r in runs:
        r["per_worker_vs_decode_limit"] = r["images_per_s_per_worker"] / limit
    result["per_worker_vs_decode_limit"] = runs[-1]["per_worker_vs_decode_limit"]
    for r in runs:
        log(f"workers {r['workers']}: per worker {r['per_worker_vs_decode_limit']:.2f} x the decode limit "
            f"(target >= 0.85)")
        if "decode_limit_parallel_per_s" in r:  # how much of the shortfall the machine's busy cores explain
            both = r["decode_limit_parallel_per_s"]
            r["per_worker_vs_parallel_limit"] = r["images_per_s_per_worker"] / both
            log(f"workers {r['workers']}: {r['workers']} cores decoding at once give {both:.0f} img/s each = "
                f"{both / limit:.2f} x the one-core limit; per worker the pipeline is "
                f"{r['per_worker_vs_parallel_limit']:.2f} x that")
    one = next((r for r in runs if r["workers"] == 1), None)
    for r in runs:
        if one is not None and r["workers"] > 1:
            r["scaling"] = r["images_per_s"] / (r["workers"] * one["images_per_s"])
            log(f"workers {r['workers']}: {r['images_per_s'] / one['images_per_s']:.2f} x one worker = "
                f"{r['scaling']:.2f} x {r['workers']} (target >= 0.9 x N on N idle cores)")
    if "scaling" in runs[-1]:
        result["scaling"] = runs[-1]["scaling"]
