"""Precise BN: running statistics become the exact average of per-batch statistics, computed here by hand."""
from __future__ import annotations

import torch
import torch.nn as nn

from resnet_repro.models.resnet import build_model
from resnet_repro.precise_bn import update_bn_stats


def hand_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three batches of shape [2, 2, 1, 2] (4 values per channel); channel 1 is channel 0 times 10.

    Channel 0 per batch: [0, 2, 4, 6] -> mean 3, unbiased variance 20/3
                         [1, 1, 1, 1] -> mean 1, variance 0
                         [-2, 0, 0, 2] -> mean 0, variance 8/3
    """
    out = []
    for values in ([0.0, 2, 4, 6], [1.0, 1, 1, 1], [-2.0, 0, 0, 2]):
        c0 = torch.tensor(values).view(2, 1, 1, 2)
        out.append((torch.cat([c0, 10 * c0], dim=1), torch.zeros(2, dtype=torch.int64)))  # (x, labels)
    return out


def test_equals_exact_average_of_batch_statistics_by_hand():
    bn = nn.BatchNorm2d(2, momentum=0.1)
    model = nn.Sequential(bn).eval()
    used = update_bn_stats(model, iter(hand_batches()), num_batches=3)
    assert used == 3
    # mean: (3 + 1 + 0) / 3 = 4/3; variance: (20/3 + 0 + 8/3) / 3 = 28/9 (each batch's unbiased variance).
    torch.testing.assert_close(bn.running_mean, torch.tensor([4 / 3, 40 / 3]))
    torch.testing.assert_close(bn.running_var, torch.tensor([28 / 9, 2800 / 9]))
    assert bn.momentum == 0.1  # restored
    assert not model.training  # the caller's mode is restored too


def test_uses_only_the_first_num_batches_and_accepts_bare_tensors():
    bn = nn.BatchNorm2d(2)
    update_bn_stats(nn.Sequential(bn), [x for x, _ in hand_batches()], num_batches=2)
    # First two batches: mean (3 + 1) / 2 = 2, variance (20/3 + 0) / 2 = 10/3.
    torch.testing.assert_close(bn.running_mean, torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(bn.running_var, torch.tensor([10 / 3, 1000 / 3]))


def test_differs_from_the_moving_average_it_replaces():
    moving = nn.BatchNorm2d(2, momentum=0.1).train()
    for x, _ in hand_batches():
        moving(x)
    precise = nn.BatchNorm2d(2, momentum=0.1)
    update_bn_stats(nn.Sequential(precise), hand_batches(), 3)
    assert not torch.allclose(moving.running_mean, precise.running_mean)


def test_every_layer_of_a_resnet_gets_its_exact_average():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=4, in_channels=1)
    for m in model.modules():  # start from stale statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(7.0)
            m.momentum = 0.3
    layers = {"stem": model.stem[1], "middle": model.stages[1][2].bn1, "last": model.stages[2][2].bn2}
    seen = {name: [] for name in layers}
    hooks = [bn.register_forward_hook(lambda m, inp, out, name=name: seen[name].append(inp[0].detach()))
             for name, bn in layers.items()]
    batches = [torch.randn(6, 1, 12, 12) * (k + 1) for k in range(4)]
    model.eval()
    assert update_bn_stats(model, batches, 4) == 4
    for h in hooks:
        h.remove()
    for name, bn in layers.items():
        assert len(seen[name]) == 4
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen[name]])
        variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen[name]])
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
        assert bn.momentum == 0.3
    assert not model.training


def test_nothing_to_do():
    assert update_bn_stats(nn.Linear(2, 2), [torch.zeros(1, 2)], 5) == 0
    bn = nn.BatchNorm2d(2)
    assert update_bn_stats(nn.Sequential(bn), hand_batches(), 0) == 0
