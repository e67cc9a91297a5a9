"""ImageNet / class-per-folder prepare: layouts, class order, oddities, bad files, resumability, verify.

Every test builds a tiny ImageNet-layout folder under tmp_path (a few 40x32 JPEGs per class) and runs the real
prepare path on it. CMYK JPEGs are written with Pillow (OpenCV cannot write CMYK); the devkit's meta.mat with
scipy; tests needing either skip when it is absent.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import assert_one_clear_line, kill_after_shards
from resnet_repro.data.decode.header import BadImage, read_header
from resnet_repro.data.shards import prepare, records
from resnet_repro.data.shards.prepare import Encoding, prepare_images
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.staging import PrepareError
from resnet_repro.data.sources import imagenet
from resnet_repro.data.sources.download import SourceError
from resnet_repro.data.sources.folder import discover_folder

WNIDS = ["n01440764", "n02102040", "n01530575"]  # deliberately not in sorted order
SORTED = sorted(WNIDS)
TRAIN_PER_CLASS, VAL_PER_CLASS = 5, 2
SHARDS = {"train": 4, "val": 2}


# --- Tiny images of every kind --------------------------------------------------------------------------------

def _pixels(seed: int, w: int = 40, h: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)  # smooth: JPEG-friendly


def jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", _pixels(seed), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def gray_jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", _pixels(seed)[:, :, 0])[1].tobytes()


def png_bytes(seed: int) -> bytes:
    return cv2.imencode(".png", _pixels(seed))[1].tobytes()


def cmyk_jpeg(seed: int) -> bytes:
    Image = pytest.importorskip("PIL.Image")
    rgb = _pixels(seed)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A PNG whose header claims 20000 x 20000 pixels (400 MP); only the header is there."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def make_imagenet(root: Path, val_layout: str, extra_train: dict[str, bytes] | None = None) -> dict[str, str]:
    """An ImageNet-layout tree; returns {val key: wnid}. ``val_layout``: folders | kaggle | devkit."""
    seed = 0
    for wnid in WNIDS:
        d = root / "train" / wnid
        d.mkdir(parents=True)
        for i in range(TRAIN_PER_CLASS):
            seed += 1
            (d / f"{wnid}_{i}.JPEG").write_bytes(jpeg(seed))
    for name, data in (extra_train or {}).items():
        (root / "train" / name.split("_")[0] / f"{name}.JPEG").write_bytes(data)
    val = {}
    (root / "val").mkdir()
    for n in range(VAL_PER_CLASS * len(WNIDS)):
        key = f"ILSVRC2012_val_{n + 1:08d}"
        wnid = WNIDS[(n * 2) % len(WNIDS)]
        val[key] = wnid
        folder = root / "val" / wnid if val_layout == "folders" else root / "val"
        folder.mkdir(exist_ok=True)
        (folder / f"{key}.JPEG").write_bytes(jpeg(1000 + n))
    names = {w: f"name of {w}, alias" for w in WNIDS}
    if val_layout == "kaggle":
        lines = ["ImageId,PredictionString"] + [f"{k},{w} 1 2 30 20 {w} 3 4 10 12" for k, w in val.items()]
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {names[w]}\n" for w in SORTED))
    elif val_layout == "devkit":
        write_devkit(root / "ILSVRC2012_devkit_t12" / "data", val, names)
    return val


def write_devkit(data_dir: Path, val: dict[str, str], names: dict[str, str], drop: str | None = None) -> None:
    """meta.mat whose ILSVRC2012_ID order (1, 2, 3 = WNIDS as listed) is NOT the sorted-wnid order, plus a
    non-leaf synset, and the ground truth file in those IDs. ``drop``: a field left out of meta.mat's synsets."""
    scipy_io = pytest.importorskip("scipy.io")
    data_dir.mkdir(parents=True, exist_ok=True)
    fields = [f for f in ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"] if f != drop]
    rows = [(i + 1, w, names[w], "gloss", 0) for i, w in enumerate(WNIDS)] + [(4, "n00001740", "entity", "g", 3)]
    if drop:
        at = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"].index(drop)
        rows = [row[:at] + row[at + 1:] for row in rows]
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        for f, v in zip(fields, row):
            synsets[r, 0][f] = np.array([[v]]) if isinstance(v, int) else v
    scipy_io.savemat(str(data_dir / "meta.mat"), {"synsets": synsets})
    ids = {w: i + 1 for i, w in enumerate(WNIDS)}
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in val.values()))


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run_prepare(src: Path, out: Path, **kw) -> Path:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return prepare_images(imagenet.discover_imagenet(src), out, SHARDS, **kw)


# --- Layouts and class order ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["folders", "kaggle", "devkit"])
def test_val_layouts_give_sorted_wnid_labels(tmp_path, layout):
    val = make_imagenet(tmp_path / "src", layout)
    out = run_prepare(tmp_path / "src", tmp_path / "out")
    manifest = records.load_manifest(out)
    assert manifest["classes"] == SORTED
    if layout != "folders":  # names from LOC_synset_mapping.txt / meta.mat, in class-index order
        assert manifest["class_names"] == [f"name of {w}, alias" for w in SORTED]
    train, val_reader = RecordReader(out, "train"), RecordReader(out, "val")
    assert len(train) == TRAIN_PER_CLASS * 3 and len(val_reader) == VAL_PER_CLASS * 3
    assert manifest["splits"]["train"]["counts_per_class"] == [TRAIN_PER_CLASS] * 3
    assert len(manifest["splits"]["train"]["shards"]) == SHARDS["train"]
    for i in range(len(train)):
        key, data, label = train[i]
        assert key.startswith(SORTED[label])
        wnid = key.split("_")[0]
        # Ordinary JPEGs are kept byte for byte.
        assert data == (tmp_path / "src" / "train" / wnid / f"{key}.JPEG").read_bytes()
    got = {val_reader[i][0]: SORTED[val_reader[i][2]] for i in range(len(val_reader))}
    assert got == val
    assert manifest["encoding"]["mode"] == "copy" and not manifest["oddities"]["files"]
    # Two splits, as published: val is ILSVRC-2012 val, the evaluation split, and nothing is held out of train.
    assert manifest["evaluation_split"] == "val" and manifest["holdout"] is None and "published" in manifest["notes"]["val"]


def test_label_files_and_scripts_inside_val_are_not_images(tmp_path):
    val = make_imagenet(tmp_path, "devkit")
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    (data / "ILSVRC2012_validation_ground_truth.txt").rename(tmp_path / "val" / "ILSVRC2012_validation_ground_truth.txt")
    (tmp_path / "val" / "valprep.sh").write_text("#!/bin/sh\n")
    src = imagenet.discover_imagenet(tmp_path)
    assert {it.key: SORTED[it.label] for it in src.splits["val"]} == val
    assert src.layout["ignored_in_val"] == ["ILSVRC2012_validation_ground_truth.txt", "valprep.sh"]


def test_kaggle_tree_below_the_download_root(tmp_path):
    root = tmp_path / "kaggle"
    val = make_imagenet(root / "ILSVRC" / "Data" / "CLS-LOC", "kaggle")
    for f in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):  # Kaggle puts them at the download root
        (root / "ILSVRC" / "Data" / "CLS-LOC" / f).rename(root / f)
    src = imagenet.discover_imagenet(root)
    assert src.classes == SORTED
    assert {it.key: SORTED[it.label] for it in src.splits["val"]} == val


def test_missing_label_files_are_named(tmp_path):
    make_imagenet(tmp_path / "flat", "kaggle")
    (tmp_path / "flat" / "LOC_val_solution.csv").unlink()
    with pytest.raises(SourceError, match="LOC_val_solution.csv"):
        imagenet.discover_imagenet(tmp_path / "flat")
    make_imagenet(tmp_path / "dk", "devkit")
    (tmp_path / "dk" / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(SourceError, match=r"meta\.mat not found"):
        imagenet.discover_imagenet(tmp_path / "dk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty[/\\]train: folder not found"):
        imagenet.discover_imagenet(tmp_path / "empty")


def test_meta_mat_without_scipy_says_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import loadmat` fail
    with pytest.raises(SourceError, match="needs scipy.*pip install"):
        imagenet.read_meta_mat(tmp_path / "meta.mat")


def test_val_label_for_unknown_class_is_an_error(tmp_path):
    make_imagenet(tmp_path, "kaggle")
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("n01440764", "n09999999"))
    with pytest.raises(SourceError, match="n09999999"):
        imagenet.discover_imagenet(tmp_path)


@pytest.mark.parametrize("field", ["num_children", "ILSVRC2012_ID", "WNID"])
def test_meta_mat_lacking_a_synsets_field_is_one_line(tmp_path, cli, field):
    val = make_imagenet(tmp_path / "src", "devkit")
    data = tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data"
    write_devkit(data, val, {w: "name" for w in WNIDS}, drop=field)
    code, _, err = cli("prepare", "imagenet", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert_one_clear_line(code, err, data / "meta.mat", f"synsets lacks field {field}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("layout, name", [("devkit", f"ILSVRC2012_devkit_t12/data/{imagenet.GROUND_TRUTH}"),
                                          ("kaggle", "LOC_val_solution.csv"), ("kaggle", "LOC_synset_mapping.txt")])
def test_label_file_that_is_not_utf8_is_named_with_its_line(tmp_path, cli, layout, name):
    make_imagenet(tmp_path / "src", layout)
    path = tmp_path / "src" / name
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:12] + b"\xff\xfe" + lines[2][12:]  # line 3: a byte no UTF-8 text holds
    path.write_bytes(b"\n".join(lines))
    code, _, err = cli("prepare", "imagenet", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert_one_clear_line(code, err, f"{path}:3: ", "UTF-8")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("conflict", [True, False])
def test_repeated_image_id_in_the_kaggle_csv_names_both_lines(tmp_path, cli, conflict):
    make_imagenet(tmp_path / "src", "kaggle")
    csv_file = tmp_path / "src" / "LOC_val_solution.csv"
    lines = csv_file.read_text().splitlines()
    image_id, wnid = lines[2].split(",")[0], lines[2].split(",")[1].split()[0]  # line 3
    other = next(w for w in WNIDS if w != wnid) if conflict else wnid
    lines.append(f"{image_id},{other} 1 2 3 4")  # the same image again, last (the row that used to win)
    csv_file.write_text("\n".join(lines) + "\n")
    code, _, err = cli("prepare", "imagenet", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert_one_clear_line(code, err, f"{csv_file}:{len(lines)}: ", image_id, "line 3")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- Oddities, bad files, bombs -------------------------------------------------------------------------------

def test_oddities_stored_as_rgb_jpeg_and_listed(tmp_path):
    extra = {"n01440764_cmyk": cmyk_jpeg(7), "n02105855_2933": png_bytes(8), "n01530575_gray": gray_jpeg(9)}
    # The PNG-named-.JPEG goes into an existing class folder, as n02105855_2933 does in ImageNet.
    extra["n02102040_2933"] = extra.pop("n02105855_2933")
    make_imagenet(tmp_path / "src", "folders", extra)
    assert read_header(extra["n01440764_cmyk"]).colour == "cmyk"
    out = run_prepare(tmp_path / "src", tmp_path / "out")
    manifest = records.load_manifest(out)
    odd = {o["key"]: o["kind"] for o in manifest["oddities"]["files"]}
    assert odd == {"n01440764_cmyk": "cmyk_jpeg", "n02102040_2933": "png_not_jpeg", "n01530575_gray": "gray_jpeg"}
    assert manifest["oddities"]["counts"] == {"cmyk_jpeg": 1, "png_not_jpeg": 1, "gray_jpeg": 1}
    reader = RecordReader(out, "train")
    assert len(reader) == 3 * TRAIN_PER_CLASS + 3
    for i in range(len(reader)):
        key, data, label = reader[i]
        hdr = read_header(data)
        assert (hdr.fmt, hdr.colour, hdr.components) == ("jpeg", "ycbcr", 3), key
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.ndim == 3 and img.shape == (32, 40, 3), key
        if key in odd:  # re-encoded at q95 from the decoded original: close to the pixels it was made from
            truth = {"n01440764_cmyk": _pixels(7)[:, :, ::-1],  # PIL was given RGB; OpenCV decodes to BGR
                     "n02102040_2933": _pixels(8), "n01530575_gray": np.repeat(_pixels(9)[:, :, :1], 3, 2)}[key]
            assert np.abs(img.astype(int) - truth).mean() < 3, key


def test_the_scaled_down_check_rejects_exactly_the_files_a_full_decode_rejects():
    """Kept JPEGs are checked with a 1/8-scale decode (prepare.convert_image). Damage of every kind — cut at
    many points (inside the headers and the scan), bytes overwritten in the entropy-coded data, markers
    broken — must fail that check exactly when OpenCV's full decode fails."""
    from resnet_repro.data.sources.synthetic import photo_like_image

    rng = np.random.default_rng(0)
    img = photo_like_image(rng, 160, 120)
    sources = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
               cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()]
    variants = []
    for data in sources:
        variants += [data[:n] for n in (100, 300, 700, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 2)]
        for _ in range(12):  # overwrite a run of bytes somewhere after the first 200
            at, run = int(rng.integers(200, len(data) - 20)), int(rng.integers(1, 16))
            variants.append(data[:at] + rng.integers(0, 256, run, dtype=np.uint8).tobytes() + data[at + run:])
        variants += [data.replace(b"\xff\xda", b"\xff\xdb", 1), data.replace(b"\xff\xc4", b"\xff\x00", 1)]
    outcomes = set()
    for i, data in enumerate(variants):
        full_ok = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
        try:
            prepare.convert_image(data, Encoding())
            check_ok = True
        except BadImage:
            check_ok = False
        assert check_ok == full_ok, f"variant {i}: full decode {'passes' if full_ok else 'fails'}, check disagrees"
        outcomes.add(full_ok)
    assert outcomes == {True, False}  # the variants include both kinds


def test_bad_files_stop_prepare_with_every_name_unless_skip_bad(tmp_path):
    good = jpeg(5)
    extra = {"n01440764_truncated": good[: len(good) // 2], "n02102040_text": b"not an image at all",
             "n01530575_bomb": bomb_png()}
    make_imagenet(tmp_path / "src", "folders", extra)
    with pytest.raises(PrepareError) as e:
        run_prepare(tmp_path / "src", tmp_path / "out")
    msg = str(e.value)
    for name in extra:
        assert f"{name}.JPEG" in msg
    assert "20000x20000 = 400 MP" in msg and "decompression bomb" in msg and "--skip-bad" in msg
    assert not (tmp_path / "out").exists()
    out = run_prepare(tmp_path / "src", tmp_path / "out", skip_bad=True)
    manifest = records.load_manifest(out)
    assert manifest["skip_bad"] is True
    assert sorted(b["key"] for b in manifest["skipped_bad_files"]) == sorted(extra)
    assert manifest["splits"]["train"]["count"] == 3 * TRAIN_PER_CLASS
    assert "n01440764_truncated" not in set(RecordReader(out, "train").keys)


def test_header_dimensions_and_bomb_refused_before_decoding():
    assert (read_header(jpeg(1)).width, read_header(jpeg(1)).height) == (40, 32)
    assert read_header(gray_jpeg(1)).colour == "gray"
    assert read_header(png_bytes(1)).fmt == "png"
    ok, bmp = cv2.imencode(".bmp", _pixels(1))
    assert (read_header(bmp.tobytes()).fmt, read_header(bmp.tobytes()).height) == ("bmp", 32)
    with pytest.raises(BadImage, match="decompression bombs"):
        prepare.convert_image(bomb_png(), Encoding())
    with pytest.raises(BadImage, match="0 MP limit"):  # the limit is a parameter
        prepare.convert_image(jpeg(1), Encoding(max_pixels=1000))


def test_max_side_and_quality_reencode_and_are_recorded(tmp_path):
    make_imagenet(tmp_path / "src", "folders")
    out = run_prepare(tmp_path / "src", tmp_path / "out", enc=Encoding(max_side=20, quality=80))
    manifest = records.load_manifest(out)
    assert manifest["encoding"]["mode"] == "reencode"
    assert (manifest["encoding"]["max_side"], manifest["encoding"]["quality"]) == (20, 80)
    reader = RecordReader(out, "val")
    for i in range(len(reader)):
        h = read_header(reader[i][1])
        assert (h.width, h.height) == (20, 16)


# --- Resumability and parallelism -----------------------------------------------------------------------------

def test_killed_prepare_resumes_to_identical_shards(tmp_path, monkeypatch):
    make_imagenet(tmp_path / "src", "devkit" if _has("scipy") else "kaggle",
                  {"n01440764_cmyk": cmyk_jpeg(7)} if _has("PIL") else None)
    clean = shard_hashes(run_prepare(tmp_path / "src", tmp_path / "clean"))
    # A run that dies while finishing its fourth shard (three complete, one half-written) ...
    real_close = kill_after_shards(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path / "src", tmp_path / "out")
    monkeypatch.setattr(records.ShardWriter, "close", real_close)
    staging = tmp_path / "out.partial"
    assert not (tmp_path / "out").exists() and len(list(staging.glob("*.tar"))) == 3
    # ... then damage: one finished shard truncated, one torn write left behind, one report deleted.
    tars = sorted(staging.glob("*.tar"))
    tars[0].write_bytes(tars[0].read_bytes()[:1000])
    (staging / "train-00003.tar.tmp").write_bytes(b"torn")
    (staging / ".work" / f"{tars[1].name}.json").unlink()
    out = run_prepare(tmp_path / "src", tmp_path / "out")
    assert shard_hashes(out) == clean
    assert not staging.exists()


def test_parallel_workers_and_real_kill_give_identical_shards(tmp_path):
    make_imagenet(tmp_path / "src", "folders")
    serial = shard_hashes(run_prepare(tmp_path / "src", tmp_path / "serial", seed=3))
    # Two worker processes, in a separate interpreter (without the CLI's torch import: cheap on a busy machine).
    script = ("import sys; from pathlib import Path; from resnet_repro.data.shards import prepare; "
              "from resnet_repro.data.sources import imagenet; "
              "prepare.prepare_images(imagenet.discover_imagenet(sys.argv[1]), Path(sys.argv[2]), "
              "{'train': 4, 'val': 2}, seed=3, workers=2, progress=False)")
    cmd = [sys.executable, "-c", script, str(tmp_path / "src"), str(tmp_path / "par")]
    # SIGKILL the whole process group (parent and workers) once the first shard is reported done; then re-run.
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "par.partial" / ".work"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if work.is_dir() and any(work.glob("*.json")):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shard_hashes(tmp_path / "par") == serial


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


# --- verify and the command line -------------------------------------------------------------------------------

def test_cli_prepare_and_verify_catch_a_flipped_byte(tmp_path, cli):
    make_imagenet(tmp_path / "src", "kaggle")
    out = tmp_path / "shards"
    code, _, err = cli("prepare", "imagenet", "--src", tmp_path / "src", "--out", out, "--train-shards", 3,
                       "--val-shards", 1, "--workers", 1)
    assert code == 0, err
    assert cli("verify", out, "--workers", 1)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][1]
    with np.load(out / entry["index"]) as idx:
        key, offset = str(idx["key"][0]), int(idx["offset"][0])
    tar = out / entry["name"]
    data = bytearray(tar.read_bytes())
    data[offset + 1] ^= 0xFF  # SOI marker FF D8 -> FF 27: the image no longer decodes
    tar.write_bytes(bytes(data))
    code, out_text, err = cli("verify", out, "--workers", 1)
    assert code == 1
    assert f"{entry['name']}: SHA-256 does not match" in err
    assert f"{entry['name']} key {key}: image does not decode" in err


def test_cli_prepare_imagenet_needs_src_and_names_missing_val(tmp_path, cli):
    (tmp_path / "src" / "train" / "n01440764").mkdir(parents=True)
    code, _, err = cli("prepare", "imagenet", "--src", tmp_path / "src", "--out", tmp_path / "o")
    assert code == 2 and "val: folder not found" in err


# --- Any class-per-folder data set ----------------------------------------------------------------------------

def _make_folder(root: Path, classes=("dog", "cat", "ant"), per_class=10) -> None:
    for c, name in enumerate(classes):
        (root / name / "sub").mkdir(parents=True)
        for i in range(per_class):
            where = root / name / ("sub" if i % 2 else "")
            (where / f"img.{i}.jpg").write_bytes(jpeg(100 * c + i))


def test_folder_val_fraction_is_per_class_and_seeded(tmp_path, cli):
    _make_folder(tmp_path / "src")
    a = discover_folder(tmp_path / "src", val_fraction=0.2, seed=1)
    b = discover_folder(tmp_path / "src", val_fraction=0.2, seed=1)
    assert a.classes == ["ant", "cat", "dog"]
    assert [it.key for it in a.splits["val"]] == [it.key for it in b.splits["val"]]
    assert np.bincount([it.label for it in a.splits["val"]]).tolist() == [2, 2, 2]
    keys = [it.key for s in a.splits.values() for it in s]
    assert len(keys) == len(set(keys)) == 30 and all("." not in k and "/" not in k for k in keys)
    code, _, err = cli("prepare", "folder", "--src", tmp_path / "src", "--out", tmp_path / "out",
                       "--val-fraction", 0.2, "--seed", 1, "--workers", 1)
    assert code == 0, err
    manifest = records.load_manifest(tmp_path / "out")
    assert manifest["dataset"] == "folder" and manifest["classes"] == ["ant", "cat", "dog"]
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["val"]["count"]) == (24, 6)
    # The shared hold-out (holdout.py), recorded: seed, per-class counts, and which images (sorted file order).
    held = manifest["holdout"]
    assert held["split"] == "val" and held["seed"] == 1 and held["counts_per_class"] == [2, 2, 2]
    every = discover_folder(tmp_path / "src", val_fraction=0.0).splits["train"]
    assert [every[i].key for i in held["indices"]] == [it.key for it in a.splits["val"]]
    assert manifest["evaluation_split"] is None and manifest["selection_split"] == "val"


def test_folder_with_train_and_val_subfolders(tmp_path):
    _make_folder(tmp_path / "src" / "train")
    _make_folder(tmp_path / "src" / "val", classes=("cat", "dog"), per_class=3)
    src = discover_folder(tmp_path / "src")
    assert src.classes == ["ant", "cat", "dog"]
    assert sorted({it.label for it in src.splits["val"]}) == [1, 2] and len(src.splits["val"]) == 6
    (tmp_path / "src" / "val" / "bird").mkdir()
    with pytest.raises(SourceError, match="bird"):
        discover_folder(tmp_path / "src")


def test_hand_written_tar_is_byte_for_byte_what_tarfile_writes(tmp_path):
    """records.ShardWriter writes USTAR by hand (faster, hashed while written); it must equal stdlib tarfile's
    output for the same members, and its SHA-256 and offsets must describe the file."""
    import tarfile
    rng = np.random.default_rng(0)
    samples = [records.Sample(f"k{i}_x-{i}", rng.bytes(int(n)), "jpg", int(rng.integers(1000)))
               for i, n in enumerate([0, 1, 511, 512, 513, 3000, 10240])]
    entry = records.write_shard(tmp_path / "a.tar", samples, fsync=False)
    with open(tmp_path / "b.tar", "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for s in samples:
            for name, data in ((f"{s.key}.jpg", s.data), (f"{s.key}.cls", str(s.label).encode())):
                t.addfile(records._tarinfo(name, len(data)), io.BytesIO(data))
    a = (tmp_path / "a.tar").read_bytes()
    assert a == (tmp_path / "b.tar").read_bytes()
    assert entry["sha256"] == hashlib.sha256(a).hexdigest() and entry["bytes"] == len(a)
    with np.load(tmp_path / "a.idx") as idx:
        for s, off, n in zip(samples, idx["offset"], idx["size"]):
            assert a[off:off + n] == s.data
