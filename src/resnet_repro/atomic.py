"""Files that are either whole or not there: the one way this package replaces a file (and, replace_folder, a
prepared data set's folder).

Every file is written under a temp name next to its target and renamed over it (``os.replace``: atomic within a
folder on POSIX), so a crash, a kill or a full disk never leaves half a file under the real name, and a failed
write removes its temp file and re-raises the OSError; each caller turns that into its own one-line error
naming the file (CheckpointError, RecordError, ...), since what to do about it depends on what was written.

The temp name is fixed, ``<name>.tmp``, not random: a write killed halfway leaves one recognisable file, which
the next write of the same file reuses (and prepare's staging clean-up removes), instead of a trail of random
names. The exception is a download into a shared cache (``unique=True``), where two processes may fetch the
same file at once and must not write into each other's temp file.

``fsync`` (AtomicFile, write_bytes, write_text): whether the bytes reach the disk before the rename. On where a
later run trusts the file without re-checking it (checkpoints, shards, manifests); off where a lost file is
cheap to redo (reports, prepare's per-shard reports), or synced later (prepare's shards, all at once before the
manifest). Writers that take a file name (``replacing``: exports, plots, downloads) are not synced.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data to the disk (a folder: the renames in it) by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, unique: bool = False) -> Iterator[Path]:
    """For writers that take a file name (savefig, torch.onnx.export, safetensors): yields the temp path to
    write, renamed over ``path`` when the block ends, removed if it raises. ``unique``: a fresh name
    (``<name>.XXXX.part``) instead of ``<name>.tmp``; see the module docstring."""
    path = Path(path)
    if unique:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = temp_path(path)
    try:
        yield tmp
        # The mode of a file made with open(): the writer's own temp file (safetensors) or mkstemp's is 0600,
        # which would hide an export or a shared download from the user's other accounts and group.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


class AtomicFile:
    """A binary file being written under its temp name. As a context manager it gives the open file, and at
    the end of the block ``commit``s it (flush, fsync if asked, close, rename over ``path``) or, if the block
    raised, ``discard``s it. Used directly: write to ``file``, then ``commit`` or ``discard``; ``finish`` does
    commit's part before the rename, for a caller that renames several files in a set order (a shard's tar is
    renamed after its index)."""

    def __init__(self, path: Path, fsync: bool = True):
        self.path, self.fsync = Path(path), fsync
        self.tmp = temp_path(self.path)
        self.file = open(self.tmp, "wb")

    def finish(self) -> None:
        if not self.file.closed:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()

    def commit(self) -> None:
        try:
            self.finish()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:  # flushing the rest failed too (disk full): the file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    with AtomicFile(path, fsync) as f:
        f.write(data)


def write_text(path: Path, text: str, fsync: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), fsync)


def replace_folder(staging: Path, out: Path) -> None:
    """The folder version (prepared data sets, built in ``<out>.partial``): make the finished ``staging`` folder
    ``out``. A folder cannot be renamed over a non-empty one, so an old ``out`` is removed first; a crash in
    between leaves no ``out`` and the whole of ``staging``, never a mix of the two."""
    out = Path(out)
    try:
        if out.exists():
            shutil.rmtree(out)
        Path(staging).rename(out)
    except OSError as e:  # a read-only --out or parent, a mount point: hours of work must not end in a traceback
        raise UserError(f"cannot move the finished {staging} to {out} ({e.strerror}); it is complete: move it there "
                        f"yourself, or make {out.parent} writable and run the command again") from None
