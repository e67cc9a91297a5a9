"""Runs that survive: kill -9, SIGTERM (preemption), torn checkpoints, a diverging loss.

One process on CPU with deterministic algorithms. Each run trains ResNet-20 for 2 epochs x 12 steps on 96 tiny
8x8 images in a fresh interpreter (tests/faults.py injects the fault at an exact optimizer step); checkpoints
fall every 3 steps within an epoch (train.checkpoint_every_steps) and at each epoch end. "The same weights"
means every tensor of final.pt (after precise BN) bit-identical to an uninterrupted run's, and every
metrics.jsonl number but the timings equal.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TIMING, tiny_run_recipe, write_image_dataset
from resnet_repro import checkpoint

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    data = write_image_dataset(root / "data", {"train": 96, "val": 23}, size=8)
    path = root / "recipe.yaml"
    path.write_text(tiny_run_recipe(data, epochs=2, log_interval=2, checkpoint_every_steps=3))
    return path


def run(recipe: Path, out: Path, *extra: str, fault: str | None = None, step: int = 0, timeout: int = 600,
        env_extra: dict | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("FAULT", None)
    if fault:
        env.update(FAULT=fault, FAULT_STEP=str(step))
    cmd = [sys.executable, str(TESTS / "faults.py"), "train", "--config", str(recipe), "--out", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def final_state(out: Path) -> dict:
    return checkpoint.load(out / "final.pt")["model"]


def metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING} for ln in lines]


def assert_same_run(out: Path, ref: Path) -> None:
    a, b = final_state(out), final_state(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"
    assert metrics(out) == metrics(ref)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    assert (ra["top1_err"], ra["top5_err"], ra["val_count"]) == (rb["top1_err"], rb["top5_err"], rb["val_count"])


def names(out: Path) -> list[str]:
    return [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")]


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    r = run(recipe, out)
    assert r.returncode == 0, r.stderr
    return out


def test_kill9_mid_epoch_then_resume_is_bit_identical(recipe, reference, tmp_path):
    # SIGKILL after step 20 = epoch 1, step 8: the newest checkpoint is epoch 1 step 6; 2 steps are lost.
    r = run(recipe, tmp_path, fault="kill9", step=20)
    assert r.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.pt").exists()
    assert names(tmp_path) == ["ckpt-0001-000000.pt", "ckpt-0001-000003.pt", "ckpt-0001-000006.pt"]  # keep 3
    r = run(recipe, tmp_path, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "ckpt-0001-000006.pt at epoch 1 step 6" in r.stdout
    assert_same_run(tmp_path, reference)


@pytest.mark.parametrize("fault, name", [("sigterm", "SIGTERM"), ("sigint", "SIGINT")])
def test_stop_signal_checkpoints_at_the_next_step_exits_0_and_resumes_to_the_same_weights(recipe, reference, tmp_path,
                                                                                          fault, name):
    # The signal arrives after step 7. With log_interval 100 the next log step is far away; one process reads its
    # stop flag after every step, so the checkpoint is the one after step 7 itself. Ctrl-C is a stop like SIGTERM.
    r = run(recipe, tmp_path, "--set", "train.log_interval=100", fault=fault, step=7)
    assert r.returncode == 0, r.stderr
    assert f"signal {name}: checkpoint saved at epoch 0 step 7" in r.stdout
    assert "--resume auto" in r.stdout
    assert names(tmp_path)[-1] == "ckpt-0000-000007.pt"
    assert not (tmp_path / "metrics.jsonl").exists()  # stopped mid-epoch 0
    state = checkpoint.load(tmp_path / "checkpoints" / "ckpt-0000-000007.pt")
    assert (state["epoch"], state["step"], state["world"], state["global_batch"]) == (0, 7, 1, 8)
    assert state["ranks"][0]["sums"]["samples"] == 56  # the epoch's running sums travel with it
    r = run(recipe, tmp_path, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert_same_run(tmp_path, reference)  # including epoch 1's logged train loss, accumulated across the stop


def test_resume_skips_a_torn_checkpoint_with_a_warning(recipe, reference, tmp_path):
    r = run(recipe, tmp_path, fault="kill9", step=20)
    assert r.returncode == -signal.SIGKILL
    newest = tmp_path / "checkpoints" / "ckpt-0001-000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn: its .sha256 no longer matches
    r = run(recipe, tmp_path, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "warning: skipping checkpoint" in r.stderr and "ckpt-0001-000006.pt" in r.stderr
    assert "ckpt-0001-000003.pt at epoch 1 step 3" in r.stdout
    assert_same_run(tmp_path, reference)


@pytest.mark.parametrize("log_interval, caught_at", [(1, "non-finite loss nan at epoch 0 step 5"),
                                                     (100, "non-finite weights or loss at epoch 0 step 6")])
def test_non_finite_loss_stops_keeping_the_last_good_checkpoint(recipe, tmp_path, log_interval, caught_at):
    # NaN weights after step 4. log_interval 1: the loss check at step 5 stops the run; log_interval 100: no
    # log step until the epoch ends, so the checkpoint at step 6 must refuse to save the diverged state.
    r = run(recipe, tmp_path, "--set", f"train.log_interval={log_interval}", fault="nan", step=4)
    assert r.returncode == 3, r.stdout + r.stderr
    assert caught_at in r.stderr
    assert "ckpt-0000-000003.pt" in r.stderr and "Traceback" not in r.stderr
    assert names(tmp_path) == ["ckpt-0000-000003.pt"]
    state = checkpoint.load(tmp_path / "checkpoints" / "ckpt-0000-000003.pt")
    assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sigterm_and_kill9_resume_bit_identical(recipe, tmp_path):
    """The same on one GPU with bf16 autocast: CUDA RNG states restored, cuDNN/cuBLAS deterministic."""
    gpu = ("--set", "train.device=cuda", "--set", "train.precision=bf16")
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS needs it for deterministic algorithms
    ref = tmp_path / "ref"
    r = run(recipe, ref, *gpu, env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for fault, step, code in (("sigterm", 7, 0), ("kill9", 20, -signal.SIGKILL)):
        out = tmp_path / fault
        r = run(recipe, out, *gpu, fault=fault, step=step, env_extra=env)
        assert r.returncode == code, r.stderr[-3000:]
        r = run(recipe, out, *gpu, "--resume", "auto", env_extra=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert_same_run(out, ref)


# --- checkpoint.py on its own -----------------------------------------------------------------------------------

def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "epoch": 0, "step": int(v)}


def test_load_latest_falls_back_past_torn_and_unfinished_checkpoints(tmp_path, capsys):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, _state(step), 0, step, keep=5)
    third = tmp_path / "ckpt-0000-000003.pt"
    third.write_bytes(third.read_bytes()[:100])  # truncated
    (tmp_path / "ckpt-0000-000002.pt.sha256").unlink()  # written, but its checksum never was
    path, state = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-0000-000001.pt" and state["step"] == 1
    err = capsys.readouterr().err
    assert "ckpt-0000-000003.pt: SHA-256 does not match" in err and "ckpt-0000-000002.pt: no" in err
    assert checkpoint.load_latest(tmp_path / "empty") is None


def test_keep_last_k_and_no_temp_files_left(tmp_path):
    for step in range(1, 6):
        checkpoint.save(tmp_path, _state(step), 0, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-0000-000004.pt", "ckpt-0000-000004.pt.sha256", "ckpt-0000-000005.pt", "ckpt-0000-000005.pt.sha256"]


class _Payload:
    def __reduce__(self):  # what a malicious pickle would do on load
        return (os.system, ("echo pwned",))


def test_checkpoints_load_weights_only(tmp_path):
    path = checkpoint.save_file(tmp_path / "evil.pt", {"model": {}, "x": _Payload()})
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(path)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    checkpoint.save_file(tmp_path / "rng.pt", {"model": {}, "rng": checkpoint.rng_state()})
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
