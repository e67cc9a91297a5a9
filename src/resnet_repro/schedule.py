"""Learning-rate schedules as pure functions of training progress in epochs (a float).

Being a function of progress alone (no internal state) makes resume exact: the LR at any step is
recomputed from (epoch, step), never restored.
"""
from __future__ import annotations

import math

from .config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, progress: float, total_epochs: float) -> float:
    """Multiplier on the peak LR at `progress` epochs into a run of `total_epochs`."""
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        # Linear warm-up (Goyal et al. 2017) from warmup_start_factor x LR to the schedule's value.
        t = progress / cfg.warmup_epochs
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * t * _main(cfg, cfg.warmup_epochs, total_epochs)
    return _main(cfg, progress, total_epochs)


def _main(cfg: ScheduleConfig, progress: float, total: float) -> float:
    if cfg.kind == "step":
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    if cfg.kind == "cosine":
        start = cfg.warmup_epochs
        t = min(1.0, max(0.0, (progress - start) / max(total - start, 1e-12)))
        return cfg.final_factor + (1 - cfg.final_factor) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.kind == "onecycle":
        # Linear ramp up to the peak, then linear down to final_factor at the end (one-cycle / FFCV's
        # triangular schedule). Before the peak the ramp starts from warmup_start_factor.
        peak = cfg.peak_epoch
        if progress < peak:
            return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * progress / peak
        t = min(1.0, (progress - peak) / max(total - peak, 1e-12))
        return 1 + (cfg.final_factor - 1) * t
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")
