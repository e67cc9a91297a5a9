"""Top-k counting and evaluate() on hand-made logits and a hand-made model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from resnet_repro.evaluate import evaluate, topk_correct
from resnet_repro.evaluate.val_pass import logits_with_mirror
from resnet_repro.figures import top5_text

# 7 classes. Row 0 ranks the classes 4, 1, 6, 5, 2, 0, 3 (best first).
ROW = [0.1, 0.5, 0.2, 0.0, 0.9, 0.3, 0.4]
LOGITS = torch.tensor([ROW, ROW, ROW, [3.0, 2, 1, 0, -1, -2, -3]])
# target 4: rank 1 (top-1 hit); 2: rank 5 (top-5 only); 3: rank 7 (miss); 1: rank 2 (top-3 and top-5).
TARGETS = torch.tensor([4, 2, 3, 1])


def test_topk_on_hand_made_logits():
    c1, c2, c3, c5, c7 = topk_correct(LOGITS, TARGETS, ks=(1, 2, 3, 5, 7))
    assert (c1.item(), c2.item(), c3.item(), c5.item(), c7.item()) == (1, 2, 2, 3, 4)


def test_topk_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1])
    c1, c5 = topk_correct(logits, targets)
    assert (c1.item(), c5.item()) == (0, 2)


def batches():
    second = torch.tensor([[0.0, 0, 0, 0, 0, 0, 5], [5.0, 4, 3, 2, 1, 0, -1]])
    return [(LOGITS, TARGETS, 0), (second, torch.tensor([6, 6]), 0)]  # (x, y, bad-sample count) as the loader


def test_evaluate_error_rates_and_loss_by_hand():
    # The "model" passes its input through a dropout that would scramble the logits in training mode, so the
    # figures below only come out if evaluate() switches to eval mode.
    model = nn.Sequential(nn.Dropout(0.9)).train()
    result = evaluate(model, batches(), torch.device("cpu"))
    # top-1 hits: row 0 of batch 1 and row 0 of batch 2 -> 2 of 6; top-5: rows 0, 1, 3 and row 0 of batch 2 -> 4.
    assert result["count"] == 6 and result["top1_correct"] == 2 and result["top5_correct"] == 4
    assert result["top1_err"] == pytest.approx(100 * 4 / 6)
    assert result["top5_err"] == pytest.approx(100 * 2 / 6)
    rows = [(ROW, 4), (ROW, 2), (ROW, 3), ([3.0, 2, 1, 0, -1, -2, -3], 1), ([0.0] * 6 + [5.0], 6),
            ([5.0, 4, 3, 2, 1, 0, -1], 6)]
    loss = sum(math.log(sum(math.exp(v) for v in r)) - r[t] for r, t in rows) / 6  # cross-entropy per sample
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert model.training  # mode restored
    assert result["classes"] == 7


def test_top5_is_printed_only_where_it_can_miss():
    # With 5 classes or fewer every target is in the top 5: the 0 % says nothing and is not printed as a figure.
    assert top5_text(0.0, 4) == "n/a (4 classes)" and top5_text(0.0, 5) == "n/a (5 classes)"
    assert top5_text(1.234, 6) == "1.23%" and top5_text(1.234, 1000, unit="") == "1.23"
    assert top5_text(1.234, None) == "1.23%"  # a record older than the class count: the figure as it was
    assert top5_text(None, 10) == "-"


def test_evaluate_with_no_samples_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(nn.Identity(), [], torch.device("cpu"))


def test_mirror_scores_the_mean_softmax_of_the_image_and_its_mirror():
    # A "model" that reads the left and right halves of a 1x1x2 image differently: the two views disagree.
    class Halves(nn.Module):
        def forward(self, x):
            left, right = x[:, 0, 0, 0:1], x[:, 0, 0, 1:2]
            return torch.cat([3 * left, right, torch.zeros_like(left)], dim=1)  # 3 classes

    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]], [[[0.5, 0.4]]]])
    y = torch.tensor([0, 1, 1])
    got = evaluate(Halves(), [(x, y)], torch.device("cpu"), mirror=True)
    probs = (Halves()(x).softmax(1) + Halves()(x.flip(3)).softmax(1)) / 2
    assert got["top1_correct"] == int((probs.argmax(1) == y).sum())
    assert got["loss"] == pytest.approx(float(-probs[torch.arange(3), y].log().mean()), rel=1e-6)
    single = evaluate(Halves(), [(x, y)], torch.device("cpu"))
    assert got["top1_err_single"] == single["top1_err"] and got["top5_err_single"] == single["top5_err"]
    assert "top1_err_single" not in single
    # The views really disagree here, so the two figures are different numbers: the test cannot pass by
    # scoring one view twice.
    assert got["top1_err"] != single["top1_err"]


def test_the_mirror_is_one_width_flip_in_the_same_forward_pass():
    """The one mirror function of the val pass and the protocols: [views, their mirrors] through the model once."""
    seen = []

    def model(x):
        seen.append(x.clone())
        return x.flatten(1).double()  # a float64 "logit" per pixel: the result comes back as float32

    x = torch.arange(12.0).view(2, 1, 2, 3)
    got = logits_with_mirror(model, x, mirror=True)
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([x, x.flip(3)]))
    assert torch.equal(seen[0][2:, 0, 0], torch.tensor([[2.0, 1.0, 0.0], [8.0, 7.0, 6.0]]))  # rows reversed
    assert got.dtype == torch.float32 and torch.equal(got, torch.cat([x, x.flip(3)]).flatten(1))
    assert torch.equal(logits_with_mirror(model, x, mirror=False), x.flatten(1)) and len(seen) == 2
