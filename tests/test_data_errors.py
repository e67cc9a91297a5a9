"""Damaged or hostile data: a changed index or shard is caught when a reader opens it (not only by `verify`),
and every data-side failure is one line naming the file, with nothing left that looks complete."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION_MNIST_RECIPE as RECIPE
from conftest import REPO, assert_one_clear_line, write_fashion_mnist_src, write_image_dataset
from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.records import RecordError


@pytest.fixture
def data(tmp_path) -> Path:
    """A small prepared data set of our own (4 classes, train and val, 2 shards each) that tests may damage."""
    return write_image_dataset(tmp_path / "data", {"train": 32, "val": 16})


def _entry(root: Path, split: str = "train", shard: int = 0) -> dict:
    return records.load_manifest(root)["splits"][split]["shards"][shard]


def _write_index(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _rehash_in_manifest(root: Path, split: str = "train", shard: int = 0) -> None:
    """Record the index's current hash in the manifest: a crafted index the cheap hash check cannot catch."""
    manifest = records.load_manifest(root)
    entry = manifest["splits"][split]["shards"][shard]
    entry["index_sha256"] = records.sha256_file(root / entry["index"])
    records.write_manifest(root, manifest)


def _train(cli, root: Path, out: Path):
    return cli("train", "--config", RECIPE, "--out", out, "--set", f"data.path={root}", "--set", "data.workers=0",
               "--set", "train.device=cpu", "--set", "train.epochs=1")


# --- item 6: train and evaluate open readers that check the index hash and the shard sizes -----------------------

def test_index_rewritten_with_shifted_labels_stops_train(data, tmp_path, cli):
    idx_path = data / _entry(data)["index"]
    with np.load(idx_path) as idx:
        arrays = {k: idx[k] for k in idx.files}
    arrays["label"] = (arrays["label"] + 1) % 4  # every label shifted, still valid classes, same count
    _write_index(idx_path, **arrays)
    with pytest.raises(RecordError, match="SHA-256") as e:
        RecordReader(data, "train")
    assert str(idx_path) in str(e.value) and "resnet-repro verify" in str(e.value)
    out = tmp_path / "run"
    code, _, err = _train(cli, data, out)
    assert_one_clear_line(code, err, idx_path, "verify")
    assert not (out / "final.pt").exists() and not (out / "results.json").exists()


def test_index_rewritten_with_shifted_labels_stops_evaluate(data, tmp_path, cli):
    from test_export import fake_run_checkpoint

    ck = fake_run_checkpoint(tmp_path / "final.pt", data)
    code, _, err = cli("evaluate", "--checkpoint", ck, "--workers", 0, "--device", "cpu")
    assert code == 0, err  # the untouched data set evaluates
    idx_path = data / _entry(data, "val", 0)["index"]
    with np.load(idx_path) as idx:
        arrays = {k: idx[k] for k in idx.files}
    arrays["label"] = (arrays["label"] + 1) % 4
    _write_index(idx_path, **arrays)
    code, _, err = cli("evaluate", "--checkpoint", ck, "--workers", 0, "--device", "cpu", "--out", tmp_path / "e.json")
    assert_one_clear_line(code, err, idx_path, "verify")
    assert not (tmp_path / "e.json").exists()  # no error rate measured on wrong labels


@pytest.mark.parametrize("change", ["grown", "truncated"])
def test_shard_with_changed_length_stops_train(data, tmp_path, cli, change):
    shard = data / _entry(data, "val", 1)["name"]
    raw = shard.read_bytes()
    shard.write_bytes(raw + bytes(512) if change == "grown" else raw[:-512])
    out = tmp_path / "run"
    code, _, err = _train(cli, data, out)
    assert_one_clear_line(code, err, shard, "verify")
    assert not (out / "final.pt").exists()


def test_same_size_byte_flip_is_left_to_verify(data, cli):
    """Documented limit: hashing every shard at open would cost minutes on ImageNet; `verify` finds this."""
    entry = _entry(data)
    shard = data / entry["name"]
    raw = bytearray(shard.read_bytes())
    raw[600] ^= 0xFF  # inside the first image
    shard.write_bytes(bytes(raw))
    assert len(RecordReader(data, "train")) == 32  # opens: same size, index untouched
    code, _, err = cli("verify", data, "--workers", "1")
    assert code == 1 and entry["name"] in err and "SHA-256" in err


# --- item 4: damaged index, labels out of range --------------------------------------------------------------

def _garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 this is not an npz at all" * 5)


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _pickled(path: Path) -> None:  # object arrays need pickle, which the reader refuses
    _write_index(path, key=np.array([{"a": 1}], dtype=object), offset=np.zeros(1, np.int64),
                 size=np.zeros(1, np.int64), label=np.zeros(1, np.int64))


def _ragged(path: Path) -> None:
    with np.load(path) as idx:
        arrays = {k: idx[k] for k in idx.files}
    arrays["label"] = arrays["label"][:-1]
    _write_index(path, **arrays)


def _no_labels(path: Path) -> None:
    with np.load(path) as idx:
        arrays = {k: idx[k] for k in idx.files if k != "label"}
    _write_index(path, **arrays)


@pytest.mark.parametrize("damage", [_garbage, _cut, _pickled, _ragged, _no_labels])
def test_damaged_index_is_one_line_in_verify_and_train(data, tmp_path, cli, damage):
    idx_path = data / _entry(data)["index"]
    damage(idx_path)
    _rehash_in_manifest(data)  # so that the index itself is read, not only its hash compared
    code, _, err = cli("verify", data, "--workers", "1")
    assert code == 1 and "Traceback" not in err, err
    assert f"index {idx_path}" in err  # the damaged file, named
    assert "per-class counts" not in err  # an index not read says nothing of the split's class totals
    with pytest.raises(RecordError, match=str(idx_path)):
        RecordReader(data, "train")
    code, _, err = _train(cli, data, tmp_path / "run")
    assert_one_clear_line(code, err, idx_path)


@pytest.mark.parametrize("label", [4, -1])
def test_label_outside_the_classes_in_an_index(data, cli, label):
    idx_path = data / _entry(data)["index"]
    with np.load(idx_path) as idx:
        arrays = {k: idx[k] for k in idx.files}
    arrays["label"][3] = label
    _write_index(idx_path, **arrays)
    _rehash_in_manifest(data)
    with pytest.raises(RecordError, match=f"label {label}, outside the 4 classes") as e:
        RecordReader(data, "train")
    assert str(idx_path) in str(e.value) and str(arrays["key"][3]) in str(e.value)
    code, _, err = cli("verify", data, "--workers", "1")
    assert code == 1 and "label outside the 4 classes" in err


def test_index_pointing_outside_its_shard(data):
    idx_path = data / _entry(data)["index"]
    with np.load(idx_path) as idx:
        arrays = {k: idx[k] for k in idx.files}
    arrays["offset"][0] = _entry(data)["bytes"]  # past the end: a read would come back short mid-epoch
    _write_index(idx_path, **arrays)
    _rehash_in_manifest(data)
    with pytest.raises(RecordError, match="outside its") as e:
        RecordReader(data, "train")
    assert str(idx_path) in str(e.value)


def test_manifest_without_classes_or_splits(data):
    manifest = json.loads((data / records.MANIFEST).read_text())
    del manifest["classes"]
    (data / records.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RecordError, match="class list") as e:
        RecordReader(data, "train")
    assert str(data / records.MANIFEST) in str(e.value)


# --- item 4: a full disk during prepare ------------------------------------------------------------------------

def _file_size_limit(limit: int):
    def apply():
        # Files stop growing at `limit` bytes: writes fail with EFBIG, as they fail with ENOSPC on a full disk
        # (SIGXFSZ ignored, so the write returns the error instead of killing the process).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_prepare_names_the_file_and_leaves_no_temp_file(tmp_path):
    src, out = tmp_path / "src", tmp_path / "fm"
    write_fashion_mnist_src(src)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "resnet_repro", "prepare", "fashion-mnist", "--src", str(src),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=_file_size_limit(4096))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: cannot write ") and "Traceback" not in proc.stderr, proc.stderr
    assert "train-00000.tar" in proc.stderr and "disk full" in proc.stderr
    assert not list(tmp_path.rglob("*.tmp")), list(tmp_path.rglob("*.tmp"))
    assert not out.exists()  # nothing that looks like a prepared data set
    assert not list(tmp_path.rglob(records.MANIFEST))


def test_write_error_while_closing_a_shard_leaves_no_temp_files(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)  # the index write fails after the tar is complete
    with pytest.raises(RecordError, match="train-00000.idx.*disk full"):
        records.write_shard(tmp_path / "train-00000.tar", [records.Sample("a", b"xy", "png", 0)])
    assert list(tmp_path.iterdir()) == []


def test_key_too_long_for_a_tar_header_is_refused_by_the_writer(tmp_path):
    with pytest.raises(RecordError, match="too long for a tar header"):
        records.write_shard(tmp_path / "x-00000.tar", [records.Sample("k" * 97, b"12", "png", 0)])
    assert list(tmp_path.iterdir()) == []
    records.write_shard(tmp_path / "x-00000.tar", [records.Sample("k" * 96, b"12", "png", 0)])  # 100 bytes: fits


# --- item 8 and item 4: prepare refuses what would give a wrong or damaged data set ----------------------------

def _jpeg(seed: int) -> bytes:
    import cv2

    img = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", cv2.resize(img, (32, 24)))[1].tobytes()


def _folder(root: Path, classes=("ant", "cat", "dog"), per_class: int = 4) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{name}_{i}.jpg").write_bytes(_jpeg(10 * c + i))
    return root


def _prepare_folder(cli, src: Path, out: Path, *more):
    return cli("prepare", "folder", "--src", src, "--out", out, "--workers", 1, "--val-fraction", 0.25, *more)


def assert_nothing_prepared(out: Path) -> None:
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_empty_class_folders_are_an_error_listing_them(tmp_path, cli):
    src, out = _folder(tmp_path / "src"), tmp_path / "out"
    (src / "bird").mkdir()
    (src / "eel").mkdir()
    (src / "eel" / ".DS_Store").write_bytes(b"x")  # hidden files are not images: still empty
    code, _, err = _prepare_folder(cli, src, out)
    assert_one_clear_line(code, err, "2 empty class folder(s): bird, eel")
    assert_nothing_prepared(out)
    (src / "bird").rmdir()
    (src / "eel" / ".DS_Store").unlink()
    (src / "eel").rmdir()
    code, _, err = _prepare_folder(cli, src, out)
    assert code == 0, err


def test_out_inside_src_is_an_error(tmp_path, cli):
    src = _folder(tmp_path / "src")
    before = sorted(p.name for p in src.rglob("*"))
    for out in (src / "prepared", src / "ant" / "x", src):
        code, _, err = _prepare_folder(cli, src, out)
        assert_one_clear_line(code, err, f"--out {out.resolve()} is inside --src {src.resolve()}")
    assert sorted(p.name for p in src.rglob("*")) == before  # nothing written into the source


def test_src_inside_out_is_an_error_and_force_deletes_nothing(tmp_path, cli):
    out = tmp_path / "out"
    code, _, err = _prepare_folder(cli, _folder(tmp_path / "elsewhere"), out)
    assert code == 0, err
    src = _folder(out / "raw")  # the source put inside a prepared folder
    code, _, err = _prepare_folder(cli, src, out, "--force")
    assert_one_clear_line(code, err, f"--src {src.resolve()} is inside --out {out.resolve()}")
    assert len(list(src.rglob("*.jpg"))) == 12 and (out / records.MANIFEST).is_file()


def test_prepare_into_a_folder_holding_another_data_set(tmp_path, cli):
    a, b, out = _folder(tmp_path / "a"), _folder(tmp_path / "b", ("x", "y")), tmp_path / "out"
    code, _, err = _prepare_folder(cli, a, out)
    assert code == 0, err
    manifest = (out / records.MANIFEST).read_bytes()
    shards = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = _prepare_folder(cli, b, out)  # another source
    assert_one_clear_line(code, err, f"{out} already holds another data set", str(b.resolve()), "--force")
    code, _, err = _prepare_folder(cli, a, out, "--seed", 5)  # the same source, another shuffle
    assert_one_clear_line(code, err, "shuffle seeds")
    src = tmp_path / "fm-src"
    write_fashion_mnist_src(src)
    code, _, err = cli("prepare", "fashion-mnist", "--src", src, "--out", out)  # another kind of data set
    assert_one_clear_line(code, err, "'folder' there, 'fashion-mnist' asked for")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == shards  # manifest and shards untouched
    assert (out / records.MANIFEST).read_bytes() == manifest
    code, _, err = _prepare_folder(cli, a, out)  # the same request again: a finished folder is kept
    assert code == 0 and "already prepared" in err


def test_symlink_loop_in_the_source_folder(tmp_path, cli):
    src, out = _folder(tmp_path / "src"), tmp_path / "out"
    loop = src / "cat" / "again"
    loop.symlink_to(src, target_is_directory=True)  # cat/again/cat/again/... for ever
    code, _, err = _prepare_folder(cli, src, out)
    assert_one_clear_line(code, err, loop, "symbolic link loop")
    assert_nothing_prepared(out)


def test_file_name_too_long_for_a_tar_header(tmp_path, cli):
    src, out = _folder(tmp_path / "src"), tmp_path / "out"
    long = src / "dog" / ("d" * 120 + ".jpg")
    long.write_bytes(_jpeg(99))
    code, _, err = _prepare_folder(cli, src, out)
    assert_one_clear_line(code, err, f"dog/{long.name}", "tar header")
    assert_nothing_prepared(out)


def test_fashion_mnist_label_out_of_range_names_the_label_file(tmp_path, cli):
    from conftest import idx_bytes, write_gz

    src, out = tmp_path / "src", tmp_path / "fm"
    write_fashion_mnist_src(src)
    labels = np.zeros(5, np.uint8)
    labels[3] = 12
    write_gz(src / "t10k-labels-idx1-ubyte.gz", idx_bytes(labels))
    code, _, err = cli("prepare", "fashion-mnist", "--src", src, "--out", out)
    assert_one_clear_line(code, err, src / "t10k-labels-idx1-ubyte.gz", "label 12 at index 3")
    assert_nothing_prepared(out)


@pytest.mark.parametrize("entry", [{"name": "../../elsewhere.tar", "index": "x.idx", "count": 1, "bytes": 10240},
                                   {"name": "a.tar", "index": "a.idx", "count": "1", "bytes": 10240},
                                   {"name": "a.tar", "count": 1, "bytes": 10240}, "a.tar"])
def test_malformed_shard_entry_in_the_manifest(data, entry):
    manifest = json.loads((data / records.MANIFEST).read_text())
    manifest["splits"]["val"]["shards"][1] = entry
    (data / records.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RecordError, match="malformed shard entry") as e:
        RecordReader(data, "train")
    assert str(data / records.MANIFEST) in str(e.value)


def test_unwritable_out_folder_names_the_file(tmp_path):
    (tmp_path / "out").write_text("a file where the folder should be")  # fails for root too, unlike chmod
    with pytest.raises(RecordError, match=r"cannot write .*out/x-00000\.tar\.tmp"):
        records.write_shard(tmp_path / "out" / "x-00000.tar", [records.Sample("a", b"12", "png", 0)])
