"""``bench train``'s end-to-end variants: the ``--e2e DECODE[:WORKERS[:AFFINITY[:SHARE]]]`` spec, the loader and
device transform each one builds, and how a split GPU-decode row is named. Timing them is train.py's."""
from __future__ import annotations

AFFINITIES = ("plan", "workers", "none")  # data/loading/cores.py applied in full, to the workers only, or not at all


def parse_e2e(spec: str) -> dict:
    """An end-to-end variant, DECODE[:WORKERS[:AFFINITY[:SHARE]]]: "cpu", "gpu:4", "cpu:auto:none",
    "gpu:8:plan:0.75" (WORKERS: a count or auto; AFFINITY: plan = workers on their cores and the training thread
    on its own, workers = only the workers pinned, none = nothing pinned; SHARE, gpu only: data.gpu_decode_share,
    the part of each batch nvJPEG decodes, the workers the rest; default the recipe's)."""
    from ..data.loading.cores import parse_workers

    parts = spec.split(":")
    if not 1 <= len(parts) <= 4 or parts[0] not in ("cpu", "gpu"):
        raise ValueError(f"--e2e {spec!r}: expected DECODE[:WORKERS[:AFFINITY[:SHARE]]] with DECODE cpu or gpu, "
                         "e.g. gpu:4")
    try:
        workers = parse_workers(parts[1]) if len(parts) > 1 and parts[1] else None
    except ValueError as e:
        raise ValueError(f"--e2e {spec!r}: {e}") from None
    affinity = parts[2] if len(parts) > 2 and parts[2] else "plan"
    if affinity not in AFFINITIES:
        raise ValueError(f"--e2e {spec!r}: affinity {affinity!r} is not one of {', '.join(AFFINITIES)}")
    share = None
    if len(parts) > 3:
        if parts[0] != "gpu":
            raise ValueError(f"--e2e {spec!r}: SHARE (the part nvJPEG decodes) is for gpu decoding only")
        from ..config import DataConfig

        bound = DataConfig.RANGES["gpu_decode_share"]  # data.gpu_decode_share's own
        try:
            share = float(parts[3])
        except ValueError:
            share = None
        if share is None or share not in bound:
            raise ValueError(f"--e2e {spec!r}: share {parts[3]!r} must be a number {bound}")
    return {"decode": parts[0], "workers": workers, "affinity": affinity, "share": share}


def variants(bench, opts) -> list[dict]:
    """The end-to-end variants of `opts` (train.TrainOptions; one from the recipe without --e2e), each with its core
    plan, dataset, device transform and jobs (as many epochs as the steps need, one loader for all); `bench` is
    train.py's session: its config, reader, geometry, channels, memory format and device."""
    from ..data.augment.device import DeviceTransform
    from ..data.loading.cores import available_cpus, plan_cores
    from ..data.loading.loader import BatchDataset, Job, train_batch_indices
    from ..data.loading.memory import keep_batch_memory

    cfg, reader = bench.cfg, bench.reader
    total = opts.warmup + opts.steps
    per_epoch = len(reader) // opts.batch_size
    jobs = []
    for epoch in range(-(-total // per_epoch)):
        jobs += [Job(epoch, s, idx) for s, idx in
                 enumerate(train_batch_indices(len(reader), opts.batch_size, opts.seed, epoch))]
    jobs = jobs[:total]
    keep_batch_memory(bench.dev)  # as training does: the same transform cost
    to_device = DeviceTransform(cfg.data, bench.channels, bench.dev, bench.channels_last)
    default_workers = cfg.data.workers if opts.config else "auto"  # the recipe's worker count, else auto
    e2e = opts.e2e
    if e2e is None:
        e2e = [{"decode": cfg.data.decode, "affinity": "plan",
                "workers": opts.workers if opts.workers is not None else default_workers}]
    variants = []
    for v in e2e:
        v = dict(v, jobs=jobs)
        setting = v.get("workers")
        v["plan"] = plan_cores(available_cpus(), setting if setting is not None else default_workers, bench.dev.type)
        v["workers"] = v["plan"].workers
        if v["decode"] == "gpu":
            from ..data.loading.gpu_decode import EncodedBatchDataset, GpuDecoder, refusals

            why = refusals(cfg.data, bench.dev.type, bench.channels)  # train's rule, checked before any work
            if why:
                raise ValueError(f"--e2e gpu:...: data.decode=gpu {'; '.join(why)}; use --e2e cpu:... here")

            if v.get("share") is None:
                v["share"] = cfg.data.gpu_decode_share
            v["dataset"] = EncodedBatchDataset(reader, bench.geometry, opts.seed, v["share"])
            v["transform"] = GpuDecoder(bench.dev, to_device)
        else:
            v["dataset"] = BatchDataset(reader, bench.geometry, bench.channels, opts.seed, train=True)
            v["transform"] = to_device
        variants.append(v)
    return variants


def share_text(row: dict) -> str:
    """", 75 % on the GPU" for a split GPU-decode row, else nothing."""
    share = row.get("gpu_decode_share")
    return "" if share is None or share >= 1.0 else f", {100 * share:g} % on the GPU"
