"""A discovered image `Source` (sources/imagenet.py, imagenet_archives.py, folder.py) -> record shards: every
image checked by decoding it, odd ones re-encoded, the shards converted in parallel and resumable, committed all
or nothing (shards/staging.py).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ... import atomic
from ..decode.header import BadImage, Header, oddity, read_header
from ..sources.folder import Member
from ..sources.holdout import split_fields
from . import records
from .staging import PrepareError, _begin, _identity, _work


# --- ImageNet and class-per-folder data sets: parallel, resumable ------------------------------------------
#
# The work is cut into one unit per output shard, fixed before any image is read: which files go into which
# shard, in which order, follows from the sorted file list and the shuffle seed alone. A worker converts its
# shard's files, writes the tar and index atomically (records.write_shard), then a small report next to it
# (<staging>/.work/<shard>.json: the shard's checksums, the oddities and bad files found, and a hash of
# everything the shard's bytes depend on). A re-run reuses a shard only when that report exists, the plan
# hash matches and the shard's SHA-256 still matches the report; anything else is redone. Since the bytes
# of a shard are a pure function of its plan, a run killed at any point and run again gives the same shards
# as an uninterrupted run. The manifest is assembled from the reports and written last.

MAX_PIXELS = 100_000_000  # decompression-bomb guard: ImageNet's largest image is ~12 MP (4288x2848)
ODDITY_QUALITY = 95  # JPEG quality for files that are not already 3-channel JPEGs (near-transparent re-encode)
RESIZE_QUALITY = 90  # default JPEG quality with --max-side (FFCV's ImageNet writer: q90)
CONVERTER = 1  # bump when convert_image changes its output, so that old staged shards are not reused


@dataclass(frozen=True)
class Encoding:
    max_side: int = 0  # pixels; longer sides are shrunk to this and re-encoded (0 = keep every size)
    quality: int = 0  # JPEG quality for re-encoded images; 0 = RESIZE_QUALITY / ODDITY_QUALITY; >0 re-encodes all
    max_pixels: int = MAX_PIXELS


def _undecodable(hdr: Header) -> BadImage:
    return BadImage(f"cannot be decoded ({hdr.fmt}, {hdr.width}x{hdr.height}; truncated or corrupt)")


def convert_image(data: bytes, enc: Encoding) -> tuple[bytes, str | None, str | None, tuple[int, int]]:
    """Check one source image by decoding it; returns (bytes to store, oddity, action, (height, width)).

    Ordinary JPEGs are kept byte for byte (unless --max-side shrinks them or --quality re-encodes all);
    anything else (CMYK, grayscale, PNG, ...) is decoded to RGB and stored as a JPEG at ODDITY_QUALITY, so
    that every stored sample decodes to 3 channels with any JPEG decoder."""
    hdr = read_header(data)
    if hdr.width * hdr.height > enc.max_pixels:
        raise BadImage(f"refused: the header says {hdr.width}x{hdr.height} = {hdr.width * hdr.height / 1e6:.0f} MP, "
                       f"over the {enc.max_pixels / 1e6:.0f} MP limit against decompression bombs")
    odd = oddity(hdr)
    shrink = bool(enc.max_side) and max(hdr.width, hdr.height) > enc.max_side
    if odd is None and not shrink and not enc.quality:
        # Kept byte for byte, so only the check needs a decode, and it runs at 1/8 scale: libjpeg still parses
        # every marker and entropy-decodes every coefficient of every scan (where all decode errors and corrupt-
        # data warnings arise) but skips most of the inverse DCT, upsampling and colour conversion, which cannot
        # fail. 2.5-3x faster than a full decode; the same files pass and fail (tests/test_prepare_imagenet.py).
        if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8) is None:
            raise _undecodable(hdr)
        return data, None, None, (hdr.height, hdr.width)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # BGR; CMYK/gray/alpha -> 3 channels
    if img is None:
        raise _undecodable(hdr)
    h, w = img.shape[:2]
    if shrink:
        s = enc.max_side / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    quality = enc.quality or (RESIZE_QUALITY if shrink else ODDITY_QUALITY)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BadImage("JPEG re-encoding failed")
    action = f"stored as RGB JPEG q{quality}" + (f", resized to {w}x{h}" if shrink else "")
    return buf.tobytes(), odd, action, (h, w)


@dataclass
class ShardJob:
    split: str
    name: str  # e.g. train-00042.tar
    staging: str
    items: list[tuple[str, str | Member, str, int]]  # (key, path or archive member, rel, label)
    enc: Encoding
    num_classes: int
    skip_bad: bool = False


def _report_path(job: ShardJob) -> Path:
    return _work(Path(job.staging)) / (job.name + ".json")


def _plan_hash(job: ShardJob) -> str:
    """Everything the shard's bytes depend on: the files (with size and mtime, so an edited source is
    redone), their keys, labels and order, the encoding options, and the converter and OpenCV versions."""
    h = hashlib.sha256(json.dumps([records.FORMAT, CONVERTER, cv2.__version__, asdict(job.enc)]).encode())
    for key, path, rel, label in job.items:
        try:
            st = os.stat(path.archive if isinstance(path, Member) else path)
            stamp = (st.st_size, st.st_mtime_ns) + ((path.offset, path.size) if isinstance(path, Member) else ())
        except OSError:
            stamp = None
        h.update(json.dumps([key, rel, label, stamp]).encode())
    return h.hexdigest()


def _reusable(job: ShardJob, plan: str) -> dict | None:
    """The report of an earlier run if its shard is complete and was made from the same plan."""
    try:
        report = json.loads(_report_path(job).read_text())
        entry = report["entry"]
        tar, idx = Path(job.staging) / entry["name"], Path(job.staging) / entry["index"]
        if (report["plan"] == plan and tar.stat().st_size == entry["bytes"]
                and records.sha256_file(tar) == entry["sha256"] and records.sha256_file(idx) == entry["index_sha256"]):
            return report
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _read_into(path: str | Member, buf: bytearray) -> tuple[memoryview, bytearray]:
    """The file's (or archive member's) bytes as a view of ``buf`` (grown when too small): one buffer for every
    file of a shard instead of a fresh allocation each, which costs page faults on every image."""
    if isinstance(path, Member):
        return _read_member(path, buf)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size + 1 > len(buf):
            buf = bytearray(2 * size + 1)
        view, n = memoryview(buf), 0
        while n <= size and (got := f.readinto(view[n:size + 1])):  # one byte more than fstat says: growth shows
            n += got
    if n != size:
        raise OSError(f"changed size while being read (fstat said {size} bytes, read {n})")
    return view[:n], buf


def _read_member(m: Member, buf: bytearray) -> tuple[memoryview, bytearray]:
    if m.size > len(buf):
        buf = bytearray(2 * m.size)
    view, n = memoryview(buf), 0
    with open(m.archive, "rb", buffering=0) as f:
        f.seek(m.offset)
        while n < m.size and (got := f.readinto(view[n:m.size])):
            n += got
    if n != m.size:  # the archive shrank since it was indexed
        raise OSError(f"{m.archive} ends {m.size - n} bytes into this member (truncated since it was indexed?)")
    return view[:n], buf


def run_shard(job: ShardJob) -> dict:
    """Convert one shard's files and write the shard (or reuse an identical earlier one). Returns its report;
    with bad files (and --skip-bad off) nothing is written and the report lists them."""
    plan = _plan_hash(job)
    report = _reusable(job, plan)
    if report is not None:
        report["reused"] = True
        return report
    odd, bad, counts, sides = [], [], np.zeros(job.num_classes, np.int64), []
    buf = bytearray(1 << 20)
    # No fsync per shard (it stalls the worker on the disk): a reused shard is re-hashed against its report, so
    # a torn one is redone, and prepare_images syncs every shard before it writes the manifest.
    with records.ShardWriter(Path(job.staging) / job.name, fsync=False) as writer:
        for key, path, rel, label in job.items:
            try:
                data, buf = _read_into(path, buf)
                stored, kind, action, (h, w) = convert_image(data, job.enc)
            except (OSError, BadImage) as e:
                bad.append({"split": job.split, "file": rel, "key": key, "error": str(e)})
                continue
            if kind is not None:
                odd.append({"split": job.split, "file": rel, "key": key, "kind": kind, "action": action})
            writer.add(key, stored, "jpg", label)  # written now: `data` views the buffer the next file reuses
            counts[label] += 1
            sides.append((h, w, len(stored)))
        stats = np.array(sides, np.int64).reshape(-1, 3)
        report = {"split": job.split, "name": job.name, "plan": plan, "oddities": odd, "bad": bad,
                  "counts_per_class": counts.tolist(), "reused": False,
                  "stats": {"images": len(sides), "sum_height": int(stats[:, 0].sum()),
                            "sum_width": int(stats[:, 1].sum()),
                            "min_side": int(stats[:, :2].min()) if len(sides) else 0,
                            "max_side": int(stats[:, :2].max()) if len(sides) else 0, "bytes": int(stats[:, 2].sum())}}
        if bad and not job.skip_bad:
            return report  # shard discarded: prepare stops once every shard is checked, listing all bad files
        report["entry"] = writer.close()
    path = _report_path(job)
    try:
        # After the shard: its presence vouches for the shard. No fsync, as for the shard (see above).
        atomic.write_text(path, json.dumps(report), fsync=False)
    except OSError as e:  # a full disk: the shard is redone next time, and no half-written report stays
        raise PrepareError(f"cannot write {path}: {e.strerror or e} (disk full? free space, then run prepare "
                           "again; finished shards are reused)") from None
    return report


def _plan_jobs(source, staging: Path, shards: dict[str, int], seed: int, enc: Encoding,
               skip_bad: bool) -> tuple[list[ShardJob], dict[str, int]]:
    jobs, seeds = [], {}
    for s, (split, items) in enumerate(source.splits.items()):
        seeds[split] = seed + s  # train: seed, val: seed + 1 (as the Fashion-MNIST importer)
        for i, idx in enumerate(records.shuffled_shards(len(items), shards[split], seeds[split])):
            chosen = [(items[j].key, items[j].path if isinstance(items[j].path, Member) else str(items[j].path),
                       items[j].rel, items[j].label) for j in idx]
            jobs.append(ShardJob(split, f"{split}-{i:05d}.tar", str(staging), chosen, enc, len(source.classes),
                                 skip_bad))
    return jobs, seeds


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one core per worker: the parallelism is the worker processes


def _run_jobs(jobs: list[ShardJob], workers: int, progress: bool):
    """Yield each job's report as it finishes, with a progress line every few seconds on stderr."""
    total = sum(len(j.items) for j in jobs)
    start = last = time.monotonic()
    done = images = reused = 0
    if workers <= 1:
        _init_worker()
        results = map(run_shard, jobs)
        pool = None
    else:
        # spawn, not fork: the parent may hold OpenCV / BLAS thread pools, which do not survive a fork.
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
        results = pool.imap_unordered(run_shard, jobs)  # one shard per task: shards are the unit of resumption
    try:
        for report in results:
            done += 1
            reused += report["reused"]
            images += report["stats"]["images"] + len(report["bad"])
            now = time.monotonic()
            if progress and (now - last > 10 or done == len(jobs)):
                last = now
                rate = images / max(now - start, 1e-9)
                eta = (total - images) / rate if rate > 0 else 0
                print(f"prepare: {done}/{len(jobs)} shards ({reused} reused), {images}/{total} images, "
                      f"{rate:.0f} img/s, ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)
            yield report
    finally:
        if pool is not None:
            pool.terminate()  # on an error or Ctrl-C too: finished shards stay for the next run
            pool.join()


def _images_identity(source, seed: int) -> dict:
    # As prepare_images' manifest records them (source root and layout; train: seed, val: seed + 1).
    return _identity({"dataset": source.dataset, "holdout": source.holdout,
                      "source": {"root": str(Path(source.root).resolve()), "layout": source.layout},
                      "splits": {split: {"shuffle_seed": seed + s} for s, split in enumerate(source.splits)}})


def prepare_images(source, out: Path, shards: dict[str, int], seed: int = 0, workers: int = 0,
                   enc: Encoding = Encoding(), skip_bad: bool = False, force: bool = False,
                   progress: bool = True) -> Path:
    """A discovered ImageNet / folder source (see sources/) -> shards + manifest in ``out``; resumable.

    ``shards`` gives the number of shards per split; ``workers`` processes convert shards in parallel
    (0 = one per CPU core)."""
    out = Path(out)
    staging = _begin(out, force, resumable=True, identity=_images_identity(source, seed))
    if staging is None:
        return out
    workers = workers or os.cpu_count() or 1
    jobs, seeds = _plan_jobs(source, staging, shards, seed, enc, skip_bad)
    reports = {r["name"]: r for r in _run_jobs(jobs, workers, progress)}
    reports = [reports[j.name] for j in jobs]  # back in shard order
    bad = [b for r in reports for b in r["bad"]]
    if bad and not skip_bad:
        lines = "\n".join(f"  {b['file']}: {b['error']}" for b in bad)
        raise PrepareError(f"{len(bad)} source file(s) cannot be used:\n{lines}\nFix or remove them, or re-run with "
                           f"--skip-bad to leave them out (they are then listed in the manifest). The shards already "
                           f"written in {staging} are reused by the next run.")
    splits = {}
    for split in source.splits:
        mine = [r for r in reports if r["split"] == split]
        counts = np.sum([r["counts_per_class"] for r in mine], axis=0, dtype=np.int64)
        n = sum(r["stats"]["images"] for r in mine)
        nonempty = [r["stats"] for r in mine if r["stats"]["images"]]
        splits[split] = {
            "count": n, "counts_per_class": counts.tolist(), "shuffle_seed": seeds[split],
            "shards": [r["entry"] for r in mine],
            "image_stats": {
                "mean_height": sum(r["stats"]["sum_height"] for r in mine) / max(n, 1),
                "mean_width": sum(r["stats"]["sum_width"] for r in mine) / max(n, 1),
                "min_side": min((s["min_side"] for s in nonempty), default=0),
                "max_side": max((s["max_side"] for s in nonempty), default=0),
                "mean_bytes": sum(r["stats"]["bytes"] for r in mine) / max(n, 1)},
        }
    oddities = [o for r in reports for o in r["oddities"]]
    kinds: dict[str, int] = {}
    for o in oddities:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    reencode = bool(enc.max_side or enc.quality)
    manifest = {
        "format": records.FORMAT,
        "dataset": source.dataset,
        "classes": source.classes,
        "class_names": source.class_names,
        # Variable-size images: height/width 0 say "no single stored size" (as sources/synthetic.py).
        "image": {"height": 0, "width": 0, "channels": 3},
        "encoding": {
            "ext": "jpg", "lossless": False,
            "mode": "reencode" if reencode else "copy",
            "max_side": enc.max_side, "quality": enc.quality or (RESIZE_QUALITY if enc.max_side else None),
            "oddity_quality": enc.quality or ODDITY_QUALITY,
            "note": ("JPEGs whose longer side exceeds max_side are shrunk (INTER_AREA) and re-encoded; "
                     if enc.max_side else "") + ("every image re-encoded at `quality`; " if enc.quality else
                                                 "ordinary 3-channel JPEGs kept byte for byte; ")
                    + "other files (CMYK/grayscale JPEG, PNG, ...) stored as RGB JPEG at oddity_quality",
        },
        "max_pixels": enc.max_pixels,
        "source": {"root": str(Path(source.root).resolve()), "layout": source.layout},
        # ImageNet: ILSVRC-2012 val is the published evaluation split (its test labels are not public), and no
        # split is held out for recipe choices, as in the published protocol. A folder: no published protocol.
        **split_fields("val" if source.dataset == "imagenet" else None, "val" if "val" in splits else None,
                       source.holdout, splits),
        **({"notes": {"val": "ILSVRC-2012 val, the published evaluation split (every published ImageNet figure is "
                             "measured on it); no split is held out for recipe choices, as in the published "
                             "protocol"}} if source.dataset == "imagenet" else {}),
        "oddities": {"counts": kinds, "files": oddities},
        "skip_bad": skip_bad,
        "skipped_bad_files": bad,
    }
    # Clear out what no longer belongs: temp files of killed runs, shards of an earlier plan. The reports go
    # only after the rename, so a run killed before it still reuses every shard.
    keep = {e[k] for s in splits.values() for e in s["shards"] for k in ("name", "index")} | {_work(staging).name}
    for p in staging.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for name in sorted(keep - {_work(staging).name}):  # durable before the manifest says they are complete
        atomic.fsync_path(staging / name)
    records.write_manifest(staging, manifest)
    atomic.replace_folder(staging, out)
    shutil.rmtree(_work(out), ignore_errors=True)
    if progress:
        print(f"prepared {out}: " + ", ".join(f"{k} {v['count']} images in {len(v['shards'])} shards"
                                              for k, v in splits.items())
              + (f"; oddities {kinds}" if kinds else "") + (f"; skipped {len(bad)} bad file(s)" if bad else ""),
              file=sys.stderr)
    return out
