"""Record shards: the one on-disk format every data set is converted to.

Layout of a prepared data set folder::

    manifest.json            written last: its presence means every shard it lists is complete; it carries each
                             shard's and index's SHA-256 and its own (manifest_sha256, over its canonical JSON)
    train-00000.tar          WebDataset layout: <key>.<ext> (image bytes) then <key>.cls (label, ASCII)
    train-00000.idx          offset index: numpy .npz with key, offset, size, label per sample
    ...

The tars are plain POSIX tars, so ``tar tf`` and the ``webdataset`` library read them; the index gives random
access (one ``pread`` per sample) without scanning. Tars are written byte-for-byte deterministically (fixed
mtime/owner), so the same inputs and seed give shards with the same SHA-256.

Here: the shard writer (``ShardWriter``, ``write_split``), the manifest (written with its own SHA-256, loaded and
checked) and the index files; reading a split is shards/reader.py's ``RecordReader``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import atomic

MANIFEST = "manifest.json"
# 2: the manifest carries its own SHA-256 (manifest_sha256). A manifest of an older format is read with one
# warning until `resnet-repro verify --upgrade` has checked its data and rewritten it in this one.
FORMAT = "resnet-repro-records/2"
OLDER_FORMATS = ("resnet-repro-records/1",)
_WARNED: set[str] = set()  # manifests already warned about in this process


class RecordError(RuntimeError):
    """A shard, index or manifest that is missing, truncated or inconsistent; the message names it."""


@dataclass
class Sample:
    key: str  # unique within the data set, no dots or slashes (WebDataset groups members by key)
    data: bytes  # encoded image bytes
    ext: str  # "png", "jpg", ...
    label: int


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: Path, samples: list[Sample], fsync: bool = True) -> dict:
    """Write one tar shard and its index atomically (temp files, fsync, rename). Returns its manifest entry."""
    with ShardWriter(path, fsync) as w:
        for s in samples:
            w.add(s.key, s.data, s.ext, s.label)
        return w.close()


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


# A USTAR header holds a member name of up to 100 bytes (longer ones need a '/' to split into its 155-byte
# prefix, and keys have none); the key's own limit is this less the extension.
MAX_MEMBER_NAME = 100


def _write_error(path: Path, e: OSError) -> RecordError:
    hint = " (disk full? free space, then run the command again)" if e.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return RecordError(f"cannot write {path}: {e.strerror or e}{hint}")


class ShardWriter:
    """One shard written sample by sample (``add``), made visible atomically by ``close`` (temp files, fsync,
    rename), which returns its manifest entry; leaving the ``with`` block without ``close`` discards it.

    The tar is written by hand, byte for byte what tarfile.open(mode="w", format=USTAR) + addfile() write
    (header block, data, NUL padding to 512; two zero blocks and padding to a 10240-byte record at the end),
    hashing as it goes: tarfile's per-member overhead and re-reading the shard for its SHA-256 cost ~15 % of
    a prepare worker's time next to JPEG decoding. ``fsync=False`` is for callers that sync every shard
    themselves before writing the manifest (prepare of ImageNet: waiting for the disk after each shard
    stalls its workers)."""

    def __init__(self, path: Path, fsync: bool = True):
        self.path, self.fsync = Path(path), fsync
        try:
            self.out = atomic.AtomicFile(self.path, fsync)
        except OSError as e:  # a read-only or vanished folder
            raise _write_error(atomic.temp_path(self.path), e) from None
        self.offset, self.sha256 = 0, hashlib.sha256()
        self.keys, self.offsets, self.sizes, self.labels = [], [], [], []

    def _write(self, data) -> None:
        self.out.file.write(data)
        self.sha256.update(data)
        self.offset += len(data)

    def _member(self, name: str, data) -> None:
        self._write(_tarinfo(name, len(data)).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        self._write(data)
        self._write(bytes(_padded(len(data)) - len(data)))

    def add(self, key: str, data, ext: str, label: int) -> None:
        """Append one sample; ``data`` (bytes-like) is written before this returns, so its buffer may be reused."""
        if "." in key or "/" in key:
            raise RecordError(f"{self.path.name}: sample key {key!r} must not contain '.' or '/'")
        if len(f"{key}.{ext}".encode()) > MAX_MEMBER_NAME or len(f"{key}.cls".encode()) > MAX_MEMBER_NAME:
            raise RecordError(f"{self.path.name}: sample key {key!r} is too long for a tar header (at most "
                              f"{MAX_MEMBER_NAME} bytes with its extension); shorten the source file's name")
        try:
            self._member(f"{key}.{ext}", data)
        except OSError as e:
            raise _write_error(self.path, e) from None
        self.keys.append(key)
        self.offsets.append(self.offset - _padded(len(data)))  # where this member's data began
        self.sizes.append(len(data))
        self.labels.append(label)
        try:
            self._member(f"{key}.cls", str(int(label)).encode())
        except OSError as e:
            raise _write_error(self.path, e) from None

    def close(self) -> dict:
        idx_path = self.path.with_suffix(".idx")
        try:
            self._write(bytes(2 * tarfile.BLOCKSIZE))
            self._write(bytes(-self.offset % tarfile.RECORDSIZE))
            self.out.finish()
            with atomic.AtomicFile(idx_path, self.fsync) as f:
                np.savez(f, key=np.array(self.keys, dtype=str), offset=np.array(self.offsets, dtype=np.int64),
                         size=np.array(self.sizes, dtype=np.int64), label=np.array(self.labels, dtype=np.int64))
            self.out.commit()  # the tar last: a shard under its real name always has its index
        except OSError as e:  # e.g. the disk filled up: no temp file may stay behind to look like work
            failed = idx_path if self.out.file.closed else self.path
            self.out.discard()
            raise _write_error(failed, e) from None
        return {"name": self.path.name, "index": idx_path.name, "count": len(self.keys), "bytes": self.offset,
                "sha256": self.sha256.hexdigest(), "index_sha256": sha256_file(idx_path)}

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self.out.file.closed:  # not closed: an error, or the caller chose to discard the shard
            self.out.discard()


def shuffled_shards(n: int, num_shards: int, seed: int) -> list[np.ndarray]:
    """Split a seeded permutation of range(n) into `num_shards` nearly equal, contiguous runs."""
    perm = np.random.default_rng(seed).permutation(n)
    return [a for a in np.array_split(perm, min(num_shards, max(n, 1))) if len(a)]


def manifest_sha256(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces), its own ``manifest_sha256`` left out."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(out: Path, manifest: dict) -> None:
    """Write ``manifest`` (in this FORMAT) with its own SHA-256, so that an edit or damage is caught on load."""
    out = Path(out)
    manifest["format"] = FORMAT
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    try:
        atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    except OSError as e:
        raise _write_error(out / MANIFEST, e) from None


def load_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise RecordError(f"{path}: no manifest; prepare the data set first (resnet-repro prepare ...)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in (FORMAT, *OLDER_FORMATS):
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise RecordError(f"{path}: format {got!r}, expected {FORMAT!r}")
    if not isinstance(manifest.get("classes"), list) or not isinstance(manifest.get("splits"), dict):
        raise RecordError(f"{path}: no class list or no splits (damaged?); prepare the data set again")
    image = manifest.get("image")  # training, evaluate and verify read its channels and stored size
    if not (isinstance(image, dict) and all(isinstance(image.get(k), int) and image[k] >= 0
                                            for k in ("height", "width", "channels")) and image["channels"] in (1, 3)):
        raise RecordError(f"{path}: no valid 'image' entry (height, width, channels 1 or 3); damaged or edited after "
                          "prepare; prepare the data set again")
    for name, split in manifest["splits"].items():
        _check_split(path, name, split)
    _check_own_hash(path, manifest)
    return manifest


def _check_own_hash(path: Path, manifest: dict) -> None:
    """This format's manifest must carry its SHA-256 and match it; an older one is read, with one warning."""
    if manifest["format"] != FORMAT:
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            print(f"warning: {path} was written by an older version ({manifest['format']}); run `resnet-repro verify "
                  f"--upgrade {path.parent}` to check its data and record the manifest's own SHA-256",
                  file=sys.stderr)
        return
    if not isinstance(manifest.get("manifest_sha256"), str):
        raise RecordError(f"{path}: no 'manifest_sha256', which {FORMAT} always writes (damaged or edited after "
                          "prepare); prepare the data set again")
    if manifest["manifest_sha256"] != manifest_sha256(manifest):
        raise RecordError(f"{path}: its content does not match its manifest_sha256 (edited or damaged after "
                          "prepare); prepare the data set again")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_split(path: Path, name: str, split) -> None:
    """Every field a reader and verify use, present and of its type: a missing one is this line, not a KeyError."""
    if isinstance(split, dict) and not isinstance(split.get("shards"), list):
        raise RecordError(f"{path}: split {name!r} has no 'shards' list (damaged or edited after prepare); "
                          "prepare the data set again")
    if not (isinstance(split, dict) and isinstance(split.get("count"), int)):
        raise RecordError(f"{path}: split {name!r} has no 'count' (damaged or edited after prepare); prepare the "
                          "data set again")
    for entry in split["shards"]:
        # Plain file names in this folder only: a hand-edited manifest must not send a reader elsewhere.
        if not (isinstance(entry, dict) and _plain(entry.get("name"), ".tar") and _plain(entry.get("index"), ".idx")
                and all(isinstance(entry.get(k), int) for k in ("count", "bytes"))):
            raise RecordError(f"{path}: split {name!r} has a malformed shard entry {entry!r} (damaged?); "
                              "prepare the data set again")
        # Every version of prepare wrote both hashes: one missing is damage, and a reader must never skip the
        # index check (shifted labels) nor verify the shard's bytes.
        for field in ("sha256", "index_sha256"):
            if not (isinstance(entry.get(field), str) and _SHA256.fullmatch(entry[field])):
                raise RecordError(f"{path}: split {name!r} shard {entry['name']}: no '{field}' (a SHA-256 in hex); "
                                  "the manifest was damaged or edited after prepare: prepare the data set again")
    # A shard entry removed from an older manifest (no own SHA-256 to catch it) would otherwise go unread.
    listed = sum(entry["count"] for entry in split["shards"])
    if listed != split["count"]:
        raise RecordError(f"{path}: split {name!r} counts {split['count']} images, its shards {listed} (damaged or "
                          "edited after prepare); prepare the data set again")


def _plain(name, suffix: str) -> bool:
    return isinstance(name, str) and name.endswith(suffix) and "/" not in name and "\\" not in name and name != suffix


def load_index(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(key, offset, size, label) of a shard's index, or RecordError naming the file: a damaged .npz can fail
    in many ways inside numpy (bad zip, short read, pickled arrays refused, wrong shapes)."""
    try:
        with np.load(path, allow_pickle=False) as idx:
            arrays = tuple(idx[k] for k in ("key", "offset", "size", "label"))
    except FileNotFoundError:
        raise RecordError(f"index {path} is missing") from None
    except Exception as e:  # noqa: BLE001 - zipfile, EOFError, ValueError, KeyError...: all mean "damaged"
        raise RecordError(f"index {path} is unreadable ({type(e).__name__}: {e})") from None
    n = len(arrays[0]) if arrays[0].ndim == 1 else -1
    if (n < 0 or any(a.ndim != 1 or len(a) != n for a in arrays) or arrays[0].dtype.kind != "U"
            or any(a.dtype.kind not in "iu" for a in arrays[1:])):
        raise RecordError(f"index {path} is damaged (expected four 1-D arrays of equal length: key strings, "
                          f"integer offset, size, label)")
    return arrays


def check_index(path: Path, arrays, shard_bytes: int, num_classes: int) -> None:
    """Every sample inside its shard and every label one of the data set's classes, or RecordError."""
    keys, offsets, sizes, labels = arrays
    outside = (offsets < 0) | (sizes < 0) | (offsets + sizes > shard_bytes)
    if outside.any():
        i = int(np.argmax(outside))
        raise RecordError(f"index {path}: key {keys[i]} lies outside its {shard_bytes}-byte shard "
                          f"(offset {offsets[i]}, size {sizes[i]})")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise RecordError(f"index {path}: key {keys[i]} has label {labels[i]}, outside the {num_classes} classes "
                          f"of the manifest")


def write_split(out: Path, split: str, samples: list[Sample], num_shards: int, seed: int) -> dict:
    """Shuffle ``samples`` across ``num_shards`` shards with ``seed``; returns the split's manifest entry."""
    shards = []
    for i, idx in enumerate(shuffled_shards(len(samples), num_shards, seed)):
        shards.append(write_shard(Path(out) / f"{split}-{i:05d}.tar", [samples[j] for j in idx]))
    return split_entry(shards, [s.label for s in samples], seed)


def split_entry(shards: list[dict], labels: list[int], seed: int) -> dict:
    counts = np.bincount(np.asarray(labels, dtype=np.int64)).tolist() if len(labels) else []
    return {"count": int(sum(s["count"] for s in shards)), "counts_per_class": counts, "shuffle_seed": seed,
            "shards": shards}
