"""report: curves PNG and the Markdown comparison table, from run folders made here."""
from __future__ import annotations

import json
import math

import cv2
import pytest
import yaml

from resnet_repro.config import Config
from resnet_repro.published import PUBLISHED, published_for
from resnet_repro.report import ReportError, load_run, report_markdown, write_report


def make_run(root, model="resnet50", dataset="imagenet", epochs=12, finished=True, val_size=224, val_resize=256):
    root.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.model.name, cfg.train.epochs = model, epochs
    cfg.data.val_size, cfg.data.val_resize = val_size, val_resize
    (root / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    lines = []
    for e in range(1, epochs + 1 if finished else epochs // 2 + 1):
        lr = 0.1 * 0.1 ** (e > epochs // 2)
        lines.append(json.dumps({"epoch": e, "lr": lr, "train_loss": 3 / e, "train_top1_err": 80 / math.sqrt(e),
                                 "images_per_s": 1000 + 10 * e, "data_wait_fraction": 0.05, "seconds": 60.0,
                                 "bad_samples": 0, "val_top1_err": 75 / math.sqrt(e), "val_top5_err": 40 / e,
                                 "val_loss": 2.5 / e}))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (root / "results.json").write_text(json.dumps({
            "model": model, "dataset": dataset, "epochs": epochs, "top1_err": 21.65, "top5_err": 11.55,
            "headline": {"split": "val", "protocol": "single", "images": 50000, "held_out": True},
            "val": {"split": "val", "held_out": True, "images": 50000, "single": {"top1_err": 21.65, "top5_err": 11.55},
                    "before_precise_bn": {"single": {"top1_err": 21.9, "top5_err": 11.7}}},
            "precise_bn_batches": 25, "val_count": 50000, "wall_s": 7300,
            "train_wall_s": 7200, "device": "cuda:0", "precision": "bf16", "world_size": 8}))
    return root


def test_imagenet_run_sits_next_to_the_published_resnet50_figures(tmp_path):
    run = make_run(tmp_path / "r50")
    md = report_markdown(load_run(run))
    assert ("| **this run** | 12 | val (50000 images) | centre crop 224 of shorter side 256, precise BN (the headline) "
            "| 21.65 | 11.55 |") in md
    assert "cuda:0 x8, bf16, 2.00 h" in md
    for who, e1 in (("fb.resnet.torch", "24.01"), ("torchvision IMAGENET1K_V1", "23.87"),
                    ("reference recipe", "24.36"), ("He et al. 2015, released Caffe model", "24.70")):
        assert any(who in line and f"| {e1} |" in line for line in md.splitlines()), who
    assert "| ILSVRC-2012 val | 10-crop | 22.90 |" in md
    assert "30.43" not in md  # ResNet-18's row belongs to another model


def test_each_data_set_gets_its_own_published_rows():
    assert [r[5] for r in published_for("cifar10", "resnet56")] == [6.97]
    assert len(published_for("fashion-mnist", "resnet20")) == 6  # the README benchmark, any model
    assert published_for("cifar100", "resnet20") == []
    assert all(r[5] > 0 and r[7] for r in PUBLISHED)  # every figure has a source


def test_unfinished_run_and_evaluation_rows(tmp_path):
    run = make_run(tmp_path / "fm", model="resnet20", dataset="fashion-mnist", epochs=10, finished=False,
                   val_size=0, val_resize=0)
    (run / "evaluation.json").write_text(json.dumps({"results": [
        {"protocol": "10crop", "description": "shorter side 32, 4 corner + centre crops 28, + mirrors",
         "top1_err": 6.5, "top5_err": 0.2}]}))
    md = report_markdown(load_run(run))
    assert "| **this run (not finished)** | 5 of 10 | val | single view, stored size | 33.54 |" in md
    assert "| this run, 10crop | 5 | ? | shorter side 32, 4 corner + centre crops 28, + mirrors | 6.50 | 0.20 |" in md
    assert "no results.json" in md


def test_the_headline_is_the_single_view_on_test_and_every_other_row_says_its_split(tmp_path):
    run = make_run(tmp_path / "fm", model="resnet20", dataset="fashion-mnist", epochs=4, val_size=0, val_resize=0)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["eval_protocol"] = "flip"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "results.json").write_text(json.dumps({
        "model": "resnet20", "dataset": "fashion-mnist", "epochs": 4, "top1_err": 5.14, "top5_err": 0.1,
        "headline": {"split": "test", "protocol": "single", "images": 10000, "held_out": True},
        "val": {"split": "val", "held_out": True, "images": 5000, "single": {"top1_err": 5.3, "top5_err": 0.2},
                "flip": {"top1_err": 5.2, "top5_err": 0.2}, "before_precise_bn": {"single": {"top1_err": 5.5}}},
        "test": {"split": "test", "images": 10000, "single": {"top1_err": 5.14, "top5_err": 0.1},
                 "flip": {"top1_err": 4.99, "top5_err": 0.1}},
        "precise_bn_batches": 25, "wall_s": 2400, "device": "cpu", "precision": "bf16"}))
    md = report_markdown(load_run(run))
    rows = [line for line in md.splitlines() if line.startswith("| ") and "this run" in line]
    assert rows[0].startswith("| **this run** | 4 | test (10000 images) | single view, stored size, precise BN "
                              "(the headline) | 5.14 |")
    assert rows[1].startswith("| this run | 4 | test (10000 images) | centre view + mirror, stored size, precise "
                              "BN | 4.99 |")  # the better figure is an extra row, not the headline
    assert [r.split(" | ")[2] for r in rows[2:]] == ["val (5000 images)"] * 2
    assert sum("**" in r for r in rows) == 1
    assert "**headline: top-1 / top-5 error 5.14% / 0.10% on the test split (10000 images), single centre view**" in md
    published = [line for line in md.splitlines() if "zalandoresearch" in line]
    assert published and all("| official test |" in line for line in published)


def test_a_results_file_from_before_the_test_split_is_labelled_as_val(tmp_path):
    run = make_run(tmp_path / "old", model="resnet20", dataset="fashion-mnist", epochs=4, val_size=0, val_resize=0)
    (run / "results.json").write_text(json.dumps({"model": "resnet20", "dataset": "fashion-mnist", "epochs": 4,
                                                  "top1_err": 5.89, "top5_err": 0.05, "top1_err_single": 5.93,
                                                  "top5_err_single": 0.05, "val_count": 10000}))
    md = report_markdown(load_run(run))
    assert "| **this run** | 4 | val (the split training evaluated) |" in md and "5.93" in md


def test_png_is_drawn(tmp_path):
    paths = write_report(make_run(tmp_path / "r50"))
    img = cv2.imread(paths["png"])
    assert img is not None and img.shape[0] > 900 and img.shape[1] > 700
    assert img.std() > 20  # not blank
    assert "![training curves](curves.png)" in (tmp_path / "r50" / "report" / "report.md").read_text()


def test_torn_and_broken_logs(tmp_path):
    run = make_run(tmp_path / "r", finished=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 7, "lr": 0.0')  # a writer killed mid-line: the record up to the line before
    assert len(load_run(run).metrics) == 6
    (run / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ReportError, match="metrics.jsonl line 2"):
        load_run(run)
    with pytest.raises(ReportError, match="not found"):
        load_run(tmp_path / "nothing")


def test_report_cli(cli, tmp_path):
    run = make_run(tmp_path / "r50")
    code, out, err = cli("report", run, "--out", tmp_path / "rep")
    assert code == 0, err
    assert "| **this run** |" in out and (tmp_path / "rep" / "curves.png").is_file()
    code, out, err = cli("report", tmp_path / "none")
    assert code == 2 and "metrics.jsonl: not found" in err


def test_report_on_a_run_with_no_finished_epoch_says_so_in_one_line(cli, tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    (run / "config.yaml").write_text("train: {epochs: 3}\n")  # what train writes before its first step
    code, out, err = cli("report", run)
    assert code == 2 and "no epoch has finished yet" in err and "--resume auto" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
