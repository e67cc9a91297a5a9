"""``resnet-repro verify DATA``: re-check a prepared data set end to end, in parallel, one task per shard.

For every shard listed in the manifest: present, full size, SHA-256 of the tar and of its index as recorded,
the index agreeing with the tar (every member where the index says, labels equal to the ``.cls`` members,
count as recorded), labels within the class list, and every image decoding to the manifest's channel
count. Per split, the per-class counts must add up to what the manifest says. Problems are returned as
lines naming the shard and key; the command exits non-zero if there is any.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np

from . import records


def _decode_ok(data: bytes, channels: int) -> bool:
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return img is not None and (img.ndim == 2 if channels == 1 else img.shape[2] == channels)


def verify_shard(args: tuple[str, dict, int, int, bool]) -> tuple[list[str], np.ndarray | None]:
    """Check one shard; returns (problems, per-class counts of its index, None where it could not be read)."""
    root, entry, channels, num_classes, decode = args
    root = Path(root)
    tar_path, idx_path = root / entry["name"], root / entry["index"]
    counts = np.zeros(num_classes, np.int64)
    if not tar_path.is_file():
        return [f"{entry['name']}: missing"], None
    problems = []
    size = tar_path.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{entry['name']}: {size} bytes, the manifest says {entry['bytes']} (truncated or changed)")
    elif records.sha256_file(tar_path) != entry["sha256"]:
        problems.append(f"{entry['name']}: SHA-256 does not match the manifest (changed or corrupted after prepare)")
    try:
        if records.sha256_file(idx_path) != entry["index_sha256"]:
            problems.append(f"{entry['index']}: SHA-256 does not match the manifest")
        keys, offsets, sizes, labels = records.load_index(idx_path)
    except OSError as e:
        return problems + [f"{entry['index']}: missing or unreadable ({e})"], None
    except records.RecordError as e:  # damaged: the rest of this shard cannot be checked against it
        return problems + [str(e)], None
    if len(keys) != entry["count"]:
        problems.append(f"{entry['index']}: {len(keys)} samples, the manifest says {entry['count']}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    for k in keys[out_of_range][:10]:
        problems.append(f"{entry['name']} key {k}: label outside the {num_classes} classes")
    counts += np.bincount(labels[~out_of_range], minlength=num_classes)[:num_classes]
    # The index must describe the tar: member <key>.<ext> with its data where the index says, then <key>.cls.
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError) as e:
        return problems + [f"{entry['name']}: not a readable tar ({e})"], counts
    data_members = [m for m in members if not m.name.endswith(".cls")]
    cls_members = {m.name[:-4]: m for m in members if m.name.endswith(".cls")}
    if len(data_members) != len(keys):
        problems.append(f"{entry['name']}: {len(data_members)} images in the tar, {len(keys)} in {entry['index']}")
    bad_decode = []
    with open(tar_path, "rb") as f:
        for m, key, off, n, label in zip(data_members, keys, offsets, sizes, labels):
            where = f"{entry['name']} key {key}"
            if m.name.rsplit(".", 1)[0] != key or m.offset_data != off or m.size != n:
                problems.append(f"{where}: the index does not match the tar member {m.name}")
                continue
            cls = cls_members.get(str(key))
            if cls is None:
                problems.append(f"{where}: no {key}.cls member")
            else:
                f.seek(cls.offset_data)
                if f.read(cls.size).strip() != str(int(label)).encode():
                    problems.append(f"{where}: the .cls member disagrees with the index label {label}")
            if decode:
                f.seek(int(off))
                if not _decode_ok(f.read(int(n)), channels):
                    bad_decode.append(where)
    problems += [f"{w}: image does not decode to {channels} channel(s)" for w in bad_decode]
    return problems, counts


def _init_worker() -> None:
    cv2.setNumThreads(1)


def upgrade(root: str | Path) -> str:
    """Rewrite ``root``'s manifest in this version's format (records.write_manifest adds its own SHA-256). Only
    after verify() found no problem: the shards' and indexes' hashes it checked are what the new hash covers."""
    manifest = records.load_manifest(Path(root))
    if manifest["format"] == records.FORMAT:
        return f"manifest already in {records.FORMAT}"
    old = manifest["format"]
    records.write_manifest(Path(root), manifest)
    return f"manifest upgraded from {old} to {records.FORMAT}"


def verify(root: str | Path, workers: int = 0, decode: bool = True, progress: bool = True) -> tuple[list[str], int]:
    """Returns (problems, number of samples checked)."""
    root = Path(root)
    try:
        manifest = records.load_manifest(root)
    except records.RecordError as e:
        return [str(e)], 0
    channels = int(manifest["image"]["channels"])
    num_classes = len(manifest["classes"])
    tasks = [(str(root), e, channels, num_classes, decode)
             for split in manifest["splits"].values() for e in split["shards"]]
    workers = min(workers or os.cpu_count() or 1, max(len(tasks), 1))
    start = time.monotonic()
    if workers <= 1:
        _init_worker()
        results = list(map(verify_shard, tasks))
    else:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            results = pool.map(verify_shard, tasks, chunksize=1)
    problems = [p for r in results for p in r[0]]
    i = 0
    for name, split in manifest["splits"].items():
        shard_counts = [r[1] for r in results[i:i + len(split["shards"])]]
        i += len(split["shards"])
        # A shard whose index could not be read (named above) leaves its split's class totals unknown, not wrong.
        if "counts_per_class" in split and not any(c is None for c in shard_counts):
            counts = np.sum(shard_counts, axis=0) if shard_counts else np.zeros(num_classes, np.int64)
            listed = np.zeros(num_classes, np.int64)
            listed[:len(split["counts_per_class"])] = split["counts_per_class"][:num_classes]
            if not np.array_equal(counts, listed):
                problems.append(f"{root / records.MANIFEST}: split {name!r}: per-class counts in the manifest differ "
                                f"from the shards' indexes")
        if sum(e["count"] for e in split["shards"]) != split["count"]:
            problems.append(f"{root / records.MANIFEST}: split {name!r}: count {split['count']} is not the sum "
                            "of its shards' counts")
    total = sum(e["count"] for s in manifest["splits"].values() for e in s["shards"])
    if progress:
        rate = total / max(time.monotonic() - start, 1e-9)
        print(f"verify: {len(tasks)} shards, {total} samples {'decoded' if decode else 'indexed'} "
              f"({rate:.0f}/s, {workers} workers)", file=sys.stderr)
    return problems, total
