"""EMA of weights: the update rule, BN buffers, checkpoint round trip, and in the training loop (evaluated, saved,
resumed exactly)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from resnet_repro import checkpoint
from resnet_repro.recipe import load_config
from resnet_repro.ema import EMA
from resnet_repro.models.resnet import build_model


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net.eval()(torch.zeros(2, 1, 5, 5))  # materialize the lazy layer without touching BN's running statistics
    return net.train()


def filled(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.fill_(value)


def test_update_is_the_exponential_average():
    model = small_net()
    filled(model, 1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    for step, value in enumerate([3.0, -2.0, 5.0]):
        filled(model, value)
        ema.update(model)
    # 1 -> 0.9*1 + 0.1*3 = 1.2 -> 0.9*1.2 - 0.2 = 0.88 -> 0.9*0.88 + 0.5 = 1.292
    for t in list(ema.module.parameters()) + [b for b in ema.module.buffers() if b.is_floating_point()]:
        assert torch.allclose(t, torch.full_like(t, 1.292))
    assert ema.updates == 3


def test_bn_buffers_averaged_counters_copied():
    model = small_net()
    ema = EMA(model, decay=0.5, warmup=False)
    bn, ema_bn = model[1], ema.module[1]
    with torch.no_grad():
        bn.running_mean.fill_(4.0)
        bn.running_var.fill_(3.0)  # starts at 1
    bn.num_batches_tracked.fill_(17)
    ema.update(model)
    assert torch.allclose(ema_bn.running_mean, torch.full((4,), 2.0))  # 0.5 * 0 + 0.5 * 4
    assert torch.allclose(ema_bn.running_var, torch.full((4,), 2.0))  # 0.5 * 1 + 0.5 * 3
    assert int(ema_bn.num_batches_tracked) == 17


def test_warmup_decay_schedule():
    ema = EMA(small_net(), decay=0.999)
    got = []
    for _ in range(3):
        got.append(ema.current_decay())
        ema.updates += 1
    assert got == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.updates = 10_000
    assert ema.current_decay() == 0.999  # (1 + n) / (10 + n) > 0.999 from n = 8991 on


def test_averaged_copy_is_frozen_and_separate():
    model = build_model("resnet20", 10, 1)
    ema = EMA(model, 0.99)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(ema.module.parameters(), model.parameters()))
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is None for p in ema.module.parameters())


def test_state_round_trip_through_a_checkpoint(tmp_path):
    model = build_model("resnet20", 10, 1)
    ema = EMA(model, 0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    checkpoint.save_file(tmp_path / "c.pt", {"model": model.state_dict(), "ema": ema.state_dict()})
    other = EMA(build_model("resnet20", 10, 1), 0.99)
    other.load_state_dict(checkpoint.load(tmp_path / "c.pt")["ema"])  # weights_only=True load
    assert other.updates == 1
    for (k, a), b in zip(ema.module.state_dict().items(), other.module.state_dict().values()):
        assert torch.equal(a, b), k


def _cfg(data, epochs, extra=()):
    return load_config(None, [f"data.path={data}", "model.name=resnet20", "data.batch_size=32", "data.workers=0",
                              "data.eval_batch_size=64", "data.normalize=scale", "data.random_erasing=0.5",
                              f"train.epochs={epochs}", "train.ema=0.8", "train.precise_bn_batches=2",
                              "train.deterministic=true", "train.log_interval=100", "schedule.kind=multistep",
                              "schedule.milestones=[100]", "train.device=cpu", "train.precision=fp32", *extra])


def test_training_evaluates_saves_and_resumes_the_ema(texture_data, tmp_path):
    from resnet_repro.training.loop import train

    # Uninterrupted 2 epochs vs 1 epoch, then resumed to 2: the EMA must come out bit-identical.
    whole = train(_cfg(texture_data, 2), tmp_path / "whole")
    train(_cfg(texture_data, 1), tmp_path / "split")
    resumed = train(_cfg(texture_data, 2), tmp_path / "split", resume="auto", allow_change=("train.epochs",))

    log = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= rec["ema_val_top1_err"] <= 100 for rec in log)
    assert 0 <= whole["ema_top1_err"] <= 100 and whole["ema_decay"] == 0.8
    ckpt = checkpoint.load(tmp_path / "split" / "checkpoints" / "ckpt-0001-000000.pt")
    assert ckpt["ema"]["updates"] == 8  # 256 images / 32 per step
    a = checkpoint.load(tmp_path / "whole" / "final.pt")["model_ema"]
    b = checkpoint.load(tmp_path / "split" / "final.pt")["model_ema"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["ema_top1_err"] == whole["ema_top1_err"]
    assert (tmp_path / "whole" / "model_ema.safetensors").is_file()
    # The averaged weights are not the trained ones.
    live = checkpoint.load(tmp_path / "whole" / "final.pt")["model"]
    assert any(not torch.equal(live[k], a[k]) for k in a if a[k].is_floating_point())


def test_with_the_mirror_protocol_the_emas_single_view_is_recorded_as_evaluate_scores_it(texture_data, tmp_path, cli):
    """Under eval_protocol flip, ema_top1_err is the centre + mirror figure; the centre view alone (the figure a
    headline uses) is recorded beside it, and is what `evaluate --weights ema --protocol single` gives on val."""
    from resnet_repro.training.loop import train

    res = train(_cfg(texture_data, 1, ["train.eval_protocol=flip"]), tmp_path / "run")
    assert {"ema_top1_err", "ema_top1_err_single", "ema_top5_err_single"} <= res.keys()
    code, out, err = cli("evaluate", "--checkpoint", tmp_path / "run" / "final.pt", "--weights", "ema",
                         "--split", "val", "--protocol", "single", "--protocol", "flip", "--workers", "0", "--json")
    assert code == 0, err
    scored = {r["protocol"]: r for r in json.loads(out)["results"]}
    assert scored["single"]["top1_err"] == pytest.approx(res["ema_top1_err_single"], abs=1e-6)
    assert scored["flip"]["top1_err"] == pytest.approx(res["ema_top1_err"], abs=1e-6)
