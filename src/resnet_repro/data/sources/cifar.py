"""CIFAR-10 / CIFAR-100 from the official python-pickle archives into record shards.

``resnet-repro prepare cifar10 --out data/cifar10`` (or ``cifar100``) takes ``--src ARCHIVE`` (the
``.tar.gz`` file, or a folder holding it), else the download cache, else downloads it from the authors' site.
Downloads must match the archive's published SHA-256; a local archive that does not is used but recorded as
unofficial in the manifest (so a hand-made archive still works, and nobody mistakes it for the real one).

Splits, as in the paper (He et al. 2016, s4.2: "45k/5k train/val split"):

* ``train``: 45,000 of the 50,000 training images;
* ``val``: the other 5,000, held out stratified by class (500 per class on CIFAR-10) by ``--seed`` through
  the mechanism every importer shares (holdout.py); the manifest's ``holdout`` records the seed, rule and
  indices (keys ``train_NNNNN`` keep each image's index in the archive's order, so the split can be checked
  from the keys alone);
* ``test``: the official 10,000-image test set, the one every published CIFAR figure is measured on.

Images are stored as lossless 32x32 RGB PNG. The archive's pickles are read with an unpickler that only
accepts the numpy array types the archive holds, so a crafted archive cannot run code.
"""
from __future__ import annotations

import codecs
import io
import pickle
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import atomic
from ..shards import records
from ..shards.staging import PrepareError, _begin, _identity, encode_png
from .download import SourceError, default_cache, download
from .holdout import HoldoutError, holdout, split_fields


@dataclass(frozen=True)
class CifarSpec:
    name: str
    archive: str
    url: str
    sha256: str  # of the .tar.gz as the authors serve it
    md5: str  # the checksum the authors' page publishes (cross-check)
    folder: str  # top folder inside the archive
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: bytes
    names_key: bytes


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
# SHA-256 of the archives as pinned by keras.datasets (cifar10.py / cifar100.py file_hash) and torchvision's
# prototype datasets (_builtin/cifar.py); the MD5s are the ones on https://www.cs.toronto.edu/~kriz/cifar.html.
SPECS = {
    "cifar10": CifarSpec(
        "cifar10", "cifar-10-python.tar.gz", CIFAR_URL + "cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        b"labels", b"label_names"),
    "cifar100": CifarSpec(
        "cifar100", "cifar-100-python.tar.gz", CIFAR_URL + "cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names"),
}
VAL_SIZE = 5000  # images held out of the 50k training set (the paper's 45k/5k split)


def _numpy_reconstruct():
    try:  # numpy >= 2 moved numpy.core to numpy._core (the old name still works, with a warning)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays, nothing else: the archive's pickles (Python 2, protocol 2)
    need only these, and refusing every other global means a pickle cannot call arbitrary code."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        # Python 3 writes bytes as _codecs.encode(text, "latin1") under protocol 2 (the authors' Python 2
        # pickles use plain strings); a codec call cannot run arbitrary code.
        ("_codecs", "encode"): lambda: codecs.encode,
    }

    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        get = self._allowed.get((module, name))
        if get is None:
            raise SourceError(f"{self.where}: the pickle refers to {module}.{name}, which a CIFAR batch never "
                              "does; refusing to load it (not an official CIFAR archive?)")
        return get()


def locate_archive(spec: CifarSpec, src: Path | None, base_url: str | None = None) -> Path:
    """``src`` (the archive, or a folder holding it; no fallback if given), else the cache, else a download."""
    if src is not None:
        src = Path(src)
        path = src / spec.archive if src.is_dir() else src
        if not path.is_file():
            raise SourceError(f"{path}: file not found (--src must be {spec.archive} or a folder holding it)")
        return path
    dest = default_cache() / spec.archive
    if dest.is_file() and records.sha256_file(dest) == spec.sha256:
        return dest
    url = (base_url or CIFAR_URL) + spec.archive
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    return download(url, dest, spec.sha256, digest=records.sha256_file)


def read_archive(spec: CifarSpec, path: Path) -> dict:
    """{"train": (images [N,32,32,3] uint8 RGB, labels [N]), "test": (...), "class_names": [...]}."""
    def load(tar: tarfile.TarFile, member: str) -> dict:
        name = f"{spec.folder}/{member}"
        try:
            f = tar.extractfile(name)
        except KeyError:
            raise SourceError(f"{path}: no member {name} (not a {spec.name} python archive?)") from None
        if f is None:
            raise SourceError(f"{path}: member {name} is not a regular file")
        where = f"{path}:{name}"
        try:
            obj = _ArrayUnpickler(io.BytesIO(f.read()), where).load()
        except SourceError:
            raise
        except Exception as e:  # a damaged pickle raises any of several types
            raise SourceError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{where}: expected a dict, found {type(obj).__name__}")
        return obj

    def batch(tar, member) -> tuple[np.ndarray, np.ndarray]:
        d = load(tar, member)
        where = f"{path}:{spec.folder}/{member}"
        if b"data" not in d or spec.label_key not in d:
            raise SourceError(f"{where}: missing b'data' or {spec.label_key!r}")
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[spec.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise SourceError(f"{where}: data is {data.dtype} {data.shape} with {len(labels)} labels; expected "
                              "uint8 [N, 3072] (3 planes of 32x32) and N labels")
        # Each row holds the red plane, then green, then blue, each 32x32 row-major -> [N, 32, 32, 3] RGB.
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    try:
        with tarfile.open(path, "r:gz") as tar:
            parts = [batch(tar, m) for m in spec.train_members]
            test = batch(tar, spec.test_member)
            meta = load(tar, spec.meta_member)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise SourceError(f"{path}: not a complete .tar.gz archive ({type(e).__name__}: {e})") from None
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(spec.names_key, [])]
    if not names:
        raise SourceError(f"{path}:{spec.folder}/{spec.meta_member}: no {spec.names_key!r}")
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    for split, (_, labels) in (("train", train), ("test", test)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            bad = labels[(labels < 0) | (labels >= len(names))][0]
            raise SourceError(f"{path}: {split} label {bad} outside the {len(names)} classes of the meta file")
    return {"train": train, "test": test, "class_names": names}


def prepare_cifar(dataset: str, out: Path, src: Path | None = None, seed: int = 0, val_size: int = VAL_SIZE,
                  train_shards: int = 8, eval_shards: int = 2, force: bool = False, base_url: str | None = None,
                  spec: CifarSpec | None = None) -> Path:
    """Prepare `dataset` ("cifar10" | "cifar100") into `out` (all or nothing, see shards/staging.py). `spec` overrides
    the archive description (tests serve a small archive with its own checksum)."""
    spec = spec or SPECS.get(dataset)
    if spec is None:
        raise PrepareError(f"unknown CIFAR data set {dataset!r}; known: {', '.join(SPECS)}")
    out = Path(out)
    path = locate_archive(spec, src, base_url)
    digest = records.sha256_file(path)
    official = digest == SPECS[spec.name].sha256 if spec.name in SPECS else False
    if not official:
        print(f"warning: {path}: SHA-256 {digest} is not the official {spec.archive}'s; preparing it anyway and "
              "recording source_is_official: false", file=sys.stderr)
    data = read_archive(spec, path)  # validate everything before writing anything
    images, labels = data["train"]
    try:
        held_idx, held = holdout(labels, len(data["class_names"]), seed, size=val_size)
    except HoldoutError as e:
        raise PrepareError(f"{path}: --val-size: {e}") from None
    held.update({"from": "the archive's training images", "index_order": "the archive's order (data_batch_1..5; "
                 "key train_NNNNN = index NNNNN)"})
    seeds = {split: {"shuffle_seed": seed + k} for k, split in enumerate(("train", "val", "test"))
             if split != "val" or val_size}  # as written below: a split with no images is left out
    staging = _begin(out, force, identity=_identity({"dataset": spec.name, "source": {"sha256": digest},
                                                     "holdout": held, "splits": seeds}))
    if staging is None:
        return out
    in_val = np.zeros(len(labels), bool)
    in_val[held_idx] = True

    def samples(prefix: str, imgs: np.ndarray, labs: np.ndarray, index: np.ndarray) -> list[records.Sample]:
        # PNG via OpenCV expects BGR; reversing the channels stores true RGB, which decode() turns back to RGB.
        return [records.Sample(f"{prefix}_{i:05d}", encode_png(np.ascontiguousarray(imgs[i][:, :, ::-1])), "png",
                               int(labs[i])) for i in index]

    everything = np.arange(len(labels))
    split_samples = {
        "train": samples("train", images, labels, everything[~in_val]),
        "val": samples("train", images, labels, everything[in_val]),
        "test": samples("test", *data["test"], np.arange(len(data["test"][1]))),
    }
    splits = {}
    for k, (split, items) in enumerate(split_samples.items()):
        if items:
            n_shards = train_shards if split == "train" else eval_shards
            splits[split] = records.write_split(staging, split, items, n_shards, seed + k)
    manifest = {
        "format": records.FORMAT,
        "dataset": spec.name,
        "classes": [str(i) for i in range(len(data["class_names"]))],
        "class_names": data["class_names"],
        "image": {"height": 32, "width": 32, "channels": 3},
        "encoding": {"ext": "png", "lossless": True, "note": "the archive's uint8 RGB pixels as 8-bit RGB PNG"},
        "source": {"archive": str(path), "sha256": digest},
        "source_is_official": official,
        **split_fields("test", "val" if val_size else None, held, splits),
        "notes": {"train": f"{len(labels) - val_size} of the {len(labels)} training images (the paper's 45k/5k split)",
                  "val": f"the other {val_size} training images, held out (stratified by class; see holdout): "
                         "recipe choices and per-epoch evaluations use this split",
                  "test": "the official test set (published CIFAR errors are measured on it); training scores it "
                          "once, at the end"},
    }
    records.write_manifest(staging, manifest)
    atomic.replace_folder(staging, out)
    return out


def write_archive(path: Path, spec: CifarSpec, train: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], class_names: list[str]) -> Path:
    """Write a python-pickle archive in the official layout from RGB [N,32,32,3] images (for tests and for
    making small stand-ins; protocol 2 with bytes keys, as the authors' Python 2 pickles)."""
    def batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
        rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
        return pickle.dumps({b"batch_label": b"made", spec.label_key: [int(x) for x in labels], b"data": rows,
                             b"filenames": [f"{i}.png".encode() for i in range(len(images))]}, protocol=2)

    members = {}
    parts = np.array_split(np.arange(len(train[1])), len(spec.train_members))
    for name, idx in zip(spec.train_members, parts):
        members[name] = batch_bytes(train[0][idx], train[1][idx])
    members[spec.test_member] = batch_bytes(*test)
    members[spec.meta_member] = pickle.dumps({spec.names_key: [n.encode() for n in class_names]}, protocol=2)
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
