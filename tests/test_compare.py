"""report with several run folders: the runs side by side, the keys that differ, the spread over seeds."""
from __future__ import annotations

import json

import cv2
import pytest
import yaml

from conftest import assert_one_clear_line
from resnet_repro.compare import load_entries, spread
from resnet_repro.config import Config


def make_run(root, seed=0, test=6.0, val=6.1, dataset="fashion-mnist", finished=True, train_splits=("train",),
             drop_key=None, **changes):
    """A finished Fashion-MNIST-style run folder: config.yaml (with `changes`, "section.key": value), three epoch
    lines, results.json with val and test blocks (the mirror 0.3 below each single view)."""
    root.mkdir(parents=True)
    cfg = Config().to_dict()
    cfg["train"]["seed"], cfg["train"]["epochs"] = seed, 3
    cfg["data"]["train_splits"] = list(train_splits)
    cfg["data"]["path"] = str(root.parent / "data-gone")  # leads nowhere from any folder: the record names the data
    for key, value in changes.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg["chosen_on"] = {"host": f"host{seed}", "cpu_class": "AVX2, no native bf16", "gpus": []}
    if drop_key:  # a config.yaml written before that option existed
        section, name = drop_key.split(".")
        del cfg[section][name]
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    epochs = 3 if finished else 2
    (root / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_top1_err": 30 / e, "images_per_s": 500.0,
         "data_wait_fraction": 0.01, "seconds": 60.0, "val_top1_err": val + 20 / e, "val_top5_err": 0.5}) + "\n"
        for e in range(1, epochs + 1)))
    if dataset:
        (root / "run.json").write_text(json.dumps({"run_id": root.name, "dataset": dataset}))  # written at start
    if finished:
        held_out = "val" not in train_splits
        (root / "results.json").write_text(json.dumps({
            "model": "resnet20", "dataset": dataset, "epochs": 3, "top1_err": test, "top5_err": 0.1,
            "headline": {"split": "test", "protocol": "single", "images": 10000, "held_out": True},
            "val": {"split": "val", "held_out": held_out, "images": 5000, "single": {"top1_err": val, "top5_err": 0.1},
                    "flip": {"top1_err": val - 0.3, "top5_err": 0.1}},
            "test": {"split": "test", "images": 10000, "single": {"top1_err": test, "top5_err": 0.1},
                     "flip": {"top1_err": test - 0.3, "top5_err": 0.1}},
            "wall_s": 200, "train_wall_s": 180, "device": "cpu", "precision": "fp32", "world_size": 1}))
    return root


def rows_of(md: str, section: str) -> list[list[str]]:
    """The table rows under `## section`, as lists of cells (header included)."""
    body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def test_seeds_of_one_recipe_are_aggregated_and_another_recipe_stands_apart(tmp_path, cli):
    runs = [make_run(tmp_path / "runs" / f"s{seed}", seed=seed, test=t, val=v, **{"data.workers": seed + 1})
            for seed, t, v in ((0, 6.0, 6.1), (1, 6.2, 6.0), (2, 6.4, 6.2))]
    # Written before data.flip_schedule existed: read as its default, so still the same recipe.
    runs.append(make_run(tmp_path / "runs" / "s3", seed=3, test=6.2, val=6.1, drop_key="data.flip_schedule"))
    runs.append(make_run(tmp_path / "runs" / "lr2", seed=0, test=5.5, val=6.5, **{"optim.lr": 0.2}))
    code, out, err = cli("report", *runs, "--out", tmp_path / "cmp")
    assert code == 0, err
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md in out
    assert "Config keys that differ between the runs: `optim.lr`, `train.seed`." in md
    # The loader's worker count changes nothing trained: named, not a column, and it does not split the group.
    assert "Also different, changing nothing the model is trained on: `data.workers`." in md
    table = rows_of(md, "Runs")
    head = table[0]
    assert head[:5] == ["run", "model", "epochs", "optim.lr", "train.seed"]
    assert head[5:9] == ["test, single view", "test, + mirror", "val, single view", "val, + mirror"]
    assert [r[0] for r in table[1:]] == ["s0", "s1", "s2", "s3", "lr2"]
    assert table[5][3:7] == ["0.2", "0", "5.50", "5.20"]
    groups = rows_of(md, "Over seeds")
    assert groups[0] == ["runs", "seeds", "optim.lr", *head[5:9]]
    assert len(groups) == 2  # the lr-0.2 run alone is no group
    s = spread([6.0, 6.2, 6.4, 6.2])
    assert groups[1][:3] == ["s0, s1, s2, s3", "0, 1, 2, 3", "0.1"]
    assert groups[1][3] == f"{s['mean']:.2f} ± {s['std']:.2f} (6.00–6.40)" == "6.20 ± 0.16 (6.00–6.40)"
    assert groups[1][5] == "6.10 ± 0.08 (6.00–6.20)"  # val single: 6.1, 6.0, 6.2, 6.1
    png = cv2.imread(str(tmp_path / "cmp" / "curves.png"))
    assert png is not None and png.shape[0] > 300


def test_the_net_and_its_epochs_are_one_column_each(tmp_path, cli):
    runs = [make_run(tmp_path / "runs" / "r20"), make_run(tmp_path / "runs" / "w2", **{"model.width": 2}),
            make_run(tmp_path / "runs" / "r32", **{"model.name": "resnet32", "train.epochs": 4}, finished=False)]
    code, out, err = cli("report", *runs, "--out", tmp_path / "cmp")
    assert code == 0, err
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Config keys that differ between the runs: `model.name`, `model.width`, `train.epochs`." in md
    table = rows_of(md, "Runs")
    assert table[0][:4] == ["run", "model", "epochs", "test, single view"]  # no column repeats model or epochs
    assert [r[1:3] for r in table[1:]] == [["resnet20", "3"], ["resnet20 x2 wide", "3"],
                                           ["resnet32", "2 of 4, not finished"]]


def test_spread_is_the_sample_standard_deviation():
    s = spread([1.0, 3.0])
    assert (s["n"], s["mean"], s["min"], s["max"]) == (2, 2.0, 1.0, 3.0)
    assert s["std"] == pytest.approx(2 ** 0.5)  # n - 1 in the denominator, not n (which gives 1.0)
    assert spread([4.0])["std"] is None


def test_an_unfinished_run_gets_a_row_from_its_last_val_pass_and_stays_out_of_the_spread(tmp_path, cli):
    a = make_run(tmp_path / "a", seed=0, test=6.0)
    b = make_run(tmp_path / "b", seed=1, test=6.4)
    c = make_run(tmp_path / "c", seed=2, val=6.0, finished=False)
    code, out, err = cli("report", a, b, c, "--out", tmp_path / "cmp", "--quiet")
    assert code == 0, err
    assert out.startswith("wrote ")  # --quiet: no table
    md = (tmp_path / "cmp" / "compare.md").read_text()
    row = next(r for r in rows_of(md, "Runs")[1:] if r[0] == "c")
    assert row[2] == "2 of 3, not finished"
    assert row[4:8] == ["-", "-", "16.00", "-"]  # the last val pass: 6.0 + 20 / 2, single view
    groups = rows_of(md, "Over seeds")
    assert [g[:2] for g in groups[1:]] == [["a, b", "0, 1"]]
    assert groups[1][2] == "6.20 ± 0.28 (6.00–6.40)"


def test_val_that_was_trained_on_is_marked(tmp_path):
    a = make_run(tmp_path / "a", seed=0, train_splits=("train", "val"))
    b = make_run(tmp_path / "b", seed=1)
    entries = load_entries([a, b])
    assert [e.val_held_out for e in entries] == [False, True]
    from resnet_repro.compare import comparison_markdown
    row = rows_of(comparison_markdown(entries), "Runs")[1]
    assert row[-4] == "6.10 (not held out)" and row[-3] == "5.80 (not held out)"


def test_runs_that_cannot_be_compared_are_refused_in_one_line(tmp_path, cli):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", seed=1, dataset="cifar10")
    code, _, err = cli("report", a, b, "--out", tmp_path / "cmp")
    assert_one_clear_line(code, err, a, b, "cifar10", "fashion-mnist")
    code, _, err = cli("report", a, tmp_path / "a" / ".", "--out", tmp_path / "cmp")
    assert_one_clear_line(code, err, "named twice")
    code, _, err = cli("report", a, tmp_path / "nope", "--out", tmp_path / "cmp")
    assert_one_clear_line(code, err, tmp_path / "nope")
    c = make_run(tmp_path / "c", seed=2)
    code, _, err = cli("report", a, c)
    assert_one_clear_line(code, err, "--out")
    assert not (tmp_path / "cmp").exists()


def test_a_run_without_its_config_is_shown_and_kept_out_of_the_spread(tmp_path):
    from resnet_repro.compare import comparison_markdown

    a = make_run(tmp_path / "a", seed=0, test=6.0, **{"optim.lr": 0.2})
    b = make_run(tmp_path / "b", seed=1, test=6.4, **{"optim.lr": 0.2})
    c = make_run(tmp_path / "c", seed=2, test=5.0)
    (c / "config.yaml").unlink()  # its recipe is unknown: not read as the defaults
    md = comparison_markdown(load_entries([a, b, c]))
    assert "Config keys that differ between the runs: `train.seed`." in md  # c's missing keys differ from nothing
    row = next(r for r in rows_of(md, "Runs")[1:] if r[0] == "c")
    assert row[3] == "?" and row[4] == "5.00"
    groups = rows_of(md, "Over seeds")
    assert [g[:2] for g in groups[1:]] == [["a, b", "0, 1"]]


def test_a_run_whose_data_set_is_not_recorded_is_compared_as_it_is(tmp_path):
    from resnet_repro.compare import comparison_markdown

    a = make_run(tmp_path / "a", seed=0)
    b = make_run(tmp_path / "b", seed=1, dataset=None, finished=False)  # no run.json, no results.json, no data
    md = comparison_markdown(load_entries([b, a]))
    assert md.startswith("# 2 runs on fashion-mnist")  # named by the run that records it
    assert [r[0] for r in rows_of(md, "Runs")[1:]] == ["b", "a"]


def test_an_older_results_file_gives_its_val_figures_by_the_training_protocol(tmp_path):
    # results.json from before the test split was scored apart: top1_err in train.eval_protocol, the single view
    # beside it.
    from resnet_repro.compare import comparison_markdown

    a = make_run(tmp_path / "a", seed=0, **{"train.eval_protocol": "flip"})
    (a / "results.json").write_text(json.dumps({"model": "resnet20", "dataset": "fashion-mnist", "epochs": 3,
                                                "top1_err": 5.9, "top5_err": 0.1, "top1_err_single": 6.2}))
    b = make_run(tmp_path / "b", seed=1)
    row = rows_of(comparison_markdown(load_entries([a, b])), "Runs")[1]
    assert row[0] == "a" and row[-6:-2] == ["-", "-", "6.20", "5.90"]
