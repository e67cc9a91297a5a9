"""Raw input files, whichever data set: the error that names a bad one, the download cache, gzip'd reads, and
downloads kept only once their SHA-256 is the published one.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

from ... import atomic


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
