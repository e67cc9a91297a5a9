"""Find the images and labels of ImageNet (ILSVRC-2012) as they lie on disk.

The result is a `Source` (sources/folder.py): the class list, class names, and per split a list of
`Item(key, path, label)`. Nothing is read here but directory listings and label files; decoding and checking
the images is shards/prepare.py's job.

ImageNet layouts accepted (``--src`` is the folder holding ``train/`` and ``val/``, or the root of the Kaggle
download, which holds ``ILSVRC/Data/CLS-LOC/{train,val}`` and the ``LOC_*`` files)::

    train/<wnid>/<wnid>_<n>.JPEG          ILSVRC2012_img_train.tar, each per-class tar extracted to its folder
    val/<wnid>/ILSVRC2012_val_<n>.JPEG    val already sorted into class folders (e.g. by the common valprep.sh)
    val/ILSVRC2012_val_<n>.JPEG           flat val, labelled by one of
        LOC_val_solution.csv (+ LOC_synset_mapping.txt for class names)     the Kaggle distribution
        ILSVRC2012_validation_ground_truth.txt + meta.mat                   the devkit (ILSVRC2012_devkit_t12/data)

Class index = position of the wnid in the sorted list of train folders: the torchvision ImageFolder / Caffe
``synsets.txt`` convention, so that published checkpoints' outputs line up. The devkit numbers classes
differently (its ILSVRC2012_ID, the order of meta.mat), which is why ground-truth IDs go through meta.mat to
a wnid and only then to our index.

Hidden files (names starting with '.') are ignored; every other file under a class folder is an input, so a
stray non-image file is reported by prepare rather than dropped silently.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from .download import SourceError
from .folder import Item, Source, _check_key_lengths, _check_unique, _class_items, _rel, _subdirs, _top_files

VAL_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
DEVKIT = "ILSVRC2012_devkit_t12"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}  # loose files in a flat val/ that count as images


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def _looked(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def _imagenet_base(src: Path) -> Path:
    """The folder holding train/ and val/: ``src`` itself, or the Kaggle tree below it."""
    candidates = [src, src / "ILSVRC" / "Data" / "CLS-LOC", src / "Data" / "CLS-LOC"]
    for c in candidates:
        if (c / "train").is_dir():
            return c
    raise SourceError(f"{src / 'train'}: folder not found (also looked for train/ in "
                      f"{_looked(candidates[1:])}); --src must hold train/<wnid>/*.JPEG and val/")


def _imagenet_key(path: Path) -> str:
    # ImageNet stems (n01440764_10026, ILSVRC2012_val_00000001) are already valid keys.
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)


def decode_text(where: Path | str, data: bytes) -> str:
    """A label file's bytes as text; SourceError naming the file and line of the first byte that is not UTF-8.
    (The label files are ASCII in every distribution, so such a byte means a damaged or wrong file, and a
    locale-dependent decode would make the same file read differently on different machines.)"""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SourceError(f"{where}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); the file is damaged or "
                          "not the one expected: replace it with the one from the original download") from None


def _read_text(path: Path) -> str:
    return decode_text(path, path.read_bytes())


def read_synset_mapping(path: Path) -> dict[str, str]:
    """Kaggle's LOC_synset_mapping.txt: ``<wnid> <names>`` per line."""
    names = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not re.fullmatch(r"n\d{8}", wnid):
            raise SourceError(f"{path}:{n}: expected '<wnid> <names>', got {line[:60]!r}")
        names[wnid] = words.strip()
    return names


def _csv_rows(rows, path: Path):
    """``rows`` (a csv.reader), with its own errors (a field over the size limit, say) as one line naming the line."""
    while True:
        try:
            yield next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise SourceError(f"{path}:{rows.line_num}: not readable as CSV ({e}); replace it with the one from the "
                              "original download") from None


def read_val_csv(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ``ImageId,PredictionString``; the class is the first token of the
    prediction string (the rest are bounding boxes, each prefixed with the same wnid)."""
    labels, lines = {}, {}
    # newline="": csv sees the line ends as written, as with open(path, newline="").
    rows = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(rows, None)
    if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise SourceError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header}")
    for row in _csv_rows(rows, path):
        n = rows.line_num  # the file's line (a quoted field may span lines)
        if not row:
            continue
        tokens = row[1].split() if len(row) > 1 else []
        if not tokens or not re.fullmatch(r"n\d{8}", tokens[0]):
            raise SourceError(f"{path}:{n}: no wnid in the prediction string of {row[0]!r}")
        image_id = row[0].strip()
        if image_id in lines:  # a repeat would silently relabel the image (the last row winning): refuse it
            raise SourceError(f"{path}:{n}: ImageId {image_id} is already on line {lines[image_id]}; each val "
                              "image must be listed once: replace the file with the one from the original download")
        labels[image_id], lines[image_id] = tokens[0], n
    return labels


def read_meta_mat(path: Path | str, data: bytes | None = None) -> dict[int, tuple[str, str]]:
    """The devkit's meta.mat: ILSVRC2012_ID -> (wnid, words) for the 1000 leaf synsets (num_children == 0).
    ``data``: the file's bytes, read from inside the devkit archive (``path`` then only names it)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise SourceError(f"{path}: reading the devkit's meta.mat needs scipy, which is not installed; "
                          "pip install 'resnet-repro[imagenet]' (or pip install scipy)") from None
    try:
        synsets = loadmat(io.BytesIO(data) if data is not None else str(path), squeeze_me=True)["synsets"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{path}: not a devkit meta.mat with a 'synsets' struct ({e})") from None
    again = "download ILSVRC2012_devkit_t12.tar.gz again"
    # A struct of the wrong shape would otherwise end in numpy's ValueError ("no field of name ...") mid-loop.
    fields = getattr(getattr(synsets, "dtype", None), "names", None)
    if not fields:
        raise SourceError(f"{path}: 'synsets' is not a struct array; is this ILSVRC2012_devkit_t12's meta.mat? {again}")
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "words", "num_children") if f not in fields]
    if missing:
        raise SourceError(f"{path}: synsets lacks field {', '.join(missing)} (has {', '.join(fields)}); "
                          f"is this ILSVRC2012_devkit_t12's meta.mat? {again}")
    table = {}
    for i, s in enumerate(np.atleast_1d(synsets), 1):
        try:
            if int(s["num_children"]) == 0:
                table[int(s["ILSVRC2012_ID"])] = (str(s["WNID"]), str(s["words"]))
        except (TypeError, ValueError) as e:  # e.g. an empty or text num_children
            raise SourceError(f"{path}: synsets({i}): num_children or ILSVRC2012_ID is not an integer "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); {again}") from None
    if not table:
        raise SourceError(f"{path}: no leaf synsets (num_children == 0) in 'synsets'")
    return table


def read_ground_truth(path: Path | str, data: bytes | None = None) -> list[int]:
    """ILSVRC2012_validation_ground_truth.txt: line i holds the ILSVRC2012_ID of ILSVRC2012_val_<i>.JPEG.
    ``data``: the file's bytes, read from inside the devkit archive (``path`` then only names it)."""
    ids = []
    text = _read_text(Path(path)) if data is None else decode_text(path, data)
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            # isascii: str.isdigit also accepts digits such as '²' that int() refuses.
            if not (line.strip().isascii() and line.strip().isdigit()):
                raise SourceError(f"{path}:{n}: expected an ILSVRC2012_ID (integer), got {line[:40]!r}")
            ids.append(int(line))
    return ids


def devkit_val_labels(truth: list[int], meta: dict[int, tuple[str, str]], truth_file, meta_file) -> dict[str, str]:
    """Val image stem -> wnid, from the ground truth's ILSVRC2012_IDs through meta.mat."""
    labels = {}
    for i, ilsvrc_id in enumerate(truth, 1):
        if ilsvrc_id not in meta:
            raise SourceError(f"{truth_file}:{i}: ILSVRC2012_ID {ilsvrc_id} is not a leaf synset in {meta_file}")
        labels[f"ILSVRC2012_val_{i:08d}"] = meta[ilsvrc_id][0]
    return labels


def _flat_val(files: list[Path], labels: dict[str, str], classes: list[str], root: Path,
              label_file: Path) -> list[Item]:
    """Label flat val files by stem -> wnid; every file needs a label and every label a file."""
    index = {c: i for i, c in enumerate(classes)}
    items, unlabelled = [], []
    stems = set()
    for f in files:
        wnid = labels.get(f.stem)
        if wnid is None:
            unlabelled.append(f)
            continue
        if wnid not in index:
            raise SourceError(f"{label_file}: {f.stem} is labelled {wnid}, which is not a train class folder")
        stems.add(f.stem)
        items.append(Item(_imagenet_key(f), f, _rel(f, root), index[wnid]))
    if unlabelled:
        raise SourceError(f"{label_file}: no label for {len(unlabelled)} val file(s): "
                          + ", ".join(str(p) for p in unlabelled[:10]) + (" ..." if len(unlabelled) > 10 else ""))
    missing = sorted(set(labels) - stems)
    if missing:
        raise SourceError(f"{label_file} labels {len(missing)} val image(s) not found in {files[0].parent if files else 'val/'}: "
                          + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return items


def discover_imagenet(src: str | Path) -> Source:
    src = Path(src)
    if not src.is_dir():
        raise SourceError(f"{src}: ImageNet folder not found")
    base = _imagenet_base(src)
    train_dir, val_dir = base / "train", base / "val"
    stray = _top_files(train_dir)
    if stray:
        hint = (" — these look like the per-class tars of ILSVRC2012_img_train.tar: extract each into "
                "train/<wnid>/ and delete it" if stray[0].suffix.lower() == ".tar" else "")
        raise SourceError(f"{train_dir}: {len(stray)} file(s) directly under train/ (expected only class folders), "
                          f"e.g. {stray[0].name}{hint}")
    classes = [d.name for d in _subdirs(train_dir)]
    if not classes:
        raise SourceError(f"{train_dir}: no class folders (expected train/<wnid>/*.JPEG)")
    if not val_dir.is_dir():
        raise SourceError(f"{val_dir}: folder not found (extract ILSVRC2012_img_val.tar there)")
    search = list(dict.fromkeys([src, base, val_dir, src / DEVKIT / "data", src / DEVKIT, base / DEVKIT / "data",
                                 src / "devkit" / "data", src / "data"]))
    mapping_file = _find(SYNSET_MAPPING, search)
    meta_file = _find(META_MAT, search)
    layout = {"train": "train/<wnid>/*", "base": _rel(base, src)}
    names = {}
    if mapping_file:
        names = read_synset_mapping(mapping_file)
        layout["class_names"] = _rel(mapping_file, src)

    train = _class_items(train_dir, classes, src, _imagenet_key)
    # Label files and helper scripts may sit in val/ itself (valprep.sh, the ground truth): not images.
    val_sub, loose = _subdirs(val_dir), _top_files(val_dir)
    val_files = [f for f in loose if f.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [f.name for f in loose if f.suffix.lower() not in IMAGE_SUFFIXES]
    if ignored:
        layout["ignored_in_val"] = ignored  # recorded in the manifest: nothing is dropped silently
    if val_sub and val_files:
        raise SourceError(f"{val_dir}: holds both class folders and {len(val_files)} loose image(s) "
                          f"(e.g. {val_files[0].name}); use one val layout")
    if val_sub:
        val = _class_items(val_dir, classes, src, _imagenet_key)
        layout["val"] = "val/<wnid>/*"
    elif not val_files:
        raise SourceError(f"{val_dir}: empty (extract ILSVRC2012_img_val.tar there)")
    elif (csv_file := _find(VAL_CSV, search)) is not None:
        val = _flat_val(val_files, read_val_csv(csv_file), classes, src, csv_file)
        layout["val"] = f"flat val/ labelled by {_rel(csv_file, src)}"
    elif (truth_file := _find(GROUND_TRUTH, search)) is not None:
        if meta_file is None:
            raise SourceError(f"{truth_file} numbers classes by the devkit's ILSVRC2012_ID, which needs {META_MAT} "
                              f"to map to wnids; {META_MAT} not found in {_looked(search)} "
                              f"(extract ILSVRC2012_devkit_t12.tar.gz into --src)")
        meta = read_meta_mat(meta_file)
        labels = devkit_val_labels(read_ground_truth(truth_file), meta, truth_file, meta_file)
        val = _flat_val(val_files, labels, classes, src, truth_file)
        layout["val"] = f"flat val/ labelled by {_rel(truth_file, src)} + {_rel(meta_file, src)}"
        if not names:
            names = {wnid: words for wnid, words in meta.values()}
            layout["class_names"] = _rel(meta_file, src)
    else:
        raise SourceError(f"{val_dir} is flat (no class folders) and its labels were not found: need {VAL_CSV} "
                          f"(Kaggle) or {GROUND_TRUTH} + {META_MAT} (devkit {DEVKIT}/data); looked in {_looked(search)}")
    _check_unique([*train, *val])
    _check_key_lengths([*train, *val])
    missing_names = [c for c in classes if c not in names]
    if names and missing_names:
        raise SourceError(f"{layout['class_names']}: no name for class folder(s) {', '.join(missing_names[:10])}")
    return Source("imagenet", src, classes, [names.get(c, c) for c in classes], {"train": train, "val": val}, layout)

