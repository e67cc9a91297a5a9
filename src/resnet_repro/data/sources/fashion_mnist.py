"""Importers for raw data sets: each yields what the record writer needs (key, image bytes, label).

Fashion-MNIST comes as four gzip'd IDX files. They are looked for in ``--src``, then in Debian's
``dataset-fashion-mnist`` package, then downloaded from the official mirror into a cache. Every file is
checked against the SHA-256 of its *decompressed* content, which is the same for the official ``.gz`` files
and Debian's recompressed ones.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .. import atomic

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


class SourceError(RuntimeError):
    """A raw input file that is missing, truncated or malformed; the message names the file."""


def default_cache() -> Path:
    return Path(os.environ.get("RESNET_REPRO_CACHE", Path.home() / ".cache" / "resnet-repro"))


def read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"{path}: not a complete gzip file ({e})") from None


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


def gz_content_sha256(path: Path) -> str:
    """SHA-256 of a .gz file's decompressed content: what the Fashion-MNIST checksums name."""
    return hashlib.sha256(read_gz(path)).hexdigest()


def download(url: str, dest: Path, sha256: str, digest=gz_content_sha256, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` via a temp file, renamed only once ``digest(file)`` equals ``sha256``; nothing
    is kept otherwise. ``digest``: SHA-256 of the decompressed content (default) or of the file itself."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A unique temp name: two prepare runs may fill the same cache at once (atomic.replacing).
        with atomic.replacing(dest, unique=True) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            got = digest(tmp)
            if got != sha256:
                raise SourceError(f"{url}: downloaded data has SHA-256 {got}, expected {sha256} "
                                  "(incomplete or altered download; nothing was kept)")
    except OSError as e:
        raise SourceError(f"{url}: download failed ({e})") from None
    return dest


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


def verify_content(path: Path, sha256: str) -> None:
    got = hashlib.sha256(read_gz(path)).hexdigest()
    if got != sha256:
        raise SourceError(f"{path}: decompressed content has SHA-256 {got}, expected {sha256} "
                          "(not the official Fashion-MNIST file)")
