"""Exponential moving average (EMA) of the weights, trained alongside the model and evaluated next to it.

After every optimizer step: ``ema = d * ema + (1 - d) * weights``, with ``d`` the decay per step (config
``train.ema``, e.g. 0.9999 averages over roughly the last 1 / (1 - d) = 10,000 steps). With ``warmup`` the
decay starts small, ``min(d, (1 + n) / (10 + n))`` after n updates (TensorFlow's ExponentialMovingAverage
with num_updates), so the random initial weights are forgotten quickly.

BatchNorm buffers are *averaged* with the same decay, not copied. The live model's running mean/variance
describe activations under the live weights (a ~10-batch moving average at momentum 0.1), which are not
the averaged weights; averaging the statistics along with the weights keeps them paired with the averaged
network to first order, which is what timm's ModelEmaV2 and torchvision's ExponentialMovingAverage
(use_buffers=True) do. Neither choice is exact, so at the end of training training/finish.py recomputes the EMA
model's BN statistics with precise BN under its own weights, which is. Integer buffers
(``num_batches_tracked``) are copied.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """``EMA(model, decay)``; call ``update(model)`` after each optimizer step; ``.module`` is the averaged
    model (always in eval mode unless precise BN switches it briefly)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _pairs(self, model: nn.Module):
        ema = list(self.module.parameters()) + list(self.module.buffers())
        live = list(model.parameters()) + list(model.buffers())
        if len(ema) != len(live):
            raise ValueError("EMA.update: the model's parameters and buffers do not match the averaged copy's")
        floats = [(e, m) for e, m in zip(ema, live) if e.is_floating_point()]
        others = [(e, m) for e, m in zip(ema, live) if not e.is_floating_point()]
        return floats, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        floats, others = self._pairs(model)
        # lerp(ema, w, 1 - d) = d * ema + (1 - d) * w, one fused kernel per tensor group.
        torch._foreach_lerp_([e for e, _ in floats], [m.detach() for _, m in floats], 1.0 - d)
        for e, m in others:
            e.copy_(m)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
