"""Schedules: the learning rate and the train image size as pure functions of training progress.

Being functions of progress alone (no internal state) makes resume exact: the LR at any step is recomputed
from (epoch, step), never restored.

LR kinds (``schedule.kind``), each a multiplier on the peak LR, after an optional warm-up:

* ``step`` / ``multistep`` (two names, one rule: ``step`` is what the reference recipe and older configs
  say, ``multistep`` what torch calls it): multiply by ``gamma`` at each milestone. Evenly spaced steps
  (every 30 epochs) are milestones [30, 60, 90].
* ``cosine``: half a cosine from 1 after the warm-up down to ``final_factor`` at the end (SGDR).
* ``linear``: a straight line from 1 after the warm-up down to ``final_factor`` at the end.
* ``onecycle``: a linear ramp from ``warmup_start_factor`` up to 1 at ``peak_epoch``, then linearly down to
  ``final_factor`` (FFCV's "cyclic" schedule, interpolated per step).

Warm-up (``warmup_epochs`` > 0): ``linear`` ramps from ``warmup_start_factor`` to the schedule's value at the
warm-up's end (Goyal et al. 2017); ``constant`` holds ``warmup_start_factor`` and then jumps to the schedule
(the paper's ResNet-110 on CIFAR: LR 0.01 for ~400 iterations, then 0.1).

Positions (milestones, warm-up length, peak) are in ``schedule.unit``: epochs, or optimizer steps for
recipes quoted in iterations (the paper's CIFAR table: /10 at 32k and 48k).
"""
from __future__ import annotations

import math

from .config import DataConfig, ScheduleConfig


def lr_factor(cfg: ScheduleConfig, progress: float, total: float) -> float:
    """Multiplier on the peak LR at `progress` into a run of length `total`, both in ``cfg.unit``."""
    w = cfg.warmup_epochs
    if w > 0 and progress < w:
        if cfg.warmup_mode == "constant":
            return cfg.warmup_start_factor
        end = _main(cfg, w, total)
        return cfg.warmup_start_factor + (end - cfg.warmup_start_factor) * progress / w
    return _main(cfg, progress, total)


def _main(cfg: ScheduleConfig, progress: float, total: float) -> float:
    if cfg.kind in ("step", "multistep"):
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    if cfg.kind in ("cosine", "linear"):
        start = cfg.warmup_epochs
        t = min(1.0, max(0.0, (progress - start) / max(total - start, 1e-12)))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.kind == "cosine" else 1 - t
        return cfg.final_factor + (1 - cfg.final_factor) * shape
    if cfg.kind == "onecycle":
        peak = cfg.peak_epoch
        if progress < peak:
            return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * progress / peak
        t = min(1.0, (progress - peak) / max(total - peak, 1e-12))
        return 1 + (cfg.final_factor - 1) * t
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")


def schedule_warnings(cfg: ScheduleConfig, total: float) -> list[str]:
    """What of the schedule a run of length `total` (in ``cfg.unit``) never reaches: a shortened run of a long
    recipe (a smoke test) is legitimate, so these are warnings for the log, not errors."""
    unit = "steps" if cfg.unit == "step" else "epochs"
    found = []
    if cfg.warmup_epochs >= total:
        found.append(f"schedule.warmup_epochs {cfg.warmup_epochs:g} is not shorter than the run ({total:g} {unit}): "
                     "the LR never reaches the peak the log names")
    late = [m for m in cfg.milestones if m >= total] if cfg.kind in ("step", "multistep") else []
    if late:
        found.append(f"schedule.milestones {late} lie at or past the run's end ({total:g} {unit}): the LR is never "
                     "divided there")
    if cfg.kind == "onecycle" and cfg.peak_epoch >= total:
        found.append(f"schedule.peak_epoch {cfg.peak_epoch:g} is not before the run's end ({total:g} {unit})")
    return found


def schedule_position(cfg: ScheduleConfig, epoch: int, step: int, steps_per_epoch: int,
                      total_steps: int) -> tuple[float, float]:
    """(progress, total) in ``cfg.unit`` for optimizer step `step` of 0-based `epoch`."""
    if cfg.unit == "step":
        return float(epoch * steps_per_epoch + step), float(total_steps)
    return epoch + step / steps_per_epoch, total_steps / steps_per_epoch


def train_image_size(cfg: DataConfig, epoch: int, stored_size: int) -> int:
    """Side of the train crops in 0-based `epoch`: fixed, or the progressive-resizing ramp (FFCV's
    get_resolution: image_size_start up to resize_start_epoch, image_size from resize_end_epoch, linear in
    between rounded to a multiple of resize_multiple)."""
    end = cfg.image_size or stored_size
    start = cfg.image_size_start
    if not start:
        return end
    if epoch <= cfg.resize_start_epoch:
        return start
    if epoch >= cfg.resize_end_epoch:
        return end
    t = (epoch - cfg.resize_start_epoch) / (cfg.resize_end_epoch - cfg.resize_start_epoch)
    size = start + (end - start) * t
    # Python's round, like FFCV's np.round, rounds halves to even; the clamp keeps sides that are not
    # multiples themselves (e.g. 100 -> 200) inside the ramp.
    return min(end, max(start, int(round(size / cfg.resize_multiple)) * cfg.resize_multiple))
