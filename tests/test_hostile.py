"""Hostile inputs and faults that used to crash, hang or lose work (issue 21): each one is refused with one line
naming the file, key, shard, rank or host and what to do, and nothing half-written is left looking complete."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_clear_line, png, texture_images, tiny_run_recipe
from resnet_repro.data.shards import records

DAMAGED = b"\x89PNG\r\n\x1a\n damaged"  # a PNG signature, then bytes no decoder reads


def damaged_dataset(root: Path, damaged: dict[str, list[int]], sizes=None, shards: int = 2) -> Path:
    """write_image_dataset's layout (8x8 textures, 4 classes) with the samples ``damaged[split]`` stored as
    bytes no decoder reads, the hashes consistent: a data set damaged before prepare finished hashing it."""
    root.mkdir(parents=True)
    entries = {}
    for k, (split, n) in enumerate((sizes or {"train": 96, "val": 23}).items()):
        images, labels = texture_images(n, 8, k, 4)
        samples = [records.Sample(f"{split}_{i:05d}", DAMAGED if i in damaged.get(split, ()) else png(img), "png",
                                  int(lab)) for i, (img, lab) in enumerate(zip(images, labels))]
        entries[split] = records.write_split(root, split, samples, shards, k)
    records.write_manifest(root, {"format": records.FORMAT, "dataset": "synthetic-textures",
                                  "classes": ["0", "1", "2", "3"], "image": {"height": 8, "width": 8, "channels": 1},
                                  "encoding": {"ext": "png", "lossless": True}, "splits": entries})
    return root


# --- 1. a damaged training image whose replacement is damaged too ---------------------------------------------------

def resnet_repro(*argv, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """The command line in a process of its own, so that a process that never ends fails the test."""
    return subprocess.run([sys.executable, "-m", "resnet_repro", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def error_lines(err: str) -> str:
    """stderr less OpenCV's own complaints about the damaged bytes (printed by the library, not the program)."""
    return "".join(ln + "\n" for ln in err.splitlines() if "grfmt_" not in ln)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_damaged_sample_with_a_damaged_replacement_names_both(tmp_path, workers):
    data = damaged_dataset(tmp_path / "data", {"train": list(range(96))})  # every replacement is damaged too
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_run_recipe(data, 1, 1, 0))
    out = tmp_path / "run"
    # In a loader worker too: the error reaches the user as one line, and the process ends (the worker does not
    # keep it waiting at exit).
    p = resnet_repro("train", "--config", recipe, "--out", out, "--set", f"data.workers={workers}")
    err = error_lines(p.stderr).splitlines()
    assert all(ln.startswith("warning: ") for ln in err[:-1]), p.stderr  # no traceback
    assert_one_clear_line(p.returncode, err[-1] + "\n", data, "shard train-0000", "key train_000",
                          "nor its replacement shard train-0000", "resnet-repro verify")
    assert not (out / "final.pt").exists() and not (out / "results.json").exists()


def test_a_damaged_sample_is_never_its_own_replacement():
    """With one damaged sample among n, its replacement is another sample in every epoch: drawn from all n, it was
    the damaged one again once in n epochs, and the run stopped as if two samples were damaged."""
    from types import SimpleNamespace

    from resnet_repro.data.decode.cpu import DecodeError
    from resnet_repro.data.loading.loader import BatchDataset, UnreadableSample

    def sample(i, epoch):
        if i == 0:
            raise DecodeError("damaged")
        return i

    class Reader:  # what with_replacement reads of a RecordReader
        root = "DATA"

        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def where(self, i):
            return f"key {i}"

    for n in (2, 3):
        ds = SimpleNamespace(seed=0, reader=Reader(n))
        got = {BatchDataset.with_replacement(ds, sample, 0, epoch) for epoch in range(40)}
        assert got == {(j, 1) for j in range(1, n)}  # every other sample drawn at some epoch, never sample 0
    ds = SimpleNamespace(seed=0, reader=Reader(1))
    with pytest.raises(UnreadableSample, match="no other sample"):
        BatchDataset.with_replacement(ds, sample, 0, 0)


# --- 3. a mean/std with the wrong number of values for the data's channels -----------------------------------------

def test_mean_std_for_other_channels_names_the_keys_and_the_fix(tmp_path, cli, texture_data):
    recipe = tmp_path / "recipe.yaml"  # a minimal recipe: data.mean/std keep their 3-value (RGB) defaults
    recipe.write_text(f"data: {{path: {texture_data}, batch_size: 8, workers: 0}}\nmodel: {{name: resnet20}}\n"
                      "train: {device: cpu, epochs: 1}\n")
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", recipe, "--out", out)
    assert_one_clear_line(code, err, "data.mean", "data.std", "1 channel", "--set data.mean=", "--set data.std=")
    assert not (out / "final.pt").exists()
    fix = [a for a in err.split() if a.startswith(("data.mean=", "data.std="))]
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run2", "--set", fix[0], "--set", fix[1],
                       "--set", "train.epochs=1", "--set", "train.precise_bn_batches=0")
    assert code == 0, err  # the fix the line gives works


# --- 4. a config file that is not UTF-8 ---------------------------------------------------------------------------

def test_config_file_not_utf8_names_the_file_and_offset(tmp_path, cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"model: {name: resnet20}\n# r\xe9sum\xe9 in Latin-1\n")
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, f"config file {recipe}", "UTF-8", "byte 27")
    assert not (tmp_path / "run").exists()


# --- 6 and 9: a manifest entry without its hashes, a split without shards ------------------------------------------

def _edit_manifest(root: Path, edit) -> Path:
    """Change manifest.json in place through ``edit(manifest)``, rehashed as this version writes it (so that the
    change itself, not the manifest's own hash, is what the reader meets)."""
    manifest = json.loads((root / records.MANIFEST).read_text())
    edit(manifest)
    records.write_manifest(root, manifest)
    return root / records.MANIFEST


@pytest.mark.parametrize("field", ["sha256", "index_sha256"])
def test_shard_entry_without_its_hash_is_one_line_in_verify_and_train(tmp_path, cli, field):
    data = damaged_dataset(tmp_path / "data", {})
    path = _edit_manifest(data, lambda m: m["splits"]["train"]["shards"][1].pop(field))
    code, _, err = cli("verify", data, "--workers", 1)
    assert code == 1 and "Traceback" not in err, err
    (problem,) = err.splitlines()[1:]
    for name in (str(path), "split 'train'", "train-00001.tar", f"no '{field}'", "prepare the data set again"):
        assert name in problem, (name, problem)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_run_recipe(data, 1, 1, 0))
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")  # the reader no longer skips the check
    assert_one_clear_line(code, err, path, "split 'train'", f"no '{field}'")


def test_split_without_shards_is_one_line(tmp_path, cli):
    data = damaged_dataset(tmp_path / "data", {})
    path = _edit_manifest(data, lambda m: m["splits"]["val"].pop("shards"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_run_recipe(data, 1, 1, 0))
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, path, "split 'val'", "no 'shards'", "prepare the data set again")


# --- 5. under torchrun, a bad image in evaluate on one rank stops the whole job -----------------------------------

@pytest.mark.parametrize("workers", [0, 1])
def test_torchrun_bad_image_on_rank_1_in_evaluate_ends_both_ranks_with_one_line(tmp_path, workers):
    """2 processes on loopback (gloo, CPU): val sample 7 is damaged, and evaluation gives rank r the samples r,
    r + 2, ...: only rank 1 meets it. Both processes end (the hang guard is far below gloo's 30-minute
    timeout) and the job's error names rank 1, the shard and the key."""
    from test_distributed import TORCHRUN, child_env, run
    from test_export import fake_run_checkpoint

    import numpy as np

    # The reader's 8th val sample (index 7, rank 1's 4th): write_split shuffles the 23 samples into 2 shards
    # with the split's seed (1 for val, see damaged_dataset).
    sample = int(np.concatenate(records.shuffled_shards(23, 2, 1))[7])
    key = f"val_{sample:05d}"
    data = damaged_dataset(tmp_path / "data", {"val": [sample]}, {"train": 8, "val": 23})
    ck = fake_run_checkpoint(tmp_path / "final.pt", data)
    r = run([*TORCHRUN, "--standalone", "--nproc-per-node", 2, "-m", "resnet_repro", "evaluate", "--checkpoint", ck,
             "--workers", workers, "--device", "cpu", "--batch-size", 4], child_env(), timeout=90)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    # torchrun's agent prints its own ChildFailedError summary; the ranks print no traceback of theirs
    assert errors and "]: Traceback" not in r.stderr, r.stderr[-3000:]
    assert all(ln == errors[0] for ln in errors), errors  # every rank says the same
    assert any("rank 1 of 2" in ln and "shard val-0000" in ln and f"key {key}" in ln for ln in errors), errors


# --- 12. env from any folder ----------------------------------------------------------------------------------------

def test_env_works_from_any_folder_machine_alone_or_with_a_recipe(tmp_path):
    from conftest import FASHION_MNIST_RECIPE

    alone = resnet_repro("env", "--json", cwd=tmp_path)  # outside the repository: no configs/ here
    assert alone.returncode == 0, alone.stderr
    facts = json.loads(alone.stdout)
    assert facts["hardware"]["cores"] >= 1 and "choices" not in facts and "recipe" not in facts
    text = resnet_repro("env", cwd=tmp_path)
    assert text.returncode == 0 and "cores" in text.stdout and "would use" not in text.stdout, text.stderr
    withr = resnet_repro("env", "--json", "--config", FASHION_MNIST_RECIPE, cwd=tmp_path)
    assert withr.returncode == 0, withr.stderr
    assert json.loads(withr.stdout)["choices"]["loader_workers"]["reason"].startswith(
        f"data.workers of {FASHION_MNIST_RECIPE}")


# --- 10. checkpoint pruning keeps checkpoints it cannot attribute ---------------------------------------------------

def test_pruning_never_deletes_a_torn_checkpoint_without_its_sha256(tmp_path):
    from resnet_repro import checkpoint

    torn = tmp_path / "ckpt-0000-000001.pt"  # another run's checkpoint, cut short before its checksum was written
    torn.write_bytes(b"PK\x03\x04 torn")
    for step in (2, 3, 4):
        checkpoint.save(tmp_path, {"model": {}, "run_id": "a"}, 0, step, keep=2)
    assert torn.read_bytes() == b"PK\x03\x04 torn"
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path, "a")] == ["ckpt-0000-000003.pt", "ckpt-0000-000004.pt"]


# --- 7. prepare into a folder it cannot write -----------------------------------------------------------------------

def _refuse(real, when):
    """``real`` (os.mkdir / os.rename) failing with EACCES, as for a user without write permission on the folder,
    for the paths ``when`` picks (tests run as root, which permission bits do not stop)."""
    import errno
    import os

    def call(path, *args, **kwargs):
        if when(str(path)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)
    return call


def test_prepare_cannot_create_its_staging_folder(tmp_path, cli, monkeypatch):
    import os

    from conftest import write_fashion_mnist_src

    write_fashion_mnist_src(tmp_path / "src")
    src, out = tmp_path / "src", tmp_path / "ro" / "out"
    out.parent.mkdir()
    # A read-only parent whose lock file is left over and writable: the lock is taken, the staging folder is not
    monkeypatch.setattr(os, "mkdir", _refuse(os.mkdir, lambda p: p.endswith(".partial")))
    code, _, err = cli("prepare", "fashion-mnist", "--src", src, "--out", out)
    assert_one_clear_line(code, err, f"{out}.partial", "Permission denied", "writable")
    assert not out.exists()


def test_prepare_cannot_move_the_finished_data_set_into_place(tmp_path, cli, monkeypatch):
    import os

    from conftest import write_fashion_mnist_src

    write_fashion_mnist_src(tmp_path / "src")
    out = tmp_path / "out"
    monkeypatch.setattr(os, "rename", _refuse(os.rename, lambda p: p == f"{out}.partial"))
    code, _, err = cli("prepare", "fashion-mnist", "--src", tmp_path / "src", "--out", out)
    assert_one_clear_line(code, err, f"{out}.partial", str(out), "Permission denied")
    assert (tmp_path / "out.partial" / records.MANIFEST).is_file()  # the finished work is kept, and said where
    monkeypatch.undo()


# --- 11. mallopt(M_MMAP_MAX, 0) only where batches are transformed on the CPU ---------------------------------------

class _FakeLibc:
    def __init__(self, calls):
        self.calls = calls

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_no_mmap_off_outside_training(monkeypatch, tmp_path, cli, texture_data):
    import ctypes

    import torch

    from resnet_repro.config import DataConfig
    from resnet_repro.data.augment.device import DeviceTransform
    from resnet_repro.evaluate import eval_transform

    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: _FakeLibc(calls))
    M_MMAP_MAX = -4
    cfg = DataConfig(mean=[0.5], std=[0.25])
    DeviceTransform(cfg, 1, torch.device("cpu"))  # what evaluate, predict or a user's script builds
    eval_transform(cfg, 1, torch.device("cpu"))
    assert (M_MMAP_MAX, 0) not in calls, calls
    recipe = tmp_path / "recipe.yaml"  # training on a CPU device still keeps its batches' memory
    recipe.write_text(tiny_run_recipe(texture_data, 1, 1, 0))
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", "train.epochs=1")
    assert code == 0, err
    assert (M_MMAP_MAX, 0) in calls


# --- 8. a lock held or left from another host ------------------------------------------------------------------------

OTHER = "pid=4242 host=nfs-node-7 since=2026-12-01T10:00:00+0000\nwhat=a training run\n"


def test_lock_held_from_another_host_names_it_and_never_says_ended(tmp_path, cli, texture_data):
    import fcntl
    import os

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(OTHER)
    fd = os.open(out / "run.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, as NFS's lock emulation shows another host's lock
    try:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(tiny_run_recipe(texture_data, 1, 1, 0))
        code, _, err = cli("train", "--config", recipe, "--out", out)
        assert_one_clear_line(code, err, "nfs-node-7", "pid 4242", "is in use")
        assert "has ended" not in err
    finally:
        os.close(fd)


def test_lock_left_from_another_host_needs_force(tmp_path, cli):
    from conftest import write_fashion_mnist_src

    write_fashion_mnist_src(tmp_path / "src")
    out = tmp_path / "out"
    lock = tmp_path / "out.lock"
    lock.write_text(OTHER)  # no flock: the other host's lock may not reach here, so that proves nothing
    code, _, err = cli("prepare", "fashion-mnist", "--src", tmp_path / "src", "--out", out)
    assert_one_clear_line(code, err, lock, "nfs-node-7", "--force")
    assert not out.exists() and lock.read_text() == OTHER
    code, _, err = cli("prepare", "fashion-mnist", "--src", tmp_path / "src", "--out", out, "--force")
    assert code == 0, err
    assert "warning: " in err and "nfs-node-7" in err and (out / records.MANIFEST).is_file()


# --- 9. the manifest's own hash; an older version's manifest --------------------------------------------------------

def _as_older_version(root: Path) -> dict:
    """The manifest as version 1 wrote it: format resnet-repro-records/1, no manifest_sha256 (written by hand)."""
    manifest = json.loads((root / records.MANIFEST).read_text())
    manifest.pop("manifest_sha256")
    manifest["format"] = "resnet-repro-records/1"
    (root / records.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def test_an_edited_manifest_is_refused(tmp_path, cli):
    data = damaged_dataset(tmp_path / "data", {})
    manifest = json.loads((data / records.MANIFEST).read_text())
    manifest["classes"] = ["3", "2", "1", "0"]  # relabelled by hand: every check but the manifest's own passes
    (data / records.MANIFEST).write_text(json.dumps(manifest))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_run_recipe(data, 1, 1, 0))
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, data / records.MANIFEST, "manifest_sha256", "prepare the data set again")
    manifest.pop("manifest_sha256")  # this format without its hash: not an older version, refused too
    (data / records.MANIFEST).write_text(json.dumps(manifest))
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, data / records.MANIFEST, "no 'manifest_sha256'")


def test_an_older_manifest_is_read_with_one_warning_and_verify_upgrades_it(tmp_path, cli):
    data = damaged_dataset(tmp_path / "data", {})
    old = _as_older_version(data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_run_recipe(data, 1, 1, 0))
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    assert err.count(f"warning: {data / records.MANIFEST} was written by an older version") == 1, err
    assert f"resnet-repro verify --upgrade {data}" in err
    code, out, err = cli("verify", data, "--workers", 1, "--upgrade")
    assert code == 0 and "upgraded from resnet-repro-records/1" in out, (out, err)
    new = json.loads((data / records.MANIFEST).read_text())
    assert new["format"] == records.FORMAT and new["manifest_sha256"] == records.manifest_sha256(new)
    assert {k: v for k, v in new.items() if k not in ("format", "manifest_sha256")} == \
        {k: v for k, v in old.items() if k != "format"}
    records._WARNED.clear()
    code, _, err = cli("verify", data, "--workers", 1)
    assert code == 0 and "older version" not in err, err


def test_verify_does_not_upgrade_damaged_data(tmp_path, cli):
    data = damaged_dataset(tmp_path / "data", {})
    _as_older_version(data)
    shard = data / "train-00000.tar"
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 0xFF  # same size: only verify's hash finds it
    shard.write_bytes(bytes(raw))
    code, _, err = cli("verify", data, "--workers", 1, "--upgrade")
    assert code == 1 and "not upgraded" in err, err
    assert json.loads((data / records.MANIFEST).read_text())["format"] == "resnet-repro-records/1"


# --- 2. --out inside a flat --src (class folders directly in it) ----------------------------------------------------

def test_out_inside_a_flat_src_leaves_the_source_untouched(tmp_path, cli):
    from test_data_errors import _folder, _prepare_folder

    src = _folder(tmp_path / "src")  # flat: src/<class>/*.jpg, where any new folder would be read as a class
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    out = src / "prepared" / "shards"
    code, _, err = _prepare_folder(cli, src, out)
    assert_one_clear_line(code, err, f"--out {out.resolve()} is inside --src {src.resolve()}")
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before  # no folder made in the source
    code, _, err = _prepare_folder(cli, src, tmp_path / "out")
    assert code == 0, err  # a second prepare finds the same three classes
    assert records.load_manifest(tmp_path / "out")["classes"] == ["ant", "cat", "dog"]
