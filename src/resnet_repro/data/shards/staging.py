"""The all-or-nothing staging every prepare shares: Fashion-MNIST, CIFAR, ImageNet and class-per-folder data sets.

Output is built in ``<out>.partial`` and renamed to ``<out>`` only when every shard and the manifest are
written, so an interrupted prepare never leaves a folder that looks complete. Fashion-MNIST (seconds of work)
starts over cleanly when run again; ImageNet and class-per-folder data sets resume, reusing every finished
shard (see shards/prepare.py).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from . import records


class PrepareError(RuntimeError):
    pass


def _identity(manifest: dict) -> dict:
    """What makes a prepared folder the data set a prepare run asks for: which data set, read from where, split
    and shuffled how. A content digest stands for the source where the manifest has one (the same archive, or
    the official Fashion-MNIST files, found at another path are the same data)."""
    source = manifest.get("source")
    if manifest.get("dataset") == "fashion-mnist" and manifest.get("source_is_official"):
        source = "the official Fashion-MNIST files"
    elif isinstance(source, dict) and "sha256" in source:
        source = {"sha256": source["sha256"]}
    elif isinstance(source, dict) and "root" in source:
        source = {"root": source["root"], "val": source.get("layout", {}).get("val")}
    held = manifest.get("holdout") or {}
    held = {k: held[k] for k in ("seed", "size", "counts_per_class") if k in held} or None
    return {"data set": manifest.get("dataset"), "source": source, "held-out val": held,
            "shuffle seeds": {k: v.get("shuffle_seed") for k, v in manifest.get("splits", {}).items()}}


def _begin(out: Path, force: bool, resumable: bool = False, identity: dict | None = None) -> Path | None:
    """Return the staging folder ``<out>.partial``, or None if ``out`` already holds this complete data set.

    ``identity`` (see _identity) is what this run would write; a complete data set in ``out`` that differs is
    an error rather than "already prepared". A staging folder left by an interrupted run is discarded, unless
    ``resumable``: then its finished shards are reused (see prepare_images)."""
    out = Path(out)
    if (out / records.MANIFEST).is_file() and not force:
        there = _identity(records.load_manifest(out))
        if identity is not None and there != identity:
            diff = "; ".join(f"{k} {there[k]!r} there, {identity[k]!r} asked for" for k in identity
                             if there[k] != identity[k])
            raise PrepareError(f"{out} already holds another data set ({diff}); choose another --out, or add "
                               "--force to replace it")
        print(f"{out}: already prepared (manifest.json present); use --force to rebuild", file=sys.stderr)
        return None
    if out.exists() and any(out.iterdir()) and not (out / records.MANIFEST).is_file():
        raise PrepareError(f"{out}: exists, is not empty and holds no manifest.json; choose an empty or new --out")
    staging = out.with_name(out.name + ".partial")
    try:
        if resumable:
            _work(staging).mkdir(parents=True, exist_ok=True)
            return staging
        if staging.exists():
            shutil.rmtree(staging)  # left by an interrupted run: ours to discard
        staging.mkdir(parents=True)
    except OSError as e:  # e.g. a read-only parent folder, whose lock file was left over and is writable
        raise PrepareError(f"cannot create {staging} ({e.strerror}), where --out {out} is built: "
                           f"{out.parent} must be a writable folder; choose another --out") from None
    return staging


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise PrepareError("PNG encoding failed")
    return buf.tobytes()


def _work(staging: Path) -> Path:
    return Path(staging) / ".work"


def check_out_and_src(out: Path, src: Path) -> None:
    """``--out`` (and its ``.partial`` staging folder) must not lie inside ``--src``, nor ``--src`` inside
    ``--out``: the shards would be read as a class by the next prepare, and --force would delete the source."""
    out, src = Path(out).resolve(), Path(src).resolve()  # (the staging folder is out's sibling: covered too)
    if out == src or src in out.parents:
        raise PrepareError(f"--out {out} is inside --src {src}; choose an --out outside the source folder")
    if out in src.parents:
        raise PrepareError(f"--src {src} is inside --out {out} (--force would delete it); choose another --out")

