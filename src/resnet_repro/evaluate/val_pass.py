"""The single-view validation pass the training loop runs every epoch, and what every evaluation shares with it:
exact top-k counts and the test-time input transform.

Each rank scores a disjoint subset (loader.eval_batch_indices), and the counts — not the rates — are summed
across ranks, so the result is the same for 1, 2 or 3 processes and nothing is counted twice.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from .. import dist
from ..data.augment import DeviceTransform


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is among the k highest logits, for each k (capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [B, kmax], best first
    hit = top.eq(targets.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, device: torch.device, autocast=contextlib.nullcontext) -> dict:
    """Run `model` over `batches` of (x, y[, bad samples replaced, ...]) on the device; return error rates in
    percent and counts ("bad": undecodable samples the loader replaced, see data/loader.py)."""
    was_training = model.training
    model.eval()
    # [top-1 correct, top-5 correct, samples, summed loss] in float64 so counts stay exact after all_reduce.
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    bad = 0
    for batch in batches:
        x, y = batch[0], batch[1]
        bad += int(batch[2]) if len(batch) > 2 else 0
        with autocast():
            logits = model(x)
        logits = logits.float()
        c1, c5 = topk_correct(logits, y)
        sums += torch.stack([c1.double(), c5.double(), torch.tensor(float(len(y)), dtype=torch.float64, device=device),
                             F.cross_entropy(logits, y, reduction="sum").double()])
    model.train(was_training)
    dist.all_reduce_sum(sums)
    c1, c5, n, loss = sums.tolist()
    if n == 0:
        raise ValueError("evaluation saw no samples")
    bad = int(dist.all_reduce_sum(torch.tensor([float(bad)], dtype=torch.float64, device=device)).item())
    return {"top1_err": 100.0 * (1 - c1 / n), "top5_err": 100.0 * (1 - c5 / n), "loss": loss / n,
            "count": int(n), "top1_correct": int(c1), "top5_correct": int(c5), "bad": bad}


def eval_transform(data_cfg, channels: int, device: torch.device, channels_last: bool = True):
    """The device-side input transform at test time: normalization only (no colour or lighting noise)."""
    return DeviceTransform(dataclasses.replace(data_cfg, color="none", lighting=0.0), channels, device, channels_last)
