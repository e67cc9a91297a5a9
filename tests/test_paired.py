"""Runs compared image by image (paired.py): the per-image outcomes `evaluate` records, McNemar's exact test, and
the section `report RUN_A RUN_B ...` writes from them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from resnet_repro.compare import comparison_markdown, load_entries
from resnet_repro.config import DataConfig
from resnet_repro.evaluate import evaluate, evaluate_protocols, make_protocol
from resnet_repro.paired import labels_digest, mcnemar_p, pack_hits, unpack_hits
from resnet_repro.report_inputs import ReportError
from test_compare import make_run, rows_of
from test_protocols import CPU, PixelClassifier, make_records, scale_transform


def test_mcnemar_p_is_the_two_sided_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(1, 0) == 1.0  # one discordant image says nothing
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # C(12, 0..2)
    assert mcnemar_p(10, 2) == mcnemar_p(2, 10)
    assert mcnemar_p(7, 7) == 1.0
    # Large counts (ImageNet val: thousands of discordant images) stay exact and finite.
    p = mcnemar_p(1000, 1100)
    assert 0.02 < p < 0.04  # normal approximation: z = 100 / sqrt(2100) = 2.18, p = 0.029
    assert math.isfinite(mcnemar_p(2500, 2500))


@pytest.mark.parametrize("count", [1, 8, 13, 5000])
def test_hits_pack_and_unpack_to_the_same_images(count):
    hits = np.random.default_rng(count).random(count) < 0.9
    text = pack_hits(hits)
    assert len(text) <= 4 * ((count + 7) // 8 + 2) // 3  # a bit per image, base64
    np.testing.assert_array_equal(unpack_hits(text, count), hits)
    with pytest.raises(ValueError, match="expected"):
        unpack_hits(text, count + 8)
    with pytest.raises(ValueError, match="base64"):
        unpack_hits("not base64!", count)


def test_evaluate_records_which_images_each_protocol_gets_right_in_the_splits_order(tmp_path):
    reader = make_records(tmp_path)  # image s{i} is misread when i % 4 == 0 (PixelClassifier)
    expected = np.array([int(reader[i][0][1:]) % 4 != 0 for i in range(len(reader))])
    assert not expected.all() and expected.any()
    protocols = [make_protocol(p, DataConfig(), 12, crop=8) for p in ("single", "flip")]
    whole = evaluate_protocols(PixelClassifier(), reader, protocols, scale_transform(), CPU, batch_size=8, workers=0)
    for r in whole:
        np.testing.assert_array_equal(unpack_hits(r["top1_hits"], r["count"]), expected)
    # Two ranks each score their own images and leave the others' at 0: summed (all_reduce), every image once.
    shares = [evaluate_protocols(PixelClassifier(), reader, protocols, scale_transform(), CPU, batch_size=8,
                                 workers=0, rank=rank, world=2)[0] for rank in (0, 1)]
    halves = [unpack_hits(s["top1_hits"], len(reader)) for s in shares]
    assert not (halves[0] & halves[1]).any()
    np.testing.assert_array_equal(halves[0] | halves[1], expected)
    assert labels_digest(reader.labels) != labels_digest(reader.labels[::-1])  # the order is part of the identity


def write_evaluation(run, hits, split="val", digest="d" * 64, protocol="single", **changes):
    hits = np.asarray(hits, dtype=bool)
    result = {"protocol": protocol, "description": "centre crop 28", "views": 1,
              "top1_err": 100.0 * (1 - hits.mean()), "top5_err": 0.0, "loss": 0.2, "count": len(hits),
              "top1_correct": int(hits.sum()), "top5_correct": len(hits), "classes": 10,
              "top1_hits": pack_hits(hits), **changes}
    (run / "evaluation.json").write_text(json.dumps({"model": "resnet20", "split": split, "labels_sha256": digest,
                                                     "results": [result]}))


def test_report_pairs_runs_evaluated_on_the_same_images(tmp_path):
    n = 1000
    base = np.ones(n, dtype=bool)
    base[:50] = False  # 5.0 % error
    better = base.copy()
    better[:30] = True  # right where the baseline is wrong on 30 images ...
    better[500:510] = False  # ... and wrong on 10 it gets right: 30 wrong, 3.0 % error
    same = base.copy()
    same[:5], same[600:605] = True, False  # 5 and 5: the same error, other images
    runs = {name: make_run(tmp_path / name, seed=i) for i, name in enumerate(("base", "better", "same", "other",
                                                                             "none"))}
    write_evaluation(runs["base"], base)
    write_evaluation(runs["better"], better)
    write_evaluation(runs["same"], same)
    write_evaluation(runs["other"], better, digest="e" * 64)  # another data folder or order: not the same images
    md = comparison_markdown(load_entries([runs[k] for k in ("base", "better", "same", "other", "none")]))
    rows = rows_of(md, "Image by image")
    assert rows[0][:2] == ["run", "split (images)"]
    better_row, same_row = rows[1], rows[2]
    assert better_row[:4] == ["better", "val (1000)", "single", "3.00 / 5.00"]
    assert better_row[4:7] == ["-2.00", "30", "10"]
    assert float(better_row[7]) == pytest.approx(mcnemar_p(30, 10), abs=5e-4) and float(better_row[7]) < 0.01
    assert same_row[4:8] == ["+0.00", "5", "5", "1.000"]
    assert len(rows) == 3
    assert "`other` val (single): other images than `base`'s val" in md
    assert "Without per-image outcomes: `none`" in md


def test_report_says_how_to_record_outcomes_when_fewer_than_two_runs_have_them(tmp_path):
    a, b = make_run(tmp_path / "a", seed=0), make_run(tmp_path / "b", seed=1)
    write_evaluation(a, [True, False, True])
    md = comparison_markdown(load_entries([a, b]))
    assert rows_of(md, "Image by image") == []
    assert "--out RUN/evaluation.json" in md.split("## Image by image", 1)[1]
    assert "results.json" in md.split("## Image by image", 1)[1]


@pytest.mark.parametrize("change, message", [
    ({"top1_err": 1.0}, "does not match its top-1 error 1.00"),
    ({"top1_hits": "!!"}, "not base64"),
    ({"count": 20}, "expected 3"),
    ({"top1_hits": 5}, "not a string"),
    ({"count": "3"}, "whole image count"),
])
def test_a_damaged_outcome_record_is_named_not_compared(tmp_path, change, message):
    a, b = make_run(tmp_path / "a", seed=0), make_run(tmp_path / "b", seed=1)
    write_evaluation(a, [True, False, True])
    write_evaluation(b, [True, True, True], **change)
    with pytest.raises(ReportError, match=message) as e:
        comparison_markdown(load_entries([a, b]))
    assert str(b / "evaluation.json") in str(e.value) and "results[0] (single)" in str(e.value)


class Guess(torch.nn.Module):
    """Logits that pick class x[:, 0, 0, 0] (a pixel value set by the test); the row's last pixel weighs half."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float() \
            + 0.5 * torch.nn.functional.one_hot(x[:, 0, 0, -1].long(), 3).float()


def test_the_val_pass_puts_each_images_outcome_at_its_index_in_the_split():
    # Two batches of a rank that holds the split's images 5, 1, 3 and 0, 4 (of 7): the guesses are right for
    # images 5, 3 and 4 only; images 2 and 6 are another rank's and stay 0 here.
    x = torch.zeros(5, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([2.0, 0.0, 1.0, 2.0, 0.0])  # the guess, centre view
    x[:, 0, 0, 1] = torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0])  # the row's last pixel (the mirror's first)
    y = torch.tensor([2, 1, 1, 0, 0])
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    out = evaluate(Guess(), batches, CPU, order=np.array([5, 1, 3, 0, 4]), total=7)
    np.testing.assert_array_equal(unpack_hits(out["top1_hits"], 7), [False, False, False, True, True, True, False])
    assert out["top1_correct"] == 3
    flip = evaluate(Guess(), batches, CPU, mirror=True, order=np.array([5, 1, 3, 0, 4]), total=7)
    # With the mirror: the single view's outcomes as before, and the two views' own, counted as their top-1.
    assert unpack_hits(flip["top1_hits_single"], 7).tolist() == unpack_hits(out["top1_hits"], 7).tolist()
    assert flip["top1_correct"] == int(unpack_hits(flip["top1_hits"], 7).sum())
    with pytest.raises(RuntimeError, match=r"more images than its order names \(4\)"):
        evaluate(Guess(), batches, CPU, order=np.array([5, 1, 3, 0]), total=7)
    with pytest.raises(RuntimeError, match="saw 5 images where its order names 6"):
        evaluate(Guess(), batches, CPU, order=np.array([5, 1, 3, 0, 4, 6]), total=7)


def add_outcomes(run, val_hits, test_hits):
    """Per-image outcomes in a make_run results.json, as training writes them (its errors made to match)."""
    res = json.loads((run / "results.json").read_text())
    for name, hits in (("val", val_hits), ("test", test_hits)):
        hits = np.asarray(hits, dtype=bool)
        block = res[name]
        block.update(images=len(hits), labels_sha256=name * 32)
        block["single"].update(top1_err=100.0 * (1 - hits.mean()), top1_hits=pack_hits(hits))
    (run / "results.json").write_text(json.dumps(res))


def test_results_pair_on_each_split_and_leave_out_a_split_either_run_trained_on(tmp_path):
    base = make_run(tmp_path / "base", seed=0)
    held = make_run(tmp_path / "held", seed=1)
    final = make_run(tmp_path / "final", seed=2, train_splits=("train", "val"))  # val trained on
    add_outcomes(base, [True, True, False, False], [True] * 6 + [False] * 4)
    add_outcomes(held, [True, False, True, False], [True] * 4 + [False] * 6)
    add_outcomes(final, [True] * 4, [False] + [True] * 9)
    rows = rows_of(comparison_markdown(load_entries([base, held, final])), "Image by image")[1:]
    assert [r[:3] for r in rows] == [["held", "val (4)", "single"], ["held", "test (10)", "single"],
                                     ["final", "test (10)", "single"]]
    assert rows[0][4:7] == ["+0.00", "1", "1"] and rows[1][4:7] == ["+20.00", "0", "2"]
    assert rows[2][4:7] == ["-30.00", "4", "1"]
    md = comparison_markdown(load_entries([base, held, final]))
    assert "`final` val (single): trained on by `final`" in md
