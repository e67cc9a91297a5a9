"""Three splits where a data set ships two: the held-out val split (data/sources/holdout.py) as prepare writes it, the
test split scored once when training ends (never before), results.json's val and test, and `evaluate --split`.

Data: hand-written IDX files (conftest.write_fashion_mnist_src with balanced labels) and small texture data sets
with train / val / test splits (conftest.write_image_dataset); runs are 2 epochs of ResNet-20 on 16x16 images.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import REPO, assert_one_clear_line, idx_bytes, write_fashion_mnist_src, write_gz, write_image_dataset
from resnet_repro.training import finish, setup
from resnet_repro.config import ConfigError
from resnet_repro.recipe import load_config
from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.sources import holdout
from resnet_repro.data.sources.fashion_mnist import prepare_fashion_mnist

RECIPE = REPO / "configs" / "fashion_mnist" / "resnet20.yaml"


# --- The mechanism ---------------------------------------------------------------------------------------------

def test_official_fashion_mnist_sizes_are_55000_5000_with_500_per_class():
    labels = np.repeat(np.arange(10), 6000)  # the official training file: 6,000 images per class
    np.random.default_rng(0).shuffle(labels)
    idx, record = holdout.holdout(labels, 10, seed=0, size=round(len(labels) / 12))
    assert len(idx) == 5000 and record["size"] == 5000 and record["counts_per_class"] == [500] * 10
    assert np.bincount(labels[idx], minlength=10).tolist() == [500] * 10
    assert record["indices"] == sorted(record["indices"]) == idx.tolist() and len(set(idx.tolist())) == 5000


def test_stratified_sizes_follow_the_class_shares_and_sum_exactly():
    counts = [50, 30, 15, 5]
    assert holdout.sizes_for_total(counts, 10) == [5, 3, 2, 0]  # 5, 3, 1.5, 0.5: the tie goes to class 2
    assert sum(holdout.sizes_for_total(counts, 37)) == 37
    assert holdout.sizes_for_fraction(counts, 0.2) == [10, 6, 3, 1]
    with pytest.raises(holdout.HoldoutError, match="below the 100"):
        holdout.sizes_for_total(counts, 100)


def test_the_hold_out_is_a_function_of_the_seed():
    labels = np.random.default_rng(3).integers(0, 5, 400)
    a, _ = holdout.holdout(labels, 5, seed=1, size=40)
    b, _ = holdout.holdout(labels, 5, seed=1, size=40)
    c, _ = holdout.holdout(labels, 5, seed=2, size=40)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert np.bincount(labels[a], minlength=5).tolist() == holdout.sizes_for_total(np.bincount(labels), 40)


# --- prepare fashion-mnist -------------------------------------------------------------------------------------

def balanced_src(src, per_class=24, n_test=7, seed=0):
    """Fashion-MNIST files with `per_class` training images of each of the 10 classes, shuffled."""
    write_fashion_mnist_src(src, n_train=10 * per_class, n_test=n_test, seed=seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    np.random.default_rng(seed).shuffle(labels)
    write_gz(src / "train-labels-idx1-ubyte.gz", idx_bytes(labels))
    return labels


def test_prepare_fashion_mnist_writes_three_disjoint_splits_and_records_the_hold_out(tmp_path, cli):
    labels = balanced_src(tmp_path / "src")
    out = tmp_path / "fm"
    code, _, err = cli("prepare", "fashion-mnist", "--src", tmp_path / "src", "--out", out, "--val-size", 30)
    assert code == 0, err
    manifest = records.load_manifest(out)
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 210, "val": 30, "test": 7}
    assert manifest["evaluation_split"] == "test" and manifest["selection_split"] == "val"
    held = manifest["holdout"]
    assert held["split"] == "val" and held["seed"] == 0 and held["counts_per_class"] == [3] * 10
    tr, va, te = (RecordReader(out, s) for s in ("train", "val", "test"))
    val_idx = sorted(int(k.split("_")[1]) for k in va.keys)
    train_idx = {int(k.split("_")[1]) for k in tr.keys}
    assert val_idx == held["indices"]  # the manifest names exactly the images in the val shards
    assert train_idx.isdisjoint(val_idx) and train_idx | set(val_idx) == set(range(240))
    assert np.bincount(va.labels, minlength=10).tolist() == [3] * 10  # stratified by class
    assert (labels[val_idx] == va.labels[np.argsort([int(k.split("_")[1]) for k in va.keys])]).all()
    assert all(k.startswith("test_") for k in te.keys)  # the official test images, none held out of train


def test_the_same_seed_gives_the_same_split_and_another_seed_another(tmp_path):
    balanced_src(tmp_path / "src")
    a = records.load_manifest(prepare_fashion_mnist(tmp_path / "a", tmp_path / "src", seed=5, val_size=20))
    b = records.load_manifest(prepare_fashion_mnist(tmp_path / "b", tmp_path / "src", seed=5, val_size=20))
    c = records.load_manifest(prepare_fashion_mnist(tmp_path / "c", tmp_path / "src", seed=6, val_size=20))
    assert a["holdout"]["indices"] == b["holdout"]["indices"] != c["holdout"]["indices"]
    assert [s["sha256"] for s in a["splits"]["val"]["shards"]] == [s["sha256"] for s in b["splits"]["val"]["shards"]]


def test_a_val_size_as_large_as_the_training_set_is_one_clear_error(tmp_path, cli):
    balanced_src(tmp_path / "src", per_class=2)
    code, _, err = cli("prepare", "fashion-mnist", "--src", tmp_path / "src", "--out", tmp_path / "fm",
                       "--val-size", 20)
    assert_one_clear_line(code, err, "train-labels-idx1-ubyte.gz", "--val-size", "below the 20")
    assert not (tmp_path / "fm").exists()


# --- Config: the test split is never trained on nor used during training --------------------------------------

def test_training_on_the_test_split_or_evaluating_it_per_epoch_is_a_config_error():
    with pytest.raises(ConfigError, match="data.train_splits.*'test'"):
        load_config(RECIPE, ["data.train_splits=[train, test]"], profile="cpu")  # the recipe has profiles: name one
    with pytest.raises(ConfigError, match="data.val_split.*'test'"):
        load_config(RECIPE, ["data.val_split=test"], profile="cpu")
    assert load_config(RECIPE, ["data.train_splits=[train, val]"], profile="cpu").data.train_splits == ["train", "val"]


# --- Training: test scored once, at the end -------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_splits(tmp_path_factory):
    return write_image_dataset(tmp_path_factory.mktemp("three"), {"train": 128, "val": 32, "test": 40})


def tiny_run(cli, data, out, *more):
    args = ["train", "--config", RECIPE, "--out", out]
    for item in [f"data.path={data}", "data.batch_size=32", "data.eval_batch_size=24", "data.workers=0",
                 "data.mean=[0.5]", "data.std=[0.25]", "train.epochs=2", "train.precision=fp32",
                 "train.precise_bn_batches=2", "train.log_interval=4", "train.eval_every=1", *more]:
        args += ["--set", item]
    return cli(*args)


@pytest.fixture(scope="module")
def spied_run(three_splits, tmp_path_factory):
    """A run whose RecordReader opens are recorded with how many epochs metrics.jsonl held at the time."""
    from resnet_repro.cli import main

    out = tmp_path_factory.mktemp("run") / "r"
    opened = []
    real = setup.open_reader  # every split training reads goes through it (a folder or a URL)

    def spy(root, split, cache_dir=None):
        logged = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").is_file() else 0
        opened.append((split, logged))
        return real(root, split, cache_dir)

    mp = pytest.MonkeyPatch()
    for module in (setup, finish):  # train and val when the run opens its data; test at its end
        mp.setattr(module, "open_reader", spy)
    try:
        args = ["train", "--config", str(RECIPE), "--out", str(out)]
        for item in [f"data.path={three_splits}", "data.batch_size=32", "data.eval_batch_size=24",
                     "data.workers=0", "data.mean=[0.5]", "data.std=[0.25]", "train.epochs=2",
                     "train.precision=fp32", "train.precise_bn_batches=2", "train.log_interval=4",
                     "train.eval_every=1", "data.train_splits=[train]"]:  # a choice run: val held out
            args += ["--set", item]
        assert main(args) == 0
    finally:
        mp.undo()
    return out, opened


def test_the_test_split_is_opened_once_after_the_last_epoch(spied_run):
    _, opened = spied_run
    assert [s for s, _ in opened].count("test") == 1
    assert ("test", 2) in opened  # after both epochs were logged: never during training
    assert opened[0][0] == ["train"] and opened[1][0] == "val"


def test_results_carry_val_and_test_with_the_single_view_first(spied_run, three_splits):
    out, _ = spied_run
    res = json.loads((out / "results.json").read_text())
    assert res["headline"] == {"split": "test", "protocol": "single", "images": 40, "held_out": True}
    assert res["test"]["images"] == 40 and res["val"]["images"] == 32 and res["val"]["held_out"] is True
    for block in (res["test"], res["val"]):
        assert list(k for k in block if k in ("single", "flip")) == ["single", "flip"]  # the recipe: flip
    assert (res["top1_err"], res["top5_err"]) == (res["test"]["single"]["top1_err"], res["test"]["single"]["top5_err"])
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # The per-epoch figures are val's: the last epoch's val figure is the val block before precise BN.
    assert metrics[-1]["val_top1_err"] == pytest.approx(res["val"]["before_precise_bn"]["flip"]["top1_err"])
    assert all("val_held_out" not in m for m in metrics)


def test_results_record_which_images_were_right_and_report_pairs_runs_by_them(spied_run, three_splits, tmp_path,
                                                                              cli):
    from resnet_repro.paired import labels_digest, unpack_hits

    out, _ = spied_run
    res = json.loads((out / "results.json").read_text())
    for name, images in (("val", 32), ("test", 40)):
        block = res[name]
        assert block["labels_sha256"] == labels_digest(RecordReader(three_splits, name).labels)
        for protocol in ("single", "flip"):
            right = unpack_hits(block[protocol]["top1_hits"], images)
            assert 100.0 * (1 - right.mean()) == pytest.approx(block[protocol]["top1_err"], abs=1e-9)
    assert "top1_hits" not in res["val"]["before_precise_bn"]["single"]
    # The same run twice (a copy): every split and protocol paired, no image differs.
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    code, _, err = cli("report", out, twin, "--out", tmp_path / "cmp")
    assert code == 0, err
    md = (tmp_path / "cmp" / "compare.md").read_text().split("## Image by image", 1)[1]
    rows = [r for r in md.splitlines() if r.split(" | ")[0].endswith("twin")]  # labels: paths from the shared folder
    assert len(rows) == 4 and all(r.endswith("| +0.00 | 0 | 0 | 1.000 |") for r in rows)
    assert {r.split(" | ")[1] for r in rows} == {"val (32)", "test (40)"}


def test_evaluate_scores_test_by_default_and_val_when_asked(spied_run, three_splits, cli):
    out, _ = spied_run
    res = json.loads((out / "results.json").read_text())
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", 0, "--protocol", "single",
                             "--protocol", "flip")
    assert code == 0, err
    assert "split test (the default: test where the data set has one, else val)" in printed
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", 0, "--json",
                             "--protocol", "single", "--protocol", "flip")
    got = json.loads(printed.strip().splitlines()[-1])
    assert got["split"] == "test" and got["results"][0]["count"] == 40
    assert got["results"][0]["top1_err"] == pytest.approx(res["test"]["single"]["top1_err"], abs=1e-9)
    assert got["results"][1]["top1_err"] == pytest.approx(res["test"]["flip"]["top1_err"], abs=1e-9)
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", 0, "--json", "--split", "val")
    got = json.loads(printed.strip().splitlines()[-1])
    assert got["split"] == "val" and got["split_chosen_by"] == "--split" and got["results"][0]["count"] == 32
    assert got["results"][0]["top1_err"] == pytest.approx(res["val"]["single"]["top1_err"], abs=1e-9)
    code, _, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", 0, "--split", "nope")
    assert_one_clear_line(code, err, "no split 'nope'")


def test_training_on_train_and_val_labels_val_as_not_held_out(three_splits, tmp_path, cli):
    code, printed, err = tiny_run(cli, three_splits, tmp_path / "r", "data.train_splits=[train, val]")
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["val"]["held_out"] is False and res["headline"]["split"] == "test" and res["headline"]["held_out"]
    assert res["train_splits"] == ["train", "val"]
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["val_held_out"] is False for m in metrics)
    assert "not held out" in printed
    assert "top1_hits" in (tmp_path / "r" / "results.json").read_text() and "top1_hits" not in printed  # not logged
    # 160 images trained on = 128 + 32: 5 steps of 32 per epoch.
    assert res["steps"] == 2 * 5


def test_without_a_test_split_the_headline_is_val_and_says_so(tmp_path, cli, texture_data):
    code, printed, err = tiny_run(cli, texture_data, tmp_path / "r")
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "test" not in res and res["headline"]["split"] == "val"
    assert res["top1_err"] == res["val"]["single"]["top1_err"]
    assert "headline: val split (64 images), single centre view" in printed


def test_a_fashion_mnist_folder_prepared_before_the_val_split_is_refused(tmp_path, cli):
    data = write_image_dataset(tmp_path / "old", {"train": 64, "val": 16})  # val was the official test set then
    manifest = records.load_manifest(data)
    manifest["dataset"] = "fashion-mnist"
    records.write_manifest(data, manifest)
    code, _, err = tiny_run(cli, data, tmp_path / "r")
    assert_one_clear_line(code, err, str(data), "prepare fashion-mnist", "--force")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
