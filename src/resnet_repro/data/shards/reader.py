"""Reading one split of a prepared data set: ``RecordReader``, checked against the manifest when it opens.

The shards' format and the manifest are shards/records.py's; shards/remote.py's reader for a URL shares the
index checks here (``select_splits``, ``checked_index``, ``stack_indexes``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .records import MANIFEST, RecordError, check_index, load_index, load_manifest, sha256_file


def _redo(root: Path) -> str:
    return f"run `resnet-repro verify {root}` to list every damaged file, then prepare the data set again"


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def select_splits(manifest: dict, split: str | list[str] | tuple[str, ...], where) -> tuple[str, list[dict]]:
    """The reader's name for ``split`` (several read as one are joined by '+') and their shard entries, in order;
    a split the manifest lacks is an error naming ``where`` (the manifest's path or URL)."""
    splits = manifest["splits"]
    names = [split] if isinstance(split, str) else list(split)
    for name in names:
        if name not in splits:
            raise RecordError(f"{where}: no split {name!r}; has {', '.join(splits)}")
    return "+".join(names), [entry for name in names for entry in splits[name]["shards"]]


def checked_index(where, source, entry: dict, num_classes: int, redo: str) -> tuple:
    """A shard's index arrays read from `source` (its path, or a file object of its bytes), checked against the
    shard's manifest entry: the sample count, every label a class, every sample inside the shard. A failure is a
    RecordError naming `where` and ending with `redo` (what the user does about it)."""
    try:
        arrays = load_index(source)
        if len(arrays[0]) != entry["count"]:
            raise RecordError(f"index {where} has {len(arrays[0])} samples, manifest says {entry['count']}")
        check_index(where, arrays, entry["bytes"], num_classes)
    except RecordError as e:
        raise RecordError(f"{e}; {redo}") from None
    return arrays


def stack_indexes(per_shard: list[tuple]) -> tuple:
    """(keys, offsets, sizes, labels, shard ids) of a reader: the shards' index arrays end to end, each sample
    tagged with the position of its shard in `per_shard`."""
    empty = (np.array([], dtype=str), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if not per_shard:
        return (*empty, np.zeros(0, np.int32))
    columns = [np.concatenate(col) for col in zip(*per_shard)]
    ids = np.concatenate([np.full(len(a[0]), sid, dtype=np.int32) for sid, a in enumerate(per_shard)])
    return (*columns, ids)


class RecordReader:
    """Random access to one split of a prepared data set: ``reader[i] -> (key, bytes, label)``.

    Opening checks every shard against the manifest (present, full size, index SHA-256 and count, every label
    a class, every sample inside its shard) so that a missing, truncated or relabelled shard is an error at
    start-up, not mid-epoch or a silently wrong result. Hashing every shard's bytes would take minutes on
    ImageNet, so image bytes changed in place (same size) are found by ``resnet-repro verify`` only. File
    handles are opened lazily per process, so a reader can be handed to forked or spawned loader workers.
    """

    def __init__(self, root: str | Path, split: str | list[str] | tuple[str, ...]):
        """`split`: one split, or several read as one (data.train_splits: train + val), in the order given."""
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.split, self.shards = select_splits(self.manifest, split, self.root / MANIFEST)
        per_shard = []
        for entry in self.shards:
            shard = self.root / entry["name"]
            if not shard.is_file():
                raise RecordError(f"shard {shard} listed in the manifest is missing")
            if shard.stat().st_size != entry["bytes"]:
                raise RecordError(f"shard {shard} is {shard.stat().st_size} bytes, manifest says {entry['bytes']} "
                                  f"(truncated or changed after prepare); {_redo(self.root)}")
            idx_path = self.root / entry["index"]
            # The whole index is hashed (small: ~30 bytes a sample), so a rewritten one, say with shifted labels,
            # cannot pass; the shards themselves are only size-checked here, their bytes are verify's job.
            if _sha256_or_none(idx_path) != entry["index_sha256"]:
                state = "missing or unreadable" if not idx_path.is_file() else "SHA-256 differs from the manifest's"
                raise RecordError(f"index {idx_path}: {state} (changed or damaged after prepare); "
                                  f"{_redo(self.root)}")
            per_shard.append(checked_index(idx_path, idx_path, entry, len(self.manifest["classes"]),
                                           _redo(self.root)))
        self.keys, self.offsets, self.sizes, self.labels, self.shard_ids = stack_indexes(per_shard)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    def _fd(self, sid: int) -> int:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file offsets
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(sid)
        if fd is None:
            fd = self._fds[sid] = os.open(self.root / self.shards[sid]["name"], os.O_RDONLY)
        return fd

    def where(self, i: int) -> str:
        return f"shard {self.shards[self.shard_ids[i]]['name']} key {self.keys[i]}"

    def __getitem__(self, i: int) -> tuple[str, bytes, int]:
        sid = int(self.shard_ids[i])
        size = int(self.sizes[i])
        data = os.pread(self._fd(sid), size, int(self.offsets[i]))
        if len(data) != size:
            raise RecordError(f"{self.where(i)}: read {len(data)} of {size} bytes (shard truncated?)")
        return str(self.keys[i]), data, int(self.labels[i])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
