"""The validation pass the training loop runs (the image alone, or with its mirror: train.eval_protocol), and what
every evaluation shares with it: exact top-k counts and the test-time input transform.

Each rank scores a disjoint subset (loader.eval_batch_indices), and the counts — not the rates — are summed
across ranks, so the result is the same for 1, 2 or 3 processes and nothing is counted twice.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import dist
from ..data.augment.device import DeviceTransform
from ..paired import pack_hits
from ..stopping import on_every_rank


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """For each k (capped at #classes), which samples have their target among the k highest logits: bool [B]."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [B, kmax], best first
    hit = top.eq(targets.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1) for k in ks]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is among the k highest logits, for each k (capped at #classes)."""
    return [hits.sum() for hits in topk_hits(logits, targets, ks)]


def logits_with_mirror(model: torch.nn.Module, x: torch.Tensor, mirror: bool, autocast=contextlib.nullcontext):
    """The model's float logits for the batch `x` (NCHW) followed, with `mirror`, by those of its mirror images
    (flipped along the width axis) from the same forward pass: the one place a view is mirrored, for this pass and
    for every mirrored protocol (protocols.score_groups)."""
    with autocast():
        logits = model(torch.cat([x, x.flip(3)]) if mirror else x)  # flip(3): the width axis of NCHW
    return logits.float()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, device: torch.device, autocast=contextlib.nullcontext,
             mirror: bool = False, order: np.ndarray | None = None, total: int = 0) -> dict:
    """Run `model` over `batches` of (x, y[, bad samples replaced, ...]) on the device; return error rates in
    percent and counts ("bad": undecodable samples the loader replaced, see data/loading/loader.py).

    mirror: score each image as the mean softmax of it and its mirror image (the `flip` protocol of
    protocols.py, train.eval_protocol: flip); the single view's own errors, computed on the way, are returned
    too as top1_err_single / top5_err_single, so a recipe that reports the two-view figure never hides the
    one-view one.

    order, total: the split's indices of this rank's images in the order the batches bring them, and the split's
    size: then which images the top-1 guess gets right is returned too (top1_hits[_single], paired.pack_hits, in
    the split's order, every rank's images), for comparing runs image by image (paired.py)."""
    was_training = model.training
    model.eval()
    # [top-1 correct, top-5 correct, samples, summed loss, single-view top-1, top-5] in float64 so counts stay
    # exact after all_reduce.
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    # Per image of the split: [single view right, the protocol's view right]; each rank fills its own images.
    hits = torch.zeros(2, total, dtype=torch.float32, device=device) if order is not None else None
    where = torch.as_tensor(order, dtype=torch.int64, device=device) if order is not None else None
    seen, bad, classes = 0, 0, 0
    for batch in on_every_rank(batches, device):  # a rank that cannot load its batch stops them all
        x, y = batch[0], batch[1]
        bad += int(batch[2]) if len(batch) > 2 else 0
        logits = logits_with_mirror(model, x, mirror, autocast)
        classes = logits.shape[1]
        (h1s, h5s) = (h1, h5) = topk_hits(logits[:len(y)], y)  # the single view (all of it without mirror)
        if mirror:
            # log of the mean probability: its top-k are the averaged views' and its NLL their loss
            logits = logits.log_softmax(1).view(2, len(y), -1).logsumexp(0) - math.log(2)
            h1, h5 = topk_hits(logits, y)
        if hits is not None:
            mine = where[seen:seen + len(y)]
            if len(mine) != len(y):  # the batches are not the images `order` names: a caller's bug
                raise RuntimeError(f"evaluation got more images than its order names ({len(order)})")
            hits[0, mine], hits[1, mine] = h1s.float(), h1.float()
        seen += len(y)
        sums += torch.stack([h1.sum().double(), h5.sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device),
                             F.cross_entropy(logits, y, reduction="sum").double(), h1s.sum().double(),
                             h5s.sum().double()])
    model.train(was_training)
    if order is not None and seen != len(order):
        raise RuntimeError(f"evaluation saw {seen} images where its order names {len(order)}")
    dist.all_reduce_sum(sums)
    c1, c5, n, loss, s1, s5 = sums.tolist()
    if n == 0:
        raise ValueError("evaluation saw no samples")
    bad = int(dist.all_reduce_sum(torch.tensor([float(bad)], dtype=torch.float64, device=device)).item())
    out = {"top1_err": 100.0 * (1 - c1 / n), "top5_err": 100.0 * (1 - c5 / n), "loss": loss / n,
           "count": int(n), "top1_correct": int(c1), "top5_correct": int(c5), "bad": bad, "classes": classes}
    if mirror:
        out.update(top1_err_single=100.0 * (1 - s1 / n), top5_err_single=100.0 * (1 - s5 / n))
    if hits is not None:
        single_hits, view_hits = packed_hits(hits)
        out["top1_hits"] = view_hits
        if mirror:
            out["top1_hits_single"] = single_hits
    return out


def packed_hits(hits: torch.Tensor) -> list[str]:
    """Per row of `hits` ([rows, images of the split], 1 where right, each rank's own images filled and the rest 0):
    every rank's outcomes summed, then packed (paired.pack_hits). Called on every rank."""
    dist.all_reduce_sum(hits)
    return [pack_hits(row > 0.5) for row in hits.cpu().numpy()]


def eval_transform(data_cfg, channels: int, device: torch.device, channels_last: bool = True):
    """The device-side input transform at test time: normalization only (no colour or lighting noise)."""
    return DeviceTransform(dataclasses.replace(data_cfg, color="none", lighting=0.0), channels, device, channels_last)
