"""Fashion-MNIST: the four official gzip'd IDX files -> record shards (train, val held out of it, test).

The files are looked for in ``--src``, then in Debian's ``dataset-fashion-mnist`` package, then downloaded
from the official mirror into a cache. Every file is checked against the SHA-256 of its *decompressed* content,
which is the same for the official ``.gz`` files and Debian's recompressed ones.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

from ... import atomic
from ..shards import records
from ..shards.staging import PrepareError, _begin, _identity, encode_png
from . import holdout
from .download import SourceError, default_cache, download, gz_content_sha256, read_gz

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
# SHA-256 of each file's decompressed IDX content (checked against Debian's package and the official files).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def parse_idx(raw: bytes, path: Path, expect_dims: int) -> np.ndarray:
    """Parse an IDX file (magic 0x0000 0x08 <dims>, big-endian uint32 sizes, uint8 payload)."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != expect_dims:
        raise SourceError(f"{path}: wrong magic {raw[:4].hex() or '(empty)'}; expected an IDX uint8 file "
                          f"with {expect_dims} dimension(s) (0000080{expect_dims})")
    header = 4 + 4 * expect_dims
    if len(raw) < header:
        raise SourceError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{expect_dims}I", raw[4:header])
    need = int(np.prod(dims))
    if len(raw) - header != need:
        raise SourceError(f"{path}: IDX header says {dims} = {need} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _verified(path: Path, sha256: str) -> bool:
    try:
        return gz_content_sha256(path) == sha256
    except SourceError:
        return False


def locate_fashion_mnist(src: Path | None, base_url: str = FASHION_MNIST_URL,
                         files: dict[str, str] = FASHION_MNIST_FILES) -> dict[str, Path]:
    """Find the four files: ``src`` if given (no fallback: a bad --src is an error), else Debian's package,
    else the download cache (downloading what is missing or fails its checksum)."""
    if src is not None:
        return {name: Path(src) / name for name in files}
    if all((DEBIAN_FASHION_MNIST / n).is_file() for n in files):
        return {name: DEBIAN_FASHION_MNIST / name for name in files}
    cache = default_cache() / "fashion-mnist"
    found = {}
    for name, sha in files.items():
        dest = cache / name
        if not (dest.is_file() and _verified(dest, sha)):
            print(f"downloading {base_url}{name} -> {dest}", file=sys.stderr)
            download(base_url + name, dest, sha)
        found[name] = dest
    return found


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = parse_idx(read_gz(images_path), images_path, 3)
    labels = parse_idx(read_gz(labels_path), labels_path, 1)
    if len(images) != len(labels):
        raise SourceError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return images, labels


FASHION_MNIST_VAL = 1 / 12  # of the training images, by default: 5,000 of the official 60,000 (500 per class)


def prepare_fashion_mnist(out: Path, src: Path | None = None, seed: int = 0, train_shards: int = 16,
                          val_shards: int = 4, force: bool = False, base_url: str = FASHION_MNIST_URL,
                          val_size: int | None = None) -> Path:
    """Fashion-MNIST -> shards, three splits (holdout.py): "train" = the official training images less "val",
    "val" = `val_size` of them (default a twelfth: 5,000 of 60,000) held out, stratified by class, by `seed`;
    "test" = the official 10,000-image test set (the one every published Fashion-MNIST figure is measured on;
    training scores it once, at the end). Images are stored losslessly (PNG)."""
    out = Path(out)
    files = locate_fashion_mnist(src, base_url=base_url)
    # Validate every input before writing anything.
    data = {
        "train": load_idx_pair(files["train-images-idx3-ubyte.gz"], files["train-labels-idx1-ubyte.gz"]),
        "test": load_idx_pair(files["t10k-images-idx3-ubyte.gz"], files["t10k-labels-idx1-ubyte.gz"]),
    }
    label_files = {"train": "train-labels-idx1-ubyte.gz", "test": "t10k-labels-idx1-ubyte.gz"}
    n_classes = len(FASHION_MNIST_CLASSES)
    for split, (images, labels) in data.items():
        if labels.size and labels.max() >= n_classes:
            i = int(np.argmax(labels >= n_classes))
            raise PrepareError(f"{files[label_files[split]]}: label {labels[i]} at index {i}, but Fashion-MNIST "
                               "has 10 classes (0-9); the file is damaged or not Fashion-MNIST's")
    images, labels = data["train"]
    size = round(len(labels) * FASHION_MNIST_VAL) if val_size is None else val_size
    try:
        held_idx, held = holdout.holdout(labels, n_classes, seed, size=size)
    except holdout.HoldoutError as e:
        raise PrepareError(f"{files['train-labels-idx1-ubyte.gz']}: --val-size: {e}") from None
    held.update({"from": "the official training images (train-images-idx3-ubyte)",
                 "index_order": "the official training file's order (key train_NNNNN = index NNNNN)"})
    official = all(_verified(p, FASHION_MNIST_FILES[n]) for n, p in files.items())
    names = ("train", "val", "test") if size else ("train", "test")  # a split with no images is left out
    staging = _begin(out, force, identity=_identity({
        "dataset": "fashion-mnist", "source": {name: str(p) for name, p in files.items()},
        "source_is_official": official, "holdout": held,
        "splits": {name: {"shuffle_seed": seed + k} for k, name in enumerate(names)}}))
    if staging is None:
        return out
    in_val = np.zeros(len(labels), bool)
    in_val[held_idx] = True

    def samples(prefix: str, imgs: np.ndarray, labs: np.ndarray, index: np.ndarray) -> list[records.Sample]:
        return [records.Sample(f"{prefix}_{i:05d}", encode_png(imgs[i]), "png", int(labs[i])) for i in index]

    everything = np.arange(len(labels))
    split_samples = {"train": samples("train", images, labels, everything[~in_val]),
                     "val": samples("train", images, labels, everything[in_val]),
                     "test": samples("test", *data["test"], np.arange(len(data["test"][1])))}
    splits = {}
    for k, name in enumerate(names):
        splits[name] = records.write_split(staging, name, split_samples[name],
                                           train_shards if name == "train" else val_shards, seed + k)
    h, w = images.shape[1:]
    manifest = {
        "format": records.FORMAT,
        "dataset": "fashion-mnist",
        "classes": [str(i) for i in range(10)],
        "class_names": FASHION_MNIST_CLASSES,
        "image": {"height": int(h), "width": int(w), "channels": 1},
        "encoding": {"ext": "png", "lossless": True, "note": "IDX uint8 pixels stored as 8-bit grayscale PNG"},
        "source": {name: str(p) for name, p in files.items()},
        "source_is_official": official,
        **holdout.split_fields("test", "val" if size else None, held, splits),
        "notes": {"train": f"{len(labels) - size} of the {len(labels)} official training images",
                  "val": f"the other {size}, held out (stratified by class, seed {seed}; see holdout): recipe "
                         "choices and per-epoch evaluations use this split",
                  "test": "the official 10,000-image Fashion-MNIST test set; training scores it once, at the end"},
    }
    records.write_manifest(staging, manifest)
    atomic.replace_folder(staging, out)
    return out
