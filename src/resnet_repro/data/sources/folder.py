"""Class-per-folder data sets as they lie on disk, and the `Source` every image importer gives.

A `Source` is the class list, class names, and per split a list of `Item(key, path, label)`; ImageNet
(sources/imagenet.py, imagenet_archives.py) gives one too, and shards/prepare.py turns any of them into shards.
``discover_folder`` reads ``src/<class>/...`` (val held out per class, sources/holdout.py) or ``src/train/`` and
``src/val/`` of class folders. Nothing is read here but directory listings; decoding and checking the images is
shards/prepare.py's job.

Hidden files (names starting with '.') are ignored; every other file under a class folder is an input, so a
stray non-image file is reported by prepare rather than dropped silently.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .download import SourceError
from .holdout import holdout


class Member(NamedTuple):
    """An image that is a byte range of an archive (sources/imagenet_archives.py): read in place, never extracted."""
    archive: str  # path of the tar file
    offset: int  # where the member's data begins in it
    size: int


@dataclass
class Item:
    key: str  # record key: unique in the data set, no '.' or '/'
    path: Path | Member  # the source file, or a member of an archive
    rel: str  # path relative to the source root, for the manifest and messages
    label: int


@dataclass
class Source:
    dataset: str  # "imagenet" | "folder"
    root: Path
    classes: list[str]  # sorted folder names (wnids for ImageNet); index = label
    class_names: list[str]
    splits: dict[str, list[Item]]
    layout: dict = field(default_factory=dict)  # how the files were found, recorded in the manifest
    holdout: dict | None = None  # the held-out val split's record (holdout.py), when val was held out of train


def list_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` (recursively, following links), in sorted order.

    A link back to a folder above it is an error naming the link: followed, it would repeat the same images
    under ever longer paths until the system's link limit (os.walk then stops silently). A folder that cannot
    be listed is an error too, not a silently smaller class."""
    found = []

    def walk(d: Path, above: dict) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise SourceError(f"{d}: cannot list this folder ({e.strerror or e})") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():  # follows links
                st = os.stat(e.path)
                ident = (st.st_dev, st.st_ino)
                if ident in above:
                    raise SourceError(f"{e.path}: symbolic link loop (it leads back to {above[ident]}); remove "
                                      "the link or point it outside the data set")
                walk(Path(e.path), {**above, ident: e.path})
            else:
                found.append(Path(e.path))

    st = os.stat(folder)
    walk(Path(folder), {(st.st_dev, st.st_ino): str(folder)})
    return sorted(found)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _top_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.is_dir() and not p.name.startswith("."))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _class_items(split_dir: Path, classes: list[str], root: Path, key_fn) -> list[Item]:
    index = {c: i for i, c in enumerate(classes)}
    items, empty = [], []
    for d in _subdirs(split_dir):
        if d.name not in index:
            raise SourceError(f"{d}: class folder {d.name!r} has no counterpart in the train classes")
        files = list_files(d)
        if not files:
            empty.append(d.name)
        for f in files:
            items.append(Item(key_fn(f), f, _rel(f, root), index[d.name]))
    if empty:  # a class of 0 images would still take a label and an output of the net
        raise SourceError(f"{split_dir}: {len(empty)} empty class folder(s): {', '.join(empty[:20])}"
                          f"{' ...' if len(empty) > 20 else ''}; add their images or remove the folders")
    return items


def _check_key_lengths(items: list[Item]) -> None:
    from ..shards.records import MAX_MEMBER_NAME

    longest = max(MAX_MEMBER_NAME - len(ext) - 1 for ext in ("jpg", "cls"))  # <key>.jpg and <key>.cls
    too_long = [it for it in items if len(it.key.encode()) > longest]
    if too_long:
        raise SourceError(f"{too_long[0].rel}: its record key is {len(too_long[0].key)} characters, over the "
                          f"{longest} a tar header holds ({len(too_long)} such file(s)); shorten the file names "
                          "(or the folder names below the split)")


def _check_unique(items: list[Item]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.key in seen:
            raise SourceError(f"{it.rel} and {seen[it.key]} map to the same record key {it.key!r}; rename one")
        seen[it.key] = it.rel


# --- Any class-per-folder data set ------------------------------------------------------------------------

def _folder_items(split_dir: Path, classes: list[str], root: Path, prefix: str, used: set[str]) -> list[Item]:
    def key_fn(f: Path) -> str:
        # Sanitised path below the split folder, so the key says where the image came from; made unique
        # deterministically (files are visited in sorted order) when sanitising maps two names together.
        base = prefix + re.sub(r"[^A-Za-z0-9_-]", "_", str(f.relative_to(split_dir).with_suffix("")))
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        return key
    return _class_items(split_dir, classes, root, key_fn)


def discover_folder(src: str | Path, val_fraction: float = 0.1, seed: int = 0) -> Source:
    """``src/<class>/...`` (val = a seeded, per-class ``val_fraction`` of each class) or, when ``src`` holds
    ``train/`` and ``val/``, those two folders of class folders as they are."""
    src = Path(src)
    if not src.is_dir():
        raise SourceError(f"{src}: folder not found")
    if not 0 <= val_fraction < 1:
        raise SourceError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    used: set[str] = set()
    holdout_record = None
    if (src / "train").is_dir() and (src / "val").is_dir():
        classes = [d.name for d in _subdirs(src / "train")]
        if not classes:
            raise SourceError(f"{src / 'train'}: no class folders")
        splits = {s: _folder_items(src / s, classes, src, f"{s}_", used) for s in ("train", "val")}
        layout = {"train": "train/<class>/*", "val": "val/<class>/*"}
    else:
        classes = [d.name for d in _subdirs(src)]
        if not classes:
            raise SourceError(f"{src}: no class folders (expected {src}/<class>/<image files>)")
        stray = _top_files(src)
        if stray:
            raise SourceError(f"{src}: {len(stray)} file(s) next to the class folders (e.g. {stray[0].name}); "
                              "every image must be inside its class folder")
        items = _folder_items(src, classes, src, "", used)
        # The held-out val split: the mechanism every importer shares (holdout.py), recorded in the manifest.
        idx, held = holdout(np.array([it.label for it in items]), len(classes), seed, fraction=val_fraction)
        chosen = set(idx.tolist())
        held.update({"from": "every image of the class folders", "index_order": "sorted file paths"})
        splits = {"train": [it for i, it in enumerate(items) if i not in chosen]}
        if val_fraction > 0:
            splits["val"] = [items[i] for i in idx]
            holdout_record = held
        layout = {"train": "<class>/*", "val": f"per class, a seeded {val_fraction} of <class>/* (seed {seed})"}
    for name, items in splits.items():
        if not items:
            raise SourceError(f"{src}: the {name} split has no files")
        _check_key_lengths(items)
    return Source("folder", src, classes, list(classes), splits, layout, holdout_record)
