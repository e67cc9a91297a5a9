"""LR schedules and the progressive-resizing ramp: pure functions of training progress, checked point by point."""
from __future__ import annotations

import math

import pytest

from resnet_repro.config import ConfigError, DataConfig, ScheduleConfig
from resnet_repro.recipe import load_config
from resnet_repro.schedule import lr_factor, schedule_position, train_image_size


def sched(**kw) -> ScheduleConfig:
    return ScheduleConfig(**kw)


@pytest.mark.parametrize("kind", ["step", "multistep"])
def test_multistep(kind):
    s = sched(kind=kind, milestones=[30, 60, 90], gamma=0.1)
    got = [lr_factor(s, p, 120) for p in (0, 29.999, 30, 45, 60, 89.9, 90, 120)]
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_starts_after_warmup_and_ends_at_final_factor():
    s = sched(kind="cosine", warmup_epochs=5, warmup_start_factor=0.1, final_factor=0.01)
    assert lr_factor(s, 0, 100) == pytest.approx(0.1)
    assert lr_factor(s, 2.5, 100) == pytest.approx(0.55)  # halfway up the linear warm-up
    assert lr_factor(s, 5, 100) == pytest.approx(1.0)
    mid = 5 + 95 / 2
    assert lr_factor(s, mid, 100) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(s, 100, 100) == pytest.approx(0.01)
    assert lr_factor(s, 5 + 95 / 3, 100) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 3)))


def test_linear_decay():
    s = sched(kind="linear", final_factor=0.0)
    assert [lr_factor(s, p, 10) for p in (0, 2.5, 5, 10)] == pytest.approx([1, 0.75, 0.5, 0])
    s = sched(kind="linear", warmup_epochs=2, warmup_start_factor=0.0, final_factor=0.2)
    assert [lr_factor(s, p, 10) for p in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1, 0.6, 0.2])


def test_onecycle_is_ffcv_cyclic():
    """FFCV: np.interp(epoch, [0, peak, epochs], [1e-4 * lr, lr, 0])."""
    s = sched(kind="onecycle", peak_epoch=2, warmup_start_factor=1e-4, final_factor=0.0)
    for p in (0, 0.5, 1.7, 2, 3, 10.25, 16):
        want = (1e-4 + (1 - 1e-4) * p / 2) if p < 2 else 1 - (p - 2) / 14
        assert lr_factor(s, p, 16) == pytest.approx(want)


def test_linear_warmup_lands_on_the_schedule_value():
    """The ramp ends where the main schedule is at the warm-up's end, even if that is not the peak."""
    s = sched(kind="multistep", milestones=[1], gamma=0.5, warmup_epochs=2, warmup_start_factor=0.1)
    assert lr_factor(s, 0, 10) == pytest.approx(0.1)
    assert lr_factor(s, 1, 10) == pytest.approx(0.1 + (0.5 - 0.1) * 0.5)
    assert lr_factor(s, 2, 10) == pytest.approx(0.5)


def test_constant_warmup_then_jump():
    """The paper's ResNet-110: 0.01 (= 0.1 x 0.1) for 400 iterations, then 0.1."""
    s = sched(kind="multistep", unit="step", milestones=[32000, 48000], warmup_epochs=400, warmup_mode="constant",
              warmup_start_factor=0.1)
    assert [lr_factor(s, p, 64000) for p in (0, 200, 399, 400, 31999, 32000, 48000)] == pytest.approx(
        [0.1, 0.1, 0.1, 1, 1, 0.1, 0.01])


def test_schedule_position_units():
    assert schedule_position(sched(unit="epoch"), 3, 50, 100, 1000) == (3.5, 10.0)
    assert schedule_position(sched(unit="step"), 3, 50, 100, 1000) == (350.0, 1000.0)
    # A run cut by max_steps mid-epoch: the epoch-unit total is fractional.
    assert schedule_position(sched(unit="epoch"), 0, 0, 351, 64000)[1] == pytest.approx(64000 / 351)


def test_progressive_resizing_matches_ffcv():
    """FFCV get_resolution with min 160, max 192, ramp 65..76 (rn50_88_epochs), rounded to multiples of 32."""
    cfg = DataConfig(image_size=192, image_size_start=160, resize_start_epoch=65, resize_end_epoch=76)

    def ffcv(epoch, lo=160, hi=192, start=65, end=76):
        if epoch <= start:
            return lo
        if epoch >= end:
            return hi
        return int(round((lo + (hi - lo) * (epoch - start) / (end - start)) / 32)) * 32

    assert [train_image_size(cfg, e, 0) for e in range(88)] == [ffcv(e) for e in range(88)]
    assert train_image_size(cfg, 70, 0) == 160 and train_image_size(cfg, 71, 0) == 192


def test_progressive_resizing_off_and_clamped():
    assert train_image_size(DataConfig(image_size=0), 5, 28) == 28  # stored size
    assert train_image_size(DataConfig(image_size=224), 5, 0) == 224
    cfg = DataConfig(image_size=200, image_size_start=100, resize_start_epoch=0, resize_end_epoch=10,
                     resize_multiple=64)
    sizes = [train_image_size(cfg, e, 0) for e in range(12)]
    assert min(sizes) == 100 and max(sizes) == 200 and sizes == sorted(sizes)


@pytest.mark.parametrize("override, key", [
    (["schedule.kind=exponential"], "schedule.kind"),
    (["schedule.unit=iteration"], "schedule.unit"),
    (["schedule.warmup_mode=cosine"], "schedule.warmup_mode"),
    (["data.image_size=160", "data.image_size_start=192"], "image_size_start"),
    (["data.image_size=192", "data.image_size_start=160", "data.resize_start_epoch=5", "data.resize_end_epoch=2"],
     "resize_start_epoch"),
    (["train.ema=1.5"], "train.ema"),
    (["train.max_steps=-1"], "train.max_steps"),
])
def test_config_rejects_bad_values(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, override)


def test_what_a_short_run_never_reaches_is_warned_about():
    from resnet_repro.schedule import schedule_warnings

    step = ScheduleConfig(kind="step", milestones=[30, 60, 90], warmup_epochs=5)
    assert schedule_warnings(step, 120) == []
    warned = schedule_warnings(step, 45)  # the seed recipe shortened: its last two milestones never come
    assert len(warned) == 1 and "[60, 90]" in warned[0] and "45 epochs" in warned[0]
    warned = schedule_warnings(step, 2)
    assert any("warmup_epochs 5" in w and "never reaches the peak" in w for w in warned)
    cosine = ScheduleConfig(kind="cosine", milestones=[30], unit="step")  # milestones mean nothing to a cosine
    assert schedule_warnings(cosine, 100) == []
    assert "peak_epoch" in schedule_warnings(ScheduleConfig(kind="onecycle", peak_epoch=10), 8)[0]


def test_the_eta_counts_the_pixels_ahead_under_progressive_resizing():
    # The log's ETA is measured on the current crop side; the steps ahead at a larger side cost more per step.
    import dataclasses
    import types

    from resnet_repro.training.state import Data

    def data(cfg, epochs, steps, total=None):
        fields = {f.name: None for f in dataclasses.fields(Data) if f.default is dataclasses.MISSING}
        fields.update(cfg=cfg, train_reader=types.SimpleNamespace(manifest={"image": {"height": 28}}),
                      steps_per_epoch=steps, epochs=epochs, total_steps=total or epochs * steps)
        return Data(**fields)

    ramp = DataConfig(image_size=28, image_size_start=16, resize_start_epoch=1, resize_end_epoch=3)  # 16 16 20/24 28
    d = data(ramp, epochs=5, steps=10)
    sides = [train_image_size(ramp, e, 28) for e in range(5)]
    assert sides[0] == 16 and sides[-1] == 28
    # From step 4 of epoch 0, measured at 16 px: 6 steps at 16 and 10 of each later epoch by its pixels.
    expected = 6 + sum(10 * (s / 16) ** 2 for s in sides[1:])
    assert d.work_left(0, 4, 16) == pytest.approx(expected)
    assert d.work_left(0, 4, 16) > 2 * (50 - 4)  # counting steps alone would promise less than half of it
    assert d.work_left(4, 3, 28) == pytest.approx(7)  # at full size, steps are steps
    fixed = data(DataConfig(image_size=0), epochs=3, steps=10, total=25)  # train.max_steps cuts the last epoch
    assert fixed.work_left(1, 2, 28) == pytest.approx(8 + 5)
