"""`resnet-repro bench train | loader | gpu-decode | prepare`: the throughput benchmarks of the package's bench/
(arguments here, the measuring there)."""
from __future__ import annotations

import json
import os

from .. import config
from ..errors import UserError
from .common import whole


def add(sub) -> None:
    b = sub.add_parser("bench", help="throughput benchmarks")
    bench = b.add_subparsers(dest="bench", required=True)
    _add_train(bench)
    _add_loader(bench)
    _add_gpu_decode(bench)
    _add_prepare(bench)


def _add_train(bench) -> None:
    bt = bench.add_parser("train", help="training img/s: compute alone (synthetic batch on the device) and end to end "
                                        "from record shards, data-wait fraction, peak memory, model FLOP/s")
    bt.add_argument("--model", help="a net of models/resnet.py (default: the --config recipe's, else resnet50)")
    src = bt.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="compute phase only (the default without --data)")
    src.add_argument("--data", metavar="SHARDS", help="prepared data folder: also time the end-to-end input path")
    bt.add_argument("--batch-size", type=whole(1), help="per device (default: the --config recipe's for this machine, "
                                                   "else 256)")
    bt.add_argument("--steps", type=whole(1), default=50, help="timed steps per phase")
    bt.add_argument("--warmup", type=whole(0), default=10, help="untimed steps before each phase")
    bt.add_argument("--compile", action="store_true", help="torch.compile the model (compiles during warm-up)")
    bt.add_argument("--precision", choices=config.choices("train", "precision"),
                    help="default: the config's, else auto (chosen from the hardware: `resnet-repro env` shows it)")
    bt.add_argument("--decode", choices=config.choices("data", "decode"),
                    help="JPEG decoding for --data (default: the config's)")
    bt.add_argument("--compile-mode",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode (implies --compile)")
    bt.add_argument("--workers", help="loader processes, a count or auto (default: the config's, else auto: CPU cores "
                                      "- 2 on a GPU machine; data/loading/cores.py)")
    bt.add_argument("--e2e", action="append", default=[], metavar="DECODE[:WORKERS[:AFFINITY[:SHARE]]]",
                    help="an end-to-end variant, repeatable, each after the same compute phase: cpu, gpu:4, "
                         "cpu:auto:none, gpu:8:plan:0.75 (AFFINITY plan | workers | none, default plan; SHARE, gpu "
                         "only: the part of each batch nvJPEG decodes, the workers the rest, default "
                         "data.gpu_decode_share)")
    bt.add_argument("--device", default="auto")
    bt.add_argument("--rounds", type=whole(1), default=1, help="alternate the phases this many times; report medians "
                                                           "(steadier on a shared machine)")
    cl = bt.add_mutually_exclusive_group()
    cl.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                    help="default: the config's train.channels_last (auto: NHWC on GPUs and for bf16 on CPUs, "
                    "NCHW for fp32 on CPUs)")
    cl.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    bt.add_argument("--config", help="recipe whose model, batch (this machine's profile), precision, workers and "
                                     "data section (crop, normalize, ...) apply where the options leave them open")
    bt.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    bt.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    bt.set_defaults(func=_run_train)


def _add_loader(bench) -> None:
    p = bench.add_parser(
        "loader", help="train input pipeline img/s (incl. device-side colour ops) against the one-core JPEG "
                       "decode limit; per-worker rate, scaling, worker RSS")
    p.add_argument("--data", required=True, metavar="SHARDS", help="prepared JPEG data set (e.g. ImageNet, or "
                                                                 "python tools/make_jpeg_shards.py)")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", default="1", help="worker processes; a comma-separated list (1,2,4,auto) runs each "
                                                  "and reports the scaling against 1; auto: as training would")
    p.add_argument("--affinity", choices=["plan", "none"], default="plan",
                   help="plan: cores laid out as in training (data/loading/cores.py; pins only with --device cuda); "
                        "none: no pinning")
    p.add_argument("--batch-size", type=whole(1), default=64)
    p.add_argument("--batches", type=whole(1), default=30, help="timed batches per run (after 2 x workers + 2 untimed)")
    p.add_argument("--config", help="recipe whose data section is used (default: crop tf_cnn, color tf_cnn, 224)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--device", default="auto", help="where the colour ops run: auto (cuda if available), cpu, cuda")
    p.add_argument("--compare", choices=["torchvision"], help="also time the torchvision pipeline on the same images")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    p.set_defaults(func=_run_loader)


def _add_prepare(bench) -> None:
    p = bench.add_parser("prepare", help="copy-mode `prepare folder` img/s against the one-core JPEG decode limit "
                                         "(on photo-like JPEGs it makes, or --src)")
    p.add_argument("--src", help="a class-per-folder data set to time (default: make photo-like JPEGs)")
    p.add_argument("--images", type=whole(1), default=500, help="images to make without --src")
    p.add_argument("--workers", type=whole(1), default=1)
    p.add_argument("--repeats", type=whole(1), default=3, help="passes of each measurement; the best is reported (with "
                                                           "--archives: the median, and the min-max)")
    p.add_argument("--archives", action="store_true",
                   help="instead: ImageNet from the official archives in place vs extract-then-prepare, on a small "
                        "archive set it makes (--images, --workers; needs scipy)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_prepare)


def _bench(args, run) -> int:
    """Run a bench, `run(log)`: its ValueErrors are the user's; --json prints one JSON object and nothing else."""
    try:
        result = run((lambda *a, **k: None) if args.json else print)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(result))
    return 0


def _add_gpu_decode(bench) -> None:
    p = bench.add_parser("gpu-decode", help="data.decode=gpu without a trainer: img/s of the batched nvJPEG call, of "
                                            "it split over threads, with the crops, and of a whole decode-ahead batch")
    p.add_argument("--data", required=True, metavar="SHARDS", help="prepared JPEG data set (ImageNet layout)")
    p.add_argument("--batch-size", type=whole(1), default=256)
    p.add_argument("--batches", type=whole(1), default=10, help="timed batches (after one untimed)")
    p.add_argument("--threads", type=whole(1), default=2, help="threads of the decode_threads phase")
    p.add_argument("--config", help="recipe whose data section is used (default: crop tf_cnn, color tf_cnn, 224)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    p.set_defaults(func=_run_gpu_decode)


def _run_gpu_decode(args) -> int:
    from ..bench.gpu_decode import GpuDecodeOptions, bench_gpu_decode

    opts = GpuDecodeOptions(data=args.data, batch_size=args.batch_size, batches=args.batches, threads=args.threads,
                            config=args.config, overrides=args.set, device=args.device)
    return _bench(args, lambda log: bench_gpu_decode(opts, log=log))


def _run_train(args) -> int:
    from ..bench.e2e import parse_e2e
    from ..bench.train import TrainOptions, bench_train

    if args.e2e and not args.data:  # without data there is no end-to-end phase: the variants would go unmeasured
        raise UserError("bench train --e2e needs --data SHARDS (a prepared data set to time end to end)")

    def run(log):
        opts = TrainOptions(model=args.model, data=None if args.synthetic else args.data, batch_size=args.batch_size,
                            steps=args.steps, warmup=args.warmup, compile=args.compile_mode or args.compile,
                            precision=args.precision, decode=args.decode, workers=args.workers, device=args.device,
                            channels_last=args.channels_last, config=args.config, overrides=args.set,
                            rounds=args.rounds, e2e=[parse_e2e(spec) for spec in args.e2e] or None)
        return bench_train(opts, log=log)

    return _bench(args, run)


def _run_loader(args) -> int:
    from ..bench.loader import LoaderOptions, bench_loader
    from ..data.loading.cores import parse_workers

    try:
        workers = [parse_workers(w) for w in str(args.workers).split(",")]
    except ValueError:
        raise UserError(f"--workers {args.workers!r}: expected a count, auto, or a comma-separated list, e.g. "
                        "1,2,4,auto") from None
    if any(w != "auto" and w < 1 for w in workers):
        raise UserError("--workers: every count must be >= 1 (the decode limit is per worker process)")
    opts = LoaderOptions(data=args.data, workers=workers, batch_size=args.batch_size, batches=args.batches,
                         config=args.config, overrides=args.set, device=args.device, split=args.split,
                         compare=args.compare, affinity=args.affinity)
    return _bench(args, lambda log: bench_loader(opts, log=log))


def _run_prepare(args) -> int:
    from ..bench.prepare import PrepareOptions, bench_prepare

    if args.archives:
        from ..bench.prepare_archives import bench_prepare_archives

        if args.src:
            raise UserError("bench prepare --archives makes its own archive set; drop --src")
        return _bench(args, lambda log: bench_prepare_archives(args.images, args.workers, args.repeats, log=log))
    if args.src and not os.path.exists(args.src):  # a file or an empty folder: discover_folder names it
        raise UserError(f"bench prepare --src {args.src}: folder not found")
    opts = PrepareOptions(src=args.src, images=args.images, workers=args.workers, repeats=args.repeats)
    return _bench(args, lambda log: bench_prepare(opts, log=log))

