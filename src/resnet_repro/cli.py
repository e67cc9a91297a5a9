"""Command line: ``resnet-repro SUBCOMMAND`` (or ``python -m resnet_repro``). See --help of each subcommand.

All argument parsing lives here, one ``_add_*`` function per subcommand (``bench``'s three included); each
handler (``_cmd_*``) turns the options into a call of the module that does the work, importing it only then, so
that ``--help`` and argument errors stay fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import config
from .errors import UserError


def _cmd_model(args) -> int:
    from .models.resnet import SPECS, build_model, count_macs

    spec = SPECS.get(args.name)
    if spec is None:
        raise UserError(f"unknown model {args.name!r}; known: {', '.join(SPECS)}")
    classes = args.num_classes or (1000 if spec.stem == "imagenet" else 10)
    size = args.input_size or spec.input_size
    model = build_model(args.name, classes, args.in_channels, stride_in_3x3=args.stride_in_3x3)
    params = sum(p.numel() for p in model.parameters())
    macs, shape = count_macs(model, size, args.in_channels)
    info = {"model": args.name, "parameters": params, "macs": macs, "input": [1, args.in_channels, size, size],
            "output": list(shape)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.name}: {params:,} parameters ({params / 1e6:.2f} M); {macs / 1e9:.3f} G multiply-adds at "
              f"{args.in_channels}x{size}x{size}; output shape {tuple(shape)}")
    return 0


def _cmd_prepare(args) -> int:
    from .folder_lock import hold_output

    if args.dataset in ("imagenet", "folder") and args.src:
        from .data.prepare import check_out_and_src

        # Before the lock, which makes --out's parent and its lock file: inside a flat --src (class folders
        # directly in it) a folder made there would be read as a class by the next prepare.
        check_out_and_src(Path(args.out), Path(args.src))
    # One prepare per --out: a second one into the same folder would interleave shards with the first's.
    with hold_output(Path(args.out), "a prepare", force=args.force):
        return _prepare(args)


def _prepare(args) -> int:
    from .data.prepare import prepare_fashion_mnist

    if args.dataset == "fashion-mnist":
        out = prepare_fashion_mnist(Path(args.out), Path(args.src) if args.src else None, seed=args.seed,
                                    force=args.force, val_size=args.val_size)
        print(f"prepared {out}")
        return 0
    if args.dataset in ("cifar10", "cifar100"):
        from .data.cifar import VAL_SIZE, prepare_cifar

        val_size = VAL_SIZE if args.val_size is None else args.val_size
        out = prepare_cifar(args.dataset, Path(args.out), Path(args.src) if args.src else None, seed=args.seed,
                            val_size=val_size, force=args.force)
        print(f"prepared {out}")
        return 0
    if args.dataset in ("imagenet", "folder"):
        return _prepare_images(args)
    raise UserError(f"unknown data set {args.dataset!r}")


def _prepare_images(args) -> int:
    from .data.imagenet import discover_folder, discover_imagenet
    from .data.prepare import Encoding, prepare_images

    archives = [a for a in (args.train_tar, args.val_tar, args.devkit) if a]
    if archives and (args.dataset != "imagenet" or args.src or len(archives) != 3):
        raise UserError("--train-tar, --val-tar and --devkit go together, with `prepare imagenet` and without --src "
                        "(the official archives: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, "
                        "ILSVRC2012_devkit_t12.tar.gz)")
    if not args.src and not archives:
        raise UserError(f"prepare {args.dataset} needs --src (the folder holding the images)"
                        + (" or --train-tar, --val-tar and --devkit" if args.dataset == "imagenet" else ""))
    if archives:
        from .data.imagenet_archives import discover_archives

        source = discover_archives(args.train_tar, args.val_tar, args.devkit, args.workers or os.cpu_count() or 1)
        default = {"train": 1024, "val": 128}
    elif args.dataset == "imagenet":
        source = discover_imagenet(args.src)
        default = {"train": 1024, "val": 128}  # the reference recipe's shard counts
    else:
        source = discover_folder(args.src, args.val_fraction, args.seed)
        # About ImageNet's 1,250 images per shard, at least one shard per split.
        default = {k: max(1, round(len(v) / 1250)) for k, v in source.splits.items()}
    shards = {"train": args.train_shards or default["train"], "val": args.val_shards or default.get("val", 1)}
    enc = Encoding(max_side=args.max_side, quality=args.quality, max_pixels=int(args.max_megapixels * 1e6))
    out = prepare_images(source, Path(args.out), shards, seed=args.seed, workers=args.workers, enc=enc,
                         skip_bad=args.skip_bad, force=args.force)
    print(f"prepared {out}")
    return 0


def _cmd_verify(args) -> int:
    from .data.remote import is_url
    from .data.verify import verify

    if is_url(args.data):  # it hashes every byte: where the data set was prepared, not over the network
        raise UserError(f"verify {args.data}: verify checks a local folder; run it where the data set was prepared "
                        "(before uploading it), or on a local copy")
    problems, total = verify(args.data, workers=args.workers, decode=not args.no_decode)
    if problems:
        print(f"{args.data}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        if args.upgrade:
            print(f"{args.data}: not upgraded (its data does not match the manifest)", file=sys.stderr)
        return 1
    print(f"{args.data}: OK ({total} samples)")
    if args.upgrade:
        from .data.verify import upgrade

        print(f"{args.data}: {upgrade(args.data)}")
    return 0


def _cmd_train(args) -> int:
    from .run_folder import recorded
    from .runtime import load_recipe
    from .train import TrainingError, train

    known = {f"{section}.{key}" for section, values in config.Config().to_dict().items() for key in values}
    for key in args.allow_change:
        if key not in known:
            raise UserError(f"--allow-change {key}: not a config key (section.key, e.g. train.epochs)")
    # On a resume the run's recorded profile wins over this machine's class: a run moved to another machine keeps
    # its recipe (epochs, sizes) instead of silently taking another profile's.
    record = recorded(Path(args.out), args.resume) if args.resume else None
    cfg = load_recipe(args.config, args.set, recorded_profile=record and record["config_flat"].get("train.profile"))
    _check_device(cfg.train.device, "config key 'train.device'", "train.device=cpu (or auto)")
    try:
        result = train(cfg, Path(args.out), resume=args.resume, allow_change=tuple(args.allow_change),
                       force=args.force)
    except TrainingError as e:  # e.g. a non-finite loss: the message says which checkpoint is kept
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0 if result else 1


def _load_trained(args):
    """--checkpoint CK, or --torchvision-weights FILE --model NAME --data DIR -> evaluate.Trained."""
    if getattr(args, "torchvision_weights", None):
        if not args.model or not args.data:
            raise UserError("--torchvision-weights needs --model NAME (resnet18 ... resnet152) and --data DIR")
        from .evaluate import trained_from_torchvision

        return trained_from_torchvision(args.torchvision_weights, args.model, args.data)
    if not args.checkpoint:
        raise UserError("give --checkpoint CK (a run's final.pt or checkpoints/ckpt-*.pt)")
    from .evaluate import load_trained

    return load_trained(args.checkpoint, args.weights, args.data)


def _check_device(name: str, what: str, instead: str) -> None:
    """A CUDA device asked for where there is none: one line now, not torch's traceback later."""
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{what} is {name}, but no CUDA device is visible here (torch {torch.__version__}, "
                            f"torch.cuda.is_available() is False); use {instead}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare the resolved paths
        return os.path.realpath(a) == os.path.realpath(b)


def _check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` is, or can be made as, a folder this process can write in (tried, not guessed from the mode
    bits, which do not bind root)."""
    import tempfile

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
    except OSError as e:
        raise UserError(f"{what}: cannot write in {existing} ({e.strerror}); choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(out, inputs=(), flag: str = "--out") -> Path:
    """Before any work: ``out`` must be a file path in a writable folder and none of the command's inputs."""
    out = Path(out)
    for source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise UserError(f"{flag} {out} is this command's own input ({source}); writing it would destroy it: "
                            "choose another file name")
    if out.is_dir():
        raise UserError(f"{flag} {out} is a folder; give a file name (e.g. {out / 'out.json'})")
    _check_writable_folder(out.parent, f"{flag} {out}")
    return out


def _inputs_of(args) -> list:
    """The files `evaluate` / `export` read: a written --out must be none of them."""
    found = []
    for name in ("checkpoint", "torchvision_weights"):
        path = getattr(args, name, None)
        if path:
            found += [path, str(path) + ".sha256"]
    data = getattr(args, "data", None)
    if data:
        found.append(Path(data) / "manifest.json")
    return found


def _write_json(path: str, obj) -> None:
    from .checkpoint import write_atomic

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {path.parent} ({e.strerror})") from None
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def _cmd_evaluate(args) -> int:
    from .data.augment import DecodeError
    from .evaluate import EvalOptions, evaluate_trained, format_table

    if args.out:  # before the evaluation, which can take hours, not after it
        check_output_file(args.out, _inputs_of(args))
    if args.device != "auto":
        _check_device(args.device, "--device", "--device cpu (or auto)")
    try:
        trained = _load_trained(args)
        out = evaluate_trained(trained, EvalOptions(
            protocols=tuple(args.protocol or ["single"]), data=args.data, split=args.split, resize=args.resize,
            crop=args.crop, scales=tuple(args.scales) if args.scales else None, batch_size=args.batch_size,
            workers=args.workers, device=args.device, pad=args.pad, precision=args.precision,
            channels_last=None if args.memory_format is None else args.memory_format == "channels_last"))
    except (ValueError, DecodeError) as e:  # protocol, class list or image size that does not fit; WeightsError
        raise UserError(str(e)) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.out:
        _write_json(args.out, out)
    if args.json:
        print(json.dumps(out))
    else:
        chosen = "" if args.split else " (the default: test where the data set has one, else val)"
        print(f"{out['model']} ({out['weights']}) on {out['data']} split {out['split']}{chosen}, {out['precision']} "
              f"on {out['device']} x{out['world_size']}:")
        print(format_table(out["results"]))
    return 0


def _cmd_report(args) -> int:
    from .report import ReportError, write_report

    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file; report writes a folder (curves.png, report.md)")
        _check_writable_folder(Path(args.out), f"--out {args.out}")
    try:
        paths = write_report(args.run_dir, args.out)
    except ReportError as e:
        raise UserError(str(e)) from None
    if not args.quiet:
        print(Path(paths["markdown"]).read_text())
    print(f"wrote {paths['png']} and {paths['markdown']}")
    return 0


def _cmd_export(args) -> int:
    from .export import ExportError, export_trained

    args.data = None
    check_output_file(args.out, _inputs_of(args))
    try:
        info = export_trained(_load_trained(args), args.format, args.out, check=not args.no_check)
    except (ExportError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"wrote {info['out']} ({info['bytes'] / 1e6:.1f} MB, {info['format']})")
    check = info.get("check")
    if isinstance(check, dict):
        print(f"checked with onnxruntime {check['onnxruntime']}: max |logit difference| {check['max_abs_diff']:.2e} "
              f"on a batch of {check['batch']} at two image sizes")
    elif check:
        print(f"not checked: {check.removeprefix('skipped: ')}")
    return 0


def _cmd_predict(args) -> int:
    from .predict import PredictError, format_predictions, predict

    if args.topk < 1:
        raise UserError(f"--topk {args.topk}: give the number of classes to show, 1 or more")
    if args.device != "auto":
        _check_device(args.device, "--device", "--device cpu (or auto)")
    try:
        trained = _load_trained(args)
        preds = predict(trained, args.images, args.topk, args.protocol, args.device, args.precision)
    except (PredictError, ValueError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(preds) if args.json else format_predictions(preds))
    return 0


def _bench(args, run) -> int:
    """Run a bench, `run(log)`: its ValueErrors are the user's; --json prints one JSON object and nothing else."""
    try:
        result = run((lambda *a, **k: None) if args.json else print)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(result))
    return 0


def _cmd_bench_train(args) -> int:
    from .bench.train import TrainOptions, bench_train, parse_e2e

    def run(log):
        opts = TrainOptions(model=args.model, data=None if args.synthetic else args.data, batch_size=args.batch_size,
                            steps=args.steps, warmup=args.warmup, compile=args.compile_mode or args.compile,
                            precision=args.precision, decode=args.decode, workers=args.workers, device=args.device,
                            channels_last=args.channels_last, config=args.config, overrides=args.set,
                            rounds=args.rounds, e2e=[parse_e2e(spec) for spec in args.e2e] or None)
        return bench_train(opts, log=log)

    return _bench(args, run)


def _cmd_bench_loader(args) -> int:
    from .bench.loader import LoaderOptions, bench_loader
    from .data.cores import parse_workers

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


def _cmd_bench_prepare(args) -> int:
    from .bench.prepare import PrepareOptions, bench_prepare

    if args.archives:
        from .bench.prepare_archives import bench_prepare_archives

        if args.src:
            raise UserError("bench prepare --archives makes its own archive set; drop --src")
        return _bench(args, lambda log: bench_prepare_archives(args.images, args.workers, args.repeats, log=log))
    opts = PrepareOptions(src=args.src, images=args.images, workers=args.workers, repeats=args.repeats)
    return _bench(args, lambda log: bench_prepare(opts, log=log))


def _cmd_env(args) -> int:
    from . import env, runtime

    if args.set and not args.config:
        raise UserError("env --set changes a recipe's values: give the recipe too (--config FILE)")
    try:
        cfg = runtime.load_recipe(args.config, args.set) if args.config else None
        r = env.report(cfg, args.config)
    except runtime.DeviceError as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=1) if args.json else env.format_text(r))
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --help shows the docstring's first paragraph; the rest is for readers of this file.
    p = argparse.ArgumentParser(prog="resnet-repro", description=__doc__.split("\n\n", 1)[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_env, _add_model, _add_prepare, _add_verify, _add_train, _add_evaluate, _add_report, _add_export,
                _add_predict, _add_bench):  # the order --help lists them in
        add(sub)
    return p


def _add_env(sub) -> None:
    ev = sub.add_parser("env", help="this machine (CPU class, cores, memory, torch/CUDA, GPUs) and what a run "
                                    "would choose on it (precision, profile, memory format, loader, decoder)")
    ev.add_argument("--config", help="also show what a run of this recipe would choose here (e.g. "
                                     "configs/fashion_mnist/resnet20.yaml, the make train recipe)")
    ev.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_env)


def _add_model(sub) -> None:
    m = sub.add_parser("model", help="print parameters, multiply-adds and output shape of a model")
    m.add_argument("name")
    m.add_argument("--input-size", type=int, default=0, help="default: 224 for ImageNet nets, 32 for CIFAR nets")
    m.add_argument("--in-channels", type=int, default=3)
    m.add_argument("--num-classes", type=int, default=0)
    m.add_argument("--stride-in-3x3", action="store_true", help="ResNet v1.5 bottleneck")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_model)


def _add_prepare(sub) -> None:
    pr = sub.add_parser("prepare", help="convert a raw data set into record shards")
    pr.add_argument("dataset", choices=["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder"])
    pr.add_argument("--out", required=True)
    pr.add_argument("--src", help="folder with the raw files (default: the system copy or a download)")
    pr.add_argument("--seed", type=int, default=0, help="shuffle seed and the held-out val split's seed, recorded in "
                    "the manifest")
    pr.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a manifest; take over "
                    "OUT's lock left by a process on another host")
    pr.add_argument("--val-size", type=int, help="fashion-mnist, cifar10/cifar100: official training images held "
                    "out as split 'val', stratified by class (default 5000: fashion-mnist a twelfth of its training "
                    "images, CIFAR the paper's 45k/5k split); the official test set stays split 'test'")
    # imagenet / folder (--src: the folder with train/ and val/ or the Kaggle root; or <class>/<images>).
    pr.add_argument("--train-shards", type=int, default=0, help="imagenet default 1024; folder: ~1250 images each")
    pr.add_argument("--val-shards", type=int, default=0, help="imagenet default 128; folder: ~1250 images each")
    pr.add_argument("--workers", type=int, default=0, help="converter processes (default: one per CPU core)")
    pr.add_argument("--max-side", type=int, default=0, metavar="N",
                    help="shrink images whose longer side exceeds N pixels, re-encoded (default: keep sizes)")
    pr.add_argument("--quality", type=int, default=0, metavar="Q",
                    help="re-encode every image as JPEG quality Q (default: keep original JPEG bytes; 90 for "
                         "images shrunk by --max-side)")
    pr.add_argument("--skip-bad", action="store_true",
                    help="leave out undecodable files, listing them in the manifest (default: stop and list them)")
    pr.add_argument("--max-megapixels", type=float, default=100,
                    help="refuse larger images (decompression-bomb guard, checked in the header)")
    pr.add_argument("--train-tar", help="imagenet: ILSVRC2012_img_train.tar as downloaded (read in place, with "
                    "--val-tar and --devkit, instead of --src)")
    pr.add_argument("--val-tar", help="imagenet: ILSVRC2012_img_val.tar as downloaded")
    pr.add_argument("--devkit", help="imagenet: ILSVRC2012_devkit_t12.tar.gz (its meta.mat and val ground truth)")
    pr.add_argument("--val-fraction", type=float, default=0.1,
                    help="folder without train/ and val/: per-class fraction held out as split 'val' (seeded, "
                    "stratified by class: the same mechanism as --val-size)")
    pr.set_defaults(func=_cmd_prepare)


def _add_verify(sub) -> None:
    v = sub.add_parser("verify", help="re-check every shard's checksum and decode every image (exit 1 on problems)")
    v.add_argument("data", help="prepared data folder (with manifest.json)")
    v.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU core)")
    v.add_argument("--no-decode", action="store_true", help="checksums and indexes only")
    v.add_argument("--upgrade", action="store_true", help="after a clean check, rewrite a manifest of an older "
                   "version in this version's format (adding the manifest's own SHA-256)")
    v.set_defaults(func=_cmd_verify)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model from a recipe")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="run folder (config, metrics.jsonl, checkpoints, results)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--resume", metavar="auto|CHECKPOINT", help="auto: newest whole checkpoint in OUT. The run's "
                   "recorded hardware-made choices (precision, memory format, profile, device, loader workers) are "
                   "kept; a pinned --set overrides one, recorded in metrics.jsonl")
    t.add_argument("--allow-change", action="append", default=[], metavar="SECTION.KEY",
                   help="on a resume, let the recipe change this key (repeatable; recorded in metrics.jsonl); other "
                        "changed keys are refused")
    t.add_argument("--force", action="store_true", help="take over OUT's lock left by a process on another host "
                   "(whether it still runs cannot be checked from here)")
    t.set_defaults(func=_cmd_train)


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="top-1/top-5 error of a checkpoint on a prepared split, per test protocol",
                       description="Protocols: single = centre crop; flip = + mirror; 10crop = 4 corners + centre "
                       "and mirrors; multiscale = whole image at shorter sides {224,256,384,480,640} and mirrors "
                       "(the ResNet paper's fully-convolutional test). Sizes default to the run's data.val_resize / "
                       "data.val_size; views are averaged as softmax probabilities. Works under torchrun.")
    e.add_argument("--checkpoint", help="final.pt or checkpoints/ckpt-*.pt of a run")
    e.add_argument("--torchvision-weights", metavar="FILE", help="instead of --checkpoint: a torchvision-layout "
                   "ResNet state_dict (.pth/.safetensors), evaluated as our v1.5 net; needs --model and --data")
    e.add_argument("--model", help="with --torchvision-weights: resnet18|34|50|101|152")
    e.add_argument("--weights", choices=["model", "ema"], default="model", help="ema: the run's EMA weights")
    e.add_argument("--data", help="prepared data folder (default: the one the checkpoint was trained on)")
    e.add_argument("--split", help="split to score, e.g. test or val (default: test where the data set has one, "
                   "else val; the output says which)")
    e.add_argument("--protocol", action="append", choices=["single", "flip", "10crop", "multiscale"],
                   help="repeat for several (one pass over the data); default: single")
    e.add_argument("--resize", type=int, help="shorter side before cropping, pixels (default: data.val_resize)")
    e.add_argument("--crop", type=int, help="crop side, pixels (default: data.val_size or the stored size)")
    e.add_argument("--scales", type=int, nargs="+", help="multiscale shorter sides, pixels (default: the paper's, "
                   "times crop/224)")
    e.add_argument("--pad", type=int, help="10crop: zero border, pixels, before cropping (default: data.pad for "
                   "nets trained with pad-crop and tested at the stored size, else 0)")
    e.add_argument("--batch-size", type=int, default=256, help="views per forward pass")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", choices=config.choices("train", "precision"),
                   help="default: the run's recorded train.precision (auto: chosen for this device)")
    e.add_argument("--memory-format", choices=["nchw", "channels_last"],
                   help="default: the run's recorded train.channels_last")
    e.add_argument("--json", action="store_true", help="print the results as one JSON object")
    e.add_argument("--out", help="also write the JSON here (RUN_DIR/evaluation.json goes into `report`)")
    e.set_defaults(func=_cmd_evaluate)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="plots and a table next to published results, from a run folder")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", help="output folder (default RUN_DIR/report)")
    r.add_argument("--quiet", action="store_true", help="do not print the Markdown report")
    r.set_defaults(func=_cmd_report)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="write a checkpoint's weights as safetensors or ONNX")
    x.add_argument("checkpoint", metavar="CHECKPOINT")
    x.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    x.add_argument("--out", required=True)
    x.add_argument("--weights", choices=["model", "ema"], default="model")
    x.add_argument("--no-check", action="store_true", help="onnx: skip the onnxruntime-vs-PyTorch check")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=_cmd_export)


def _add_predict(sub) -> None:
    pd = sub.add_parser("predict", help="top-5 classes of image files")
    pd.add_argument("images", nargs="+", metavar="IMAGE")
    pd.add_argument("--checkpoint", required=True)
    pd.add_argument("--weights", choices=["model", "ema"], default="model")
    pd.add_argument("--data", help="prepared data folder whose manifest gives the image size (default: the run's)")
    pd.add_argument("--topk", type=int, default=5)
    pd.add_argument("--protocol", choices=["single", "flip", "10crop", "multiscale"], default="single")
    pd.add_argument("--device", default="auto")
    pd.add_argument("--precision", choices=config.choices("train", "precision"),
                    help="default: the run's recorded train.precision")
    pd.add_argument("--json", action="store_true")
    pd.set_defaults(func=_cmd_predict)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="throughput benchmarks")
    bench = b.add_subparsers(dest="bench", required=True)
    _add_bench_train(bench)
    _add_bench_loader(bench)
    _add_bench_prepare(bench)


def _add_bench_train(bench) -> None:
    bt = bench.add_parser("train", help="training img/s: compute alone (synthetic batch on the device) and end to end "
                                        "from record shards, data-wait fraction, peak memory, model FLOP/s")
    bt.add_argument("--model", default="resnet50")
    src = bt.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="compute phase only (the default without --data)")
    src.add_argument("--data", metavar="SHARDS", help="prepared data folder: also time the end-to-end input path")
    bt.add_argument("--batch-size", type=int, default=256, help="per device")
    bt.add_argument("--steps", type=int, default=50, help="timed steps per phase")
    bt.add_argument("--warmup", type=int, default=10, help="untimed steps before each phase")
    bt.add_argument("--compile", action="store_true", help="torch.compile the model (compiles during warm-up)")
    bt.add_argument("--precision", choices=config.choices("train", "precision"),
                    help="default: the config's, else auto (chosen from the hardware: `resnet-repro env` shows it)")
    bt.add_argument("--decode", choices=config.choices("data", "decode"),
                    help="JPEG decoding for --data (default: the config's)")
    bt.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode (implies --compile)")
    bt.add_argument("--workers", help="loader processes, a count or auto (default: the config's, else auto: CPU cores "
                                      "- 2 on a GPU machine; data/cores.py)")
    bt.add_argument("--e2e", action="append", default=[], metavar="DECODE[:WORKERS[:AFFINITY]]",
                    help="an end-to-end variant, repeatable, each after the same compute phase: cpu, gpu:4, "
                         "cpu:auto:none (AFFINITY plan | workers | none; default plan)")
    bt.add_argument("--device", default="auto")
    bt.add_argument("--rounds", type=int, default=1, help="alternate the phases this many times; report medians "
                                                           "(steadier on a shared machine)")
    cl = bt.add_mutually_exclusive_group()
    cl.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                    help="default: the config's train.channels_last (auto: NHWC on GPUs, NCHW on CPUs)")
    cl.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    bt.add_argument("--config", help="recipe whose data section (crop, normalize, ...) the end-to-end phase uses")
    bt.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    bt.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    bt.set_defaults(func=_cmd_bench_train)


def _add_bench_loader(bench) -> None:
    p = bench.add_parser(
        "loader", help="train input pipeline img/s (incl. device-side colour ops) against the one-core JPEG "
                       "decode limit; per-worker rate, scaling, worker RSS")
    p.add_argument("--data", required=True, metavar="SHARDS", help="prepared JPEG data set (e.g. ImageNet, or "
                                                                 "python tools/make_jpeg_shards.py)")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", default="1", help="worker processes; a comma-separated list (1,2,4,auto) runs each "
                                                  "and reports the scaling against 1; auto: as training would")
    p.add_argument("--affinity", choices=["plan", "none"], default="plan",
                   help="plan: cores laid out as in training (data/cores.py; pins only with --device cuda); none: "
                        "no pinning")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30, help="timed batches per run (after 2 x workers + 2 untimed)")
    p.add_argument("--config", help="recipe whose data section is used (default: crop tf_cnn, color tf_cnn, 224)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--device", default="auto", help="where the colour ops run: auto (cuda if available), cpu, cuda")
    p.add_argument("--compare", choices=["torchvision"], help="also time the torchvision pipeline on the same images")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    p.set_defaults(func=_cmd_bench_loader)


def _add_bench_prepare(bench) -> None:
    p = bench.add_parser("prepare", help="copy-mode `prepare folder` img/s against the one-core JPEG decode limit "
                                         "(on photo-like JPEGs it makes, or --src)")
    p.add_argument("--src", help="a class-per-folder data set to time (default: make photo-like JPEGs)")
    p.add_argument("--images", type=int, default=500, help="images to make without --src")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="passes of each measurement; the best is reported")
    p.add_argument("--archives", action="store_true",
                   help="instead: ImageNet from the official archives in place vs extract-then-prepare, on a small "
                        "archive set it makes (--images, --workers; needs scipy)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_prepare)


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.prepare import PrepareError
    from .data.records import RecordError
    from .data.sources import SourceError
    from .export import ExportError
    from .folder_lock import LockError
    from .runtime import DeviceError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ConfigError, CheckpointError, RecordError, SourceError, PrepareError, LockError,
            ExportError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
