"""Record shards read from object storage: ``data.path`` an fsspec URL (s3://, gs://, http(s)://, file://).

A data set prepared as usual (records.py) and copied as it is to a bucket, say
``aws s3 sync SHARDS s3://bucket/shards``, is read in place: `open_reader` returns a `RemoteRecordReader` for a
URL and a plain `reader.RecordReader` for a local folder, which imports neither fsspec nor a backend.

Integrity, as for local shards (reader.RecordReader): at start-up the manifest is read and checked by
records.load_manifest, every shard's size (one listing, or a HEAD per shard) must be the manifest's, and every
index is fetched whole and must match the manifest's SHA-256 before it is used; its count, offsets and labels
are then checked as locally. The image bytes are not hashed at start-up (as locally: that is `verify`'s job,
minutes on ImageNet). Samples are then read one range request each (bounded memory: one sample, never a whole
shard), and a short read is an error naming the shard and key.

``data.cache_dir``: each shard is then fetched whole on its first use (streamed to a temporary file while it is
hashed, under a lock so that loader workers fetch it once) and used only if its SHA-256 is the manifest's; it
is renamed into place with a note of that check (size, mtime, inode, SHA-256). A cached shard is used again
only when the note still matches the file and the manifest; otherwise it is hashed again, and one that does
not match is fetched again. Cached indexes are re-hashed at every start (they are small).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

from . import reader, records
from .reader import RecordReader
from .records import MANIFEST, RecordError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CHUNK = 8 << 20  # bytes per read when a shard is fetched into the cache


def is_url(path) -> bool:
    return isinstance(path, str) and bool(URL.match(path))


def open_reader(path, split: str | list[str], cache_dir: str | None = None) -> RecordReader:
    """The reader for ``path``: a local folder, or an fsspec URL (optionally cached in ``cache_dir``)."""
    if is_url(path):
        return RemoteRecordReader(path, split, cache_dir or None)
    return RecordReader(path, split)


def load_manifest(path) -> dict:
    return _load_manifest(*_filesystem(path), path) if is_url(path) else records.load_manifest(path)


def _filesystem(url: str):
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RecordError(f"{url}: reading shards from a URL needs fsspec (and for s3:// s3fs, gs:// gcsfs), which "
                          "is not installed; pip install 'resnet-repro[s3]'") from None
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as e:  # a backend not installed, or a protocol fsspec does not know
        raise RecordError(f"{url}: no fsspec backend for this URL ({e})") from None


class _Named(io.BytesIO):
    """Bytes that print as the URL they came from (records.load_index names its input in its messages)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.url = name

    def __str__(self) -> str:
        return self.url


def _why(e: Exception, url: str) -> str:
    """Why a call to fsspec failed, in a few words: the class and the first line of its message, named for the
    common cases. The backends raise their own classes (botocore's NoCredentialsError, EndpointConnectionError;
    aiohttp's ClientResponseError), and they are optional imports, so they are told apart by name, not by type."""
    if isinstance(e, FileNotFoundError):  # fsspec's own for a missing key, an HTTP 404 too
        return "not found (HTTP 404)" if url.startswith(("http://", "https://")) else "not found"
    if isinstance(getattr(e, "status", None), int):  # aiohttp.ClientResponseError: an HTTP error status
        return f"HTTP {e.status} {getattr(e, 'message', '') or ''}".rstrip()
    first = next(iter(str(e).strip().splitlines()), "")
    detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
    names = [c.__name__ for c in type(e).__mro__]
    if "NoCredentialsError" in names:
        return (f"no credentials ({detail}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                "for this bucket")
    if any("Connect" in n for n in names):
        return f"cannot connect ({detail})"
    if any("Timeout" in n for n in names):
        return f"timed out ({detail})"
    return detail


def _fetch(fs, path: str, url: str) -> bytes:
    try:
        return fs.cat_file(path)
    except Exception as e:  # any backend's error (see _why); KeyboardInterrupt and SystemExit pass
        raise RecordError(f"{url}: {_why(e, url)}") from None


def _load_manifest(fs, base: str, url: str) -> dict:
    """The manifest at ``url``, checked by records.load_manifest itself (from a private temporary copy, so that
    every check the local path makes is made here too); its messages name the URL."""
    data = _fetch(fs, f"{base.rstrip('/')}/{MANIFEST}", f"{url.rstrip('/')}/{MANIFEST}")
    with tempfile.TemporaryDirectory(prefix="manifest_") as tmp:
        (Path(tmp) / MANIFEST).write_bytes(data)
        try:
            return records.load_manifest(tmp)
        except RecordError as e:
            raise RecordError(str(e).replace(tmp, url.rstrip("/"))) from None


def _sizes(fs, base: str, url: str, names: list[str]) -> dict[str, int]:
    """Size of each named file below ``base``: one listing where the store has one, a HEAD each otherwise."""
    sizes = {}
    try:
        for info in fs.ls(base, detail=True):
            sizes[info["name"].rstrip("/").rsplit("/", 1)[-1]] = info.get("size")
    except Exception:  # no listing (HTTP without an index page, a listing refused): the HEADs below say why
        pass
    for name in names:
        if sizes.get(name) is None:
            try:
                sizes[name] = fs.size(f"{base}/{name}")
            except FileNotFoundError:
                sizes[name] = None
            except Exception as e:
                raise RecordError(f"{url}/{name}: {_why(e, url)}") from None
    return sizes


class RemoteRecordReader(RecordReader):
    """reader.RecordReader for shards at an fsspec URL; see the module docstring for what is checked when."""

    def __init__(self, url: str, split: str | list[str], cache_dir: str | None = None):
        self.url = url.rstrip("/")
        self.root = self.url  # what messages name (RecordReader.where, the loader's warnings)
        fs, self.base = _filesystem(self.url)
        self.base = self.base.rstrip("/")
        self.manifest = _load_manifest(fs, self.base, self.url)
        self.split, self.shards = reader.select_splits(self.manifest, split, f"{self.url}/{MANIFEST}")
        self.cache = Path(cache_dir) / re.sub(r"[^A-Za-z0-9_.-]", "_", self.url) if cache_dir else None
        if self.cache:
            self.cache.mkdir(parents=True, exist_ok=True)
        sizes = _sizes(fs, self.base, self.url, [e["name"] for e in self.shards])
        self.keys, self.offsets, self.sizes, self.labels, self.shard_ids = reader.stack_indexes(
            [self._index(fs, entry, sizes.get(entry["name"])) for entry in self.shards])
        self._fs, self._fds, self._pid = fs, {}, os.getpid()

    def _index(self, fs, entry: dict, size: int | None):
        """The shard's index, checked as reader.RecordReader checks a local one (after the shard's size)."""
        shard_url, idx_url = f"{self.url}/{entry['name']}", f"{self.url}/{entry['index']}"
        redo = "upload the data set folder again (check it first with `resnet-repro verify` where it was prepared)"
        if size is None:
            raise RecordError(f"shard {shard_url} listed in the manifest is missing")
        if size != entry["bytes"]:
            raise RecordError(f"shard {shard_url} is {size} bytes, manifest says {entry['bytes']} (truncated or "
                              f"changed after prepare); {redo}")
        data = None
        cached = self.cache / entry["index"] if self.cache else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.get("index_sha256"):
                data = None  # stale or damaged: fetched again below
        if data is None:
            data = _fetch(fs, f"{self.base}/{entry['index']}", idx_url)
            if "index_sha256" in entry and hashlib.sha256(data).hexdigest() != entry["index_sha256"]:
                raise RecordError(f"index {idx_url}: SHA-256 differs from the manifest's (changed or damaged after "
                                  f"prepare); {redo}")
            if cached is not None:
                _write_atomic(cached, data)
        return reader.checked_index(idx_url, _Named(data, idx_url), entry, len(self.manifest["classes"]), redo)

    def _fs_here(self):
        if self._fs is None or self._pid != os.getpid():  # a forked loader worker makes its own connections
            self._fs, self._fds, self._pid = _filesystem(self.url)[0], {}, os.getpid()
        return self._fs

    def _fd(self, sid: int) -> int:
        """A descriptor of the cached, verified shard ``sid`` (fetched first if need be)."""
        fs = self._fs_here()
        fd = self._fds.get(sid)
        if fd is None:
            entry = self.shards[sid]
            path = self.cache / entry["name"]
            with open(self.cache / (entry["name"] + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one process fetches; the others wait, then find it verified
                if not _verified(path, entry):
                    self._download(fs, entry, path)
                fd = self._fds[sid] = os.open(path, os.O_RDONLY)
        return fd

    def _download(self, fs, entry: dict, path: Path) -> None:
        url = f"{self.url}/{entry['name']}"
        h, tmp = hashlib.sha256(), path.with_name(path.name + ".part")
        # Over HTTP one streamed GET (block_size=0): a whole shard is wanted, and it then works with a server that
        # ignores Range requests too; elsewhere (s3, gs) range requests of CHUNK bytes.
        http = {"http", "https"} & set([fs.protocol] if isinstance(fs.protocol, str) else fs.protocol)
        try:
            with fs.open(f"{self.base}/{entry['name']}", "rb", block_size=0 if http else CHUNK) as src, \
                    open(tmp, "wb") as dst:
                while block := src.read(CHUNK):
                    h.update(block)
                    dst.write(block)
        except BaseException as e:
            tmp.unlink(missing_ok=True)  # never a partial shard left in the cache, whatever stopped the fetch
            if not isinstance(e, Exception):
                raise  # KeyboardInterrupt, SystemExit
            raise RecordError(f"shard {url}: fetching it into the cache {path.parent} failed ({_why(e, url)})") \
                from None
        if h.hexdigest() != entry["sha256"]:
            tmp.unlink(missing_ok=True)
            raise RecordError(f"shard {url}: SHA-256 differs from the manifest's (changed or damaged after prepare); "
                              "upload the data set folder again")
        os.replace(tmp, path)
        _write_atomic(_note(path), json.dumps(_stamp(path, entry["sha256"])).encode())

    def __getitem__(self, i: int) -> tuple[str, bytes, int]:
        if self.cache is not None:
            return super().__getitem__(i)  # pread from the cached shard
        sid, size, offset = int(self.shard_ids[i]), int(self.sizes[i]), int(self.offsets[i])
        shard_url = f"{self.url}/{self.shards[sid]['name']}"
        try:
            data = self._fs_here().cat_file(f"{self.base}/{self.shards[sid]['name']}", start=offset,
                                               end=offset + size)
        except Exception as e:  # any backend's error (see _why); KeyboardInterrupt and SystemExit pass
            raise RecordError(f"{self.url} {self.where(i)}: cannot be read: {_why(e, shard_url)}") from None
        if len(data) > size:  # more than asked for: the server answered the range request with the whole file
            raise RecordError(f"{self.url} {self.where(i)}: the server ignored the HTTP Range request (it sent "
                              f"{len(data)} bytes for a {size}-byte sample), so samples cannot be read one at a "
                              "time from it; set data.cache_dir to download whole shards, which works with such a "
                              "server")
        if len(data) != size:
            raise RecordError(f"{self.url} {self.where(i)}: read {len(data)} of {size} bytes (shard truncated?)")
        return str(self.keys[i]), data, int(self.labels[i])

    def __getstate__(self):
        state = super().__getstate__()
        state["_fs"] = None
        return state


def _note(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": sha256}


def _verified(path: Path, entry: dict) -> bool:
    """Is the cached shard at ``path`` the manifest's? By its note when that still describes the file, else by
    hashing it again (then noted); a shard that fails is removed, to be fetched again."""
    if not path.is_file():
        return False
    try:
        if json.loads(_note(path).read_text()) == _stamp(path, entry["sha256"]):
            return True
    except (OSError, ValueError):
        pass
    if path.stat().st_size == entry["bytes"] and records.sha256_file(path) == entry["sha256"]:
        _write_atomic(_note(path), json.dumps(_stamp(path, entry["sha256"])).encode())
        return True
    path.unlink()
    return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
