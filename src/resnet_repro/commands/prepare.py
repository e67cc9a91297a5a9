"""`resnet-repro prepare DATASET`: a raw data set (Fashion-MNIST, CIFAR, ImageNet, a class-per-folder tree)
converted into record shards, one prepare per output folder."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .common import whole


def add(sub) -> None:
    pr = sub.add_parser("prepare", help="convert a raw data set into record shards")
    pr.add_argument("dataset", choices=["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder"])
    pr.add_argument("--out", required=True)
    pr.add_argument("--src", help="folder with the raw files (default: the system copy or a download)")
    pr.add_argument("--seed", type=whole(0), default=0, help="shuffle seed and the held-out val split's seed, "
                    "recorded in the manifest")
    pr.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a manifest; take over "
                    "OUT's lock left by a process on another host")
    pr.add_argument("--val-size", type=whole(0), help="fashion-mnist, cifar10/cifar100: official training images held "
                    "out as split 'val', stratified by class (default 5000: fashion-mnist a twelfth of its training "
                    "images, CIFAR the paper's 45k/5k split); the official test set stays split 'test'")
    # imagenet / folder (--src: the folder with train/ and val/ or the Kaggle root; or <class>/<images>).
    default = whole(1, zero="the default")
    pr.add_argument("--train-shards", type=default, default=0, help="imagenet default 1024; folder: ~1250 images each")
    pr.add_argument("--val-shards", type=default, default=0, help="imagenet default 128; folder: ~1250 images each")
    pr.add_argument("--workers", type=whole(1, zero="one per CPU core"), default=0,
                    help="converter processes (default: one per CPU core)")
    pr.add_argument("--max-side", type=whole(1, zero="keep sizes"), default=0, metavar="N",
                    help="shrink images whose longer side exceeds N pixels, re-encoded (default: keep sizes)")
    pr.add_argument("--quality", type=whole(1, 100, zero="keep the JPEG bytes"), default=0, metavar="Q",
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
    pr.set_defaults(func=run)


def run(args) -> int:
    from ..folder_lock import hold_output

    if args.dataset in ("imagenet", "folder") and args.src:
        from ..data.shards.staging import check_out_and_src

        # Before the lock, which makes --out's parent and its lock file: inside a flat --src (class folders
        # directly in it) a folder made there would be read as a class by the next prepare.
        check_out_and_src(Path(args.out), Path(args.src))
    # One prepare per --out: a second one into the same folder would interleave shards with the first's.
    with hold_output(Path(args.out), "a prepare", force=args.force):
        return _prepare(args)


def _prepare(args) -> int:
    from ..data.sources.fashion_mnist import prepare_fashion_mnist

    if args.dataset == "fashion-mnist":
        out = prepare_fashion_mnist(Path(args.out), Path(args.src) if args.src else None, seed=args.seed,
                                    force=args.force, val_size=args.val_size)
        print(f"prepared {out}")
        return 0
    if args.dataset in ("cifar10", "cifar100"):
        from ..data.sources.cifar import VAL_SIZE, prepare_cifar

        val_size = VAL_SIZE if args.val_size is None else args.val_size
        out = prepare_cifar(args.dataset, Path(args.out), Path(args.src) if args.src else None, seed=args.seed,
                            val_size=val_size, force=args.force)
        print(f"prepared {out}")
        return 0
    if args.dataset in ("imagenet", "folder"):
        return _prepare_images(args)
    raise UserError(f"unknown data set {args.dataset!r}")


def _prepare_images(args) -> int:
    from ..data.sources.folder import discover_folder
    from ..data.sources.imagenet import discover_imagenet
    from ..data.shards.prepare import Encoding, prepare_images

    archives = [a for a in (args.train_tar, args.val_tar, args.devkit) if a]
    if archives and (args.dataset != "imagenet" or args.src or len(archives) != 3):
        raise UserError("--train-tar, --val-tar and --devkit go together, with `prepare imagenet` and without --src "
                        "(the official archives: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, "
                        "ILSVRC2012_devkit_t12.tar.gz)")
    if not args.src and not archives:
        raise UserError(f"prepare {args.dataset} needs --src (the folder holding the images)"
                        + (" or --train-tar, --val-tar and --devkit" if args.dataset == "imagenet" else ""))
    if archives:
        from ..data.sources.imagenet_archives import discover_archives

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
