"""Precise BN: replace each BN layer's running mean/variance by the exact average of per-batch statistics.

The moving averages kept during training lag behind the final weights; the Caffe ResNet models and the
reference recipe instead average the batch statistics of N training batches under the final weights
(pycls/fvcore do the same). Setting ``momentum=None`` makes PyTorch keep a cumulative average: after
reset, running = mean over the batches seen, exactly. Across ranks the averages are averaged again
(all ranks see the same number of equal-size batches, so this is the exact average over all of them).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from . import dist


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches, num_batches: int, autocast=None) -> int:
    """Recompute BN statistics from up to `num_batches` batches of inputs (an iterable of tensors, or of
    tuples whose first item is the input). Returns the number of batches used."""
    bns = bn_layers(model)
    if not bns or num_batches <= 0:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    used = 0
    try:
        for batch in itertools.islice(batches, num_batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if autocast is not None:
                with autocast():
                    model(x)
            else:
                model(x)
            used += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    if dist.is_available_and_initialized():
        world = torch.distributed.get_world_size()
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                dist.all_reduce_sum(buf)
                buf /= world
    return used
