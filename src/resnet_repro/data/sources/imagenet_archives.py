"""ImageNet (ILSVRC-2012) straight from the official archives, with nothing extracted to disk.

    ILSVRC2012_img_train.tar      1,000 inner tars <wnid>.tar, each holding that class's <wnid>_<n>.JPEG
    ILSVRC2012_img_val.tar        flat: ILSVRC2012_val_<n>.JPEG
    ILSVRC2012_devkit_t12.tar.gz  ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}

The result is the same `Source` (folder.py) as the extracted folders give, with every image a
`folder.Member`: a byte range of an archive that shards/prepare.py reads in place (open, seek, read). Classes,
keys, labels and order are those of the folder path (sorted wnids; files in sorted path order; val labelled
through the ground truth and meta.mat), so the same seed gives shards with the same SHA-256 either way.

Indexing reads tar headers only: the outer train tar's 1,000 headers, seeking past each inner tar, then, in
worker processes when there are many, the headers inside each inner tar through a file object bounded to its
byte range. A tar stops at a damaged header without an error (tarfile ends its member list there), so every
walk must end on the zero block that closes a tar, and every member must lie inside the file: a damaged inner
tar or a truncated outer tar is then one line naming it, before anything is written.
"""
from __future__ import annotations

import io
import multiprocessing
import re
import tarfile
from pathlib import Path

from .download import SourceError
from .folder import Item, Member, Source, _check_key_lengths, _check_unique
from .imagenet import (GROUND_TRUTH, IMAGE_SUFFIXES, META_MAT, _flat_val, _imagenet_key, devkit_val_labels,
                       read_ground_truth, read_meta_mat)

WNID_TAR = re.compile(r"(n\d{8})\.tar")
INNER_PER_PROCESS = 16  # inner tars below which indexing stays in this process: a worker's start costs more


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file, as a file of their own (what tarfile reads an inner tar from)."""

    def __init__(self, f, start: int, size: int):
        super().__init__()
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self.size - self.pos))
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(memoryview(b)[:n]) if n else 0
        self.pos += got
        return got


def _first_line(e: BaseException) -> str:
    """An exception's message cut to one line: tarfile's "could not be opened" lists every compression it
    tried on lines of their own, and an error must stay one line."""
    text = str(e).strip()
    return text.splitlines()[0].rstrip(":") if text else type(e).__name__


def walk_tar(f, size: int, where: str) -> list[tarfile.TarInfo]:
    """The members of the tar in ``f`` (``size`` bytes), from its headers alone; SourceError naming ``where`` if
    it is not a tar, is damaged, or ends early."""
    members, failed = [], None
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:  # headers only: tarfile seeks past each member's data
                members.append(m)
            end = tar.offset  # where the walk stopped: the closing zero block of an intact tar
    except (tarfile.TarError, EOFError, OSError) as e:
        failed = e  # ("unexpected end of data" when the last member read runs past the end: named below)
    for m in members:
        if m.offset_data + (m.size if m.isreg() else 0) > size:
            raise SourceError(f"{where}: truncated ({m.name} needs bytes up to {m.offset_data + m.size}, the tar "
                              f"has {size}); download it again")
    if failed is not None:
        raise SourceError(f"{where}: not a readable tar ({_first_line(failed)}); download it again")
    f.seek(end)
    if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise SourceError(f"{where}: damaged or truncated at byte {end} (no tar header nor end-of-archive block "
                          f"there, after {len(members)} member(s)); download it again")
    return members


def _visible(name: str) -> bool:
    return not any(part.startswith(".") for part in name.split("/") if part)  # as folder.list_files


def index_inner(task: tuple[str, str, int, int]) -> list[tuple[str, int, int]]:
    """One inner tar of the train archive, read by byte range: (member name, absolute offset, size) of each
    image, in the folder path's order (sorted by path)."""
    archive, name, start, size = task
    with open(archive, "rb") as f:
        members = walk_tar(_Window(f, start, size), size, f"{archive}: inner tar {name} (bytes {start}-{start + size})")
    found = [(m.name, start + m.offset_data, m.size) for m in members if m.isreg() and _visible(m.name)]
    return sorted(found, key=lambda t: Path(t[0]).parts)


def _outer_members(path: Path) -> list[tarfile.TarInfo]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return walk_tar(f, size, str(path))
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None


def _train_items(train_tar: Path, workers: int) -> tuple[list[str], list[Item]]:
    tasks, stray = [], []
    for m in _outer_members(train_tar):
        if not _visible(m.name) or m.isdir():
            continue
        match = WNID_TAR.fullmatch(m.name)
        if not (m.isreg() and match):
            stray.append(m.name)
        else:
            tasks.append((str(train_tar), m.name, m.offset_data, m.size))
    if stray:
        raise SourceError(f"{train_tar}: {len(stray)} member(s) that are not per-class <wnid>.tar files, e.g. "
                          f"{stray[0]}; is this ILSVRC2012_img_train.tar?")
    if not tasks:
        raise SourceError(f"{train_tar}: no per-class <wnid>.tar members; is this ILSVRC2012_img_train.tar?")
    tasks.sort(key=lambda t: t[1])  # class index = position of the wnid in sorted order, as the folders give
    classes = [WNID_TAR.fullmatch(t[1]).group(1) for t in tasks]
    if workers > 1 and len(tasks) >= INNER_PER_PROCESS:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            inner = pool.map(index_inner, tasks, chunksize=max(1, len(tasks) // (8 * workers)))
    else:
        inner = list(map(index_inner, tasks))
    items, empty = [], []
    for label, (task, found) in enumerate(zip(tasks, inner)):
        if not found:
            empty.append(task[1])
        for name, offset, size in found:
            items.append(Item(_imagenet_key(Path(name)), Member(str(train_tar), offset, size),
                              f"{train_tar.name}:{task[1]}/{name}", label))
    if empty:  # as the folder path: a class of 0 images would still take a label and an output of the net
        raise SourceError(f"{train_tar}: {len(empty)} empty per-class tar(s): {', '.join(empty[:20])}")
    return classes, items


def _devkit_files(devkit: Path) -> dict[str, tuple[str, bytes]]:
    """meta.mat and the ground truth from inside the devkit .tar.gz: {file name: (where, bytes)}."""
    wanted = {META_MAT, GROUND_TRUTH}
    found = {}
    try:
        with tarfile.open(devkit, "r:*") as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if m.isreg() and base in wanted and m.name.endswith(f"data/{base}") and base not in found:
                    found[base] = (f"{devkit}:{m.name}", tar.extractfile(m).read())
    except FileNotFoundError:
        raise SourceError(f"{devkit}: file not found") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SourceError(f"{devkit}: not a readable tar.gz ({_first_line(e)}); download ILSVRC2012_devkit_t12.tar.gz "
                          "again") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise SourceError(f"{devkit}: no {' nor '.join('data/' + m for m in missing)} inside; is this "
                          "ILSVRC2012_devkit_t12.tar.gz?")
    return found


def _val_items(val_tar: Path, devkit: Path, classes: list[str]) -> tuple[list[Item], dict, dict]:
    files = _devkit_files(devkit)
    meta_where, meta_bytes = files[META_MAT]
    truth_where, truth_bytes = files[GROUND_TRUTH]
    meta = read_meta_mat(meta_where, meta_bytes)
    labels = devkit_val_labels(read_ground_truth(truth_where, truth_bytes), meta, truth_where, meta_where)
    members = {}
    ignored = []
    for m in _outer_members(val_tar):
        if not _visible(m.name) or m.isdir():
            continue
        if "/" in m.name.strip("/") or not m.isreg():
            raise SourceError(f"{val_tar}: member {m.name} is not a flat image file; expected ILSVRC2012_img_val.tar "
                              "(ILSVRC2012_val_<n>.JPEG at its top)")
        if Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
            members[m.name] = m
        else:
            ignored.append(m.name)
    if not members:
        raise SourceError(f"{val_tar}: no images; is this ILSVRC2012_img_val.tar?")
    # The folder path's labelling and checks, on names standing for the members (sorted, as a folder lists them).
    names = sorted(members)
    val = _flat_val([Path(val_tar.name) / n for n in names], labels, classes, val_tar, truth_where)
    for it, name in zip(val, names):
        it.path, it.rel = Member(str(val_tar), members[name].offset_data, members[name].size), f"{val_tar.name}:{name}"
    layout = {"val": f"flat {val_tar.name} labelled by {truth_where} + {meta_where}", "class_names": meta_where}
    if ignored:
        layout["ignored_in_val"] = ignored
    return val, layout, {wnid: words for wnid, words in meta.values()}


def discover_archives(train_tar: str | Path, val_tar: str | Path, devkit: str | Path, workers: int = 1) -> Source:
    """The official archives as a `Source` of archive members (see the module docstring)."""
    train_tar, val_tar, devkit = Path(train_tar), Path(val_tar), Path(devkit)
    classes, train = _train_items(train_tar, workers)
    val, layout, names = _val_items(val_tar, devkit, classes)
    _check_unique([*train, *val])
    _check_key_lengths([*train, *val])
    missing = [c for c in classes if c not in names]
    if missing:
        raise SourceError(f"{layout['class_names']}: no leaf synset for class(es) {', '.join(missing[:10])} of "
                          f"{train_tar}")
    layout = {"train": f"{train_tar.name}: <wnid>.tar/*", **layout,
              "archives": {"train": str(train_tar.resolve()), "val": str(val_tar.resolve()),
                           "devkit": str(devkit.resolve())}}
    return Source("imagenet", train_tar, classes, [names[c] for c in classes], {"train": train, "val": val}, layout)
