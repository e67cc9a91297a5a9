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


def flip_run(root, results: dict):
    """A finished 4-epoch Fashion-MNIST run whose training scored centre + mirror, with the given results.json."""
    run = make_run(root, model="resnet20", dataset="fashion-mnist", epochs=4, val_size=0, val_resize=0)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["eval_protocol"] = "flip"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "results.json").write_text(json.dumps(results))
    return run


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
    # ImageNet has no test split: its val is the headline's split, not one where choices were made.
    assert "compared on the val split (the split the headline is scored on)" in md and "test split once" not in md


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
    run = flip_run(tmp_path / "fm", {
        "model": "resnet20", "dataset": "fashion-mnist", "epochs": 4, "top1_err": 5.14, "top5_err": 0.1,
        "headline": {"split": "test", "protocol": "single", "images": 10000, "held_out": True},
        "val": {"split": "val", "held_out": True, "images": 5000, "single": {"top1_err": 5.3, "top5_err": 0.2},
                "flip": {"top1_err": 5.2, "top5_err": 0.2}, "before_precise_bn": {"single": {"top1_err": 5.5}}},
        "test": {"split": "test", "images": 10000, "single": {"top1_err": 5.14, "top5_err": 0.1},
                 "flip": {"top1_err": 4.99, "top5_err": 0.1}},
        "precise_bn_batches": 25, "wall_s": 2400, "device": "cpu", "precision": "bf16"})
    md = report_markdown(load_run(run))
    rows = [line for line in md.splitlines() if line.startswith("| ") and "this run" in line]
    assert rows[0].startswith("| **this run** | 4 | test (10000 images) | single view, stored size, precise BN "
                              "(the headline) | 5.14 |")
    assert rows[1].startswith("| this run | 4 | test (10000 images) | centre view + mirror, stored size, precise "
                              "BN | 4.99 |")  # the better figure is an extra row, not the headline
    assert [r.split(" | ")[2] for r in rows[2:]] == ["val (5000 images)"] * 2
    assert sum("**" in r for r in rows) == 1
    assert "**headline: top-1 / top-5 error 5.14% / 0.10% on the test split (10000 images), single centre view**" in md
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "classes": 4}))  # top-5 of 4 classes holds every label
    md4 = report_markdown(load_run(run))
    assert "top-1 / top-5 error 5.14% / n/a (4 classes) on the test split" in md4
    rows4 = [line for line in md4.splitlines() if line.startswith("| ") and "this run" in line]
    assert len(rows4) == 4 and all(r.split(" | ")[5] == "n/a (4 classes)" for r in rows4)
    published = [line for line in md.splitlines() if "zalandoresearch" in line]
    assert published and all("| official test |" in line for line in published)
    assert "compared on the val split (choices are made there; training scored the test split once)" in md


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


def test_report_default_folder_checked_before_the_work(cli, tmp_path):
    run = make_run(tmp_path / "r50")
    (run / "report").write_text("a file where the report folder goes\n")
    code, _, err = cli("report", run)  # was: FileExistsError's traceback after the run was read
    assert code == 2 and f"{run / 'report'} (the default output folder; choose another with --out) is a file" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = cli("report", run, "--out", tmp_path / "elsewhere")
    assert code == 0, err


def test_report_on_a_run_with_no_finished_epoch_says_so_in_one_line(cli, tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    (run / "config.yaml").write_text("train: {epochs: 3}\n")  # what train writes before its first step
    code, out, err = cli("report", run)
    assert code == 2 and "no epoch has finished yet" in err and "--resume auto" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_damaged_metrics_file_is_an_error_naming_the_file_and_line(tmp_path):
    run = make_run(tmp_path / "r", finished=False)
    path = run / "metrics.jsonl"
    good = path.read_bytes().splitlines(keepends=True)
    for line, why in ((b"\xff\xfe not text\n", "line 3: not UTF-8"),
                      (b'{"lr": 0.1, "train_loss": 1.0}\n', 'line 3: no "epoch"'),
                      (b'{"epoch": "3", "lr": 0.1}\n', 'line 3: "epoch": "3" is not an epoch number'),
                      (b"[1, 2]\n", "line 3: a JSON list, not an epoch's object"),
                      (b'{"epoch": 3, "seconds": "60"}\n', 'line 3: seconds is "60", not a number'),
                      (good[1], "line 3: epoch 2 after epoch 2")):
        path.write_bytes(b"".join(good[:2]) + line + b"".join(good[3:]))
        with pytest.raises(ReportError) as e:
            load_run(run)
        assert str(e.value).startswith(str(path)) and why in str(e.value), (why, str(e.value))


def test_a_resume_event_line_is_not_an_epoch_and_a_lost_epoch_line_is_counted(tmp_path):
    run = make_run(tmp_path / "r")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    event = json.dumps({"event": "resume", "at_epoch": 4, "at_step": 0, "overrides": {}, "allowed_changes": [],
                        "hardware": {}})
    (run / "metrics.jsonl").write_text("\n".join(lines[:4] + [event] + lines[4:]) + "\n")
    loaded = load_run(run)
    assert [m["epoch"] for m in loaded.metrics] == list(range(1, 13))
    assert "- epochs logged: 12 of 12\n" in report_markdown(loaded)
    (run / "metrics.jsonl").write_text("\n".join(lines[:4] + lines[5:]) + "\n")  # epoch 5's line lost
    assert "- epochs logged: 11 of 12 (no line for epoch 5)\n" in report_markdown(load_run(run))
    (run / "metrics.jsonl").write_text("\n".join(lines[5:8] + lines[9:]) + "\n")  # 1-5 and 9 lost
    assert "- epochs logged: 6 of 12 (no line for epochs 1-5, 9)\n" in report_markdown(load_run(run))


def test_a_cut_off_last_line_is_dropped_with_a_warning(tmp_path, capsys):
    run = make_run(tmp_path / "r", finished=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 7, "lr": 0.0')
    capsys.readouterr()
    assert len(load_run(run).metrics) == 6
    err = capsys.readouterr().err
    assert f"warning: {run / 'metrics.jsonl'} line 7: cut off" in err and "dropping it" in err
    assert "epochs logged: 6 of 12" in report_markdown(load_run(run))


def test_a_results_file_that_is_not_a_runs_results_is_an_error_naming_it(tmp_path):
    run = make_run(tmp_path / "r")
    path = run / "results.json"
    finished = json.loads(path.read_text())
    for content, why in (([1, 2], "a JSON list, not an object"), ("null", "a JSON null, not an object"),
                         ({}, "no top1_err"), ({**finished, "top5_err": None}, "top5_err is null, not a number"),
                         ({**finished, "headline": "val"}, 'headline is "val", not an object'),
                         ({k: v for k, v in finished.items() if k != "val"}, "no val "),
                         ({**finished, "val": {**finished["val"], "single": {"top1_err": 21.65}}},
                          "no val.single.top5_err"),
                         ({**finished, "val": {**finished["val"], "before_precise_bn": []}},
                          "val.before_precise_bn is [], not an object")):
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ReportError) as e:
            load_run(run)
        assert str(e.value).startswith(f"{path}: ") and why in str(e.value), (why, str(e.value))
    path.write_bytes(b'{"top1_err": 1\xff}')
    with pytest.raises(ReportError, match="results.json: not UTF-8"):
        load_run(run)


def test_report_cli_on_damaged_files_prints_one_line(cli, tmp_path):
    run = make_run(tmp_path / "r")
    (run / "results.json").write_text("[]")
    code, out, err = cli("report", run, "--quiet")
    assert code == 2 and err.startswith(f"error: {run / 'results.json'}: ") and len(err.strip().splitlines()) == 1
    (run / "results.json").unlink()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"lr": 0.001}\n')
    code, out, err = cli("report", run, "--quiet")
    assert code == 2 and f"{run / 'metrics.jsonl'} line 13: no \"epoch\"" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_epoch_lines_with_few_figures_still_draw_and_evaluation_json_must_be_an_object(tmp_path):
    run = make_run(tmp_path / "r", finished=False)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val_top1_err": 50.0}\n{"epoch": 2, "val_top1_err": 40.0}\n')
    assert cv2.imread(write_report(run)["png"]) is not None  # no "lr" on any line: drawn without the LR axis
    (run / "evaluation.json").write_text("[]")
    with pytest.raises(ReportError, match="evaluation.json: a JSON list, not an object"):
        load_run(run)


def test_the_peak_memory_of_the_run_is_reported(tmp_path):
    run = make_run(tmp_path / "r50")  # trained on cuda:0
    path = run / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**rec, "peak_memory_mb": 9000.0 + rec["epoch"]}) + "\n" for rec in lines))
    md = report_markdown(load_run(run))
    assert "peak memory: 9,012 MB (allocated by PyTorch on the GPU, rank 0)" in md
    lines[3]["peak_memory_mb"] = "a lot"
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    with pytest.raises(ReportError, match="line 4: peak_memory_mb is"):
        load_run(run)


def test_the_ema_rows_give_the_single_view_and_say_when_val_was_trained_on(tmp_path):
    run = flip_run(tmp_path / "fm", {
        "model": "resnet20", "dataset": "fashion-mnist", "epochs": 4, "top1_err": 5.14, "top5_err": 0.1,
        "headline": {"split": "test", "protocol": "single", "images": 10000, "held_out": True},
        "val": {"split": "val", "held_out": False, "images": 5000, "single": {"top1_err": 3.3, "top5_err": 0.2},
                "flip": {"top1_err": 3.2, "top5_err": 0.2}, "before_precise_bn": {"single": {"top1_err": 3.5}}},
        "test": {"split": "test", "images": 10000, "single": {"top1_err": 5.14, "top5_err": 0.1}},
        "ema_decay": 0.9998, "ema_top1_err": 3.11, "ema_top5_err": 0.02, "ema_top1_err_single": 3.27,
        "ema_top5_err_single": 0.04, "precise_bn_batches": 25, "wall_s": 2400, "device": "cpu", "precision": "bf16"})
    md = report_markdown(load_run(run))
    ema = [line for line in md.splitlines() if line.startswith("| this run, EMA weights")]
    assert [line.split(" | ")[2:5] for line in ema] == [
        ["val (5000 images, trained on: not held out)", "single view, stored size", "3.27"],
        ["val (5000 images, trained on: not held out)", "centre view + mirror, stored size", "3.11"]]
