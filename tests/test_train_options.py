"""Training-loop options the recipes use: progressive resizing (the size reaches the loader workers), train.max_steps
(runs quoted in iterations), optional TensorBoard (metrics.jsonl stays the record)."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from resnet_repro.recipe import load_config
from resnet_repro.data.augment.geometry import TrainGeometry
from resnet_repro.data.loading.loader import BatchDataset, Job, make_loader
from resnet_repro.data.shards.reader import RecordReader


def _cfg(data, *extra):
    return load_config(None, [f"data.path={data}", "model.name=resnet20", "data.batch_size=64", "data.workers=0",
                              "data.eval_batch_size=64", "data.normalize=scale", "train.precise_bn_batches=0",
                              "train.log_interval=1", "train.device=cpu", "train.precision=fp32", *extra])


@pytest.mark.parametrize("workers", [0, 1])
def test_job_size_reaches_the_worker(texture_data, workers):
    """Each job carries its crop size, so a worker process (which holds its own copy of the geometry) crops
    at the size of the batch it is given, in any order."""
    cfg = load_config(None, [f"data.path={texture_data}"])
    reader = RecordReader(texture_data, "train")
    ds = BatchDataset(reader, TrainGeometry(cfg.data, 16), 1, seed=0, train=True)
    idx = np.arange(8)
    jobs = [Job(0, 0, idx, 8), Job(0, 1, idx, 12), Job(0, 2, idx, 0), Job(0, 3, idx, 8)]
    shapes = [tuple(batch[0].shape[1:3]) for batch in make_loader(ds, jobs, workers, False)]
    assert shapes == [(8, 8), (12, 12), (16, 16), (8, 8)]  # size 0 = the configured size


def test_training_follows_the_resize_ramp(texture_data, tmp_path, monkeypatch):
    from resnet_repro.training import loop, setup

    seen = []
    real_build = setup.build_model

    def build_and_watch(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inp: seen.append((m.training, inp[0].shape[-1])))
        return model

    monkeypatch.setattr(setup, "build_model", build_and_watch)
    cfg = _cfg(texture_data, "train.epochs=4", "data.image_size=16", "data.image_size_start=8",
               "data.resize_start_epoch=1", "data.resize_end_epoch=3", "data.resize_multiple=4")
    loop.train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [rec["image_size"] for rec in log] == [8, 8, 12, 16]
    train_sizes = [size for training, size in seen if training]
    assert train_sizes == [8] * 8 + [12] * 4 + [16] * 4  # 4 steps per epoch
    assert {size for training, size in seen if not training} == {16}  # evaluation at the val size


def test_max_steps_ends_mid_epoch(texture_data, tmp_path):
    from resnet_repro.training.loop import train

    result = train(_cfg(texture_data, "train.epochs=50", "train.max_steps=6", "schedule.kind=linear",
                        "schedule.unit=step"), tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and result["epochs"] == 2 and result["steps"] == 6  # 4 + 2 steps
    assert log[1]["lr"] == pytest.approx(0.1 * 64 / 256 * (1 - 5 / 6))  # the lr of step 6 of 6 (progress 5)


def test_a_wide_net_trains_and_its_run_says_so_everywhere(texture_data, tmp_path, cli):
    """model.width: the checkpoint rebuilds the wide net (evaluate, predict, export), results.json and the
    safetensors metadata carry the factor, and report compares it with no published row of the paper's net."""
    from safetensors import safe_open

    from resnet_repro.config import ConfigError
    from resnet_repro.evaluate import load_trained
    from resnet_repro.report import load_run
    from resnet_repro.training.loop import train

    out = tmp_path / "run"
    result = train(_cfg(texture_data, "train.epochs=1", "model.width=2"), out)
    assert result["model"] == "resnet20" and result["width"] == 2
    trained = load_trained(out / "final.pt")
    assert trained.model.fc.in_features == 128 and trained.model.stem[0].out_channels == 32
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0")
    assert code == 0 and "top-1" in printed, err
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["width"]) == 2
    assert load_run(out).model == "resnet20 x2 wide"
    with pytest.raises(ConfigError, match="model.width"):
        _cfg(texture_data, "model.name=resnet18", "model.width=2")
    with pytest.raises(ConfigError, match="model.width"):
        _cfg(texture_data, "model.width=0")


def test_tensorboard_missing_is_a_clear_error(texture_data, tmp_path, monkeypatch):
    from resnet_repro.training.loop import train
    from resnet_repro.training.state import TrainingError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(TrainingError, match="pip install tensorboard"):
        train(_cfg(texture_data, "train.epochs=1", "train.tensorboard=true"), tmp_path / "run")


def test_tensorboard_gets_what_metrics_jsonl_records(texture_data, tmp_path, monkeypatch):
    """TensorBoard (faked here: it is an optional extra) receives each epoch record's numbers, unchanged."""
    from resnet_repro.training.loop import train

    scalars, closed = [], []

    class Writer:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            closed.append(self.logdir)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(_cfg(texture_data, "train.epochs=2", "train.tensorboard=true"), tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for rec in log:
        for key in ("train_loss", "val_top1_err", "lr", "image_size"):
            assert (f"epoch/{key}", rec[key], rec["epoch"]) in scalars
    assert any(tag == "train/loss_step" for tag, _, _ in scalars)
    assert closed == [str(tmp_path / "run" / "tensorboard")]
