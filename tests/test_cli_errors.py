"""Bad input at the command line: exit code 2 and one line naming the file or key, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import FASHION_MNIST_RECIPE as RECIPE
from conftest import REPO, assert_one_clear_line
from resnet_repro import checkpoint


def test_evaluate_missing_checkpoint(cli, tmp_path):
    missing = tmp_path / "runs" / "nope" / "final.pt"
    code, _, err = cli("evaluate", "--checkpoint", missing, "--workers", "0")
    assert_one_clear_line(code, err, missing)


def _torn(path):
    checkpoint.save_file(path, {"model": {"w": torch.zeros(3)}, "epoch": 1})
    path.write_bytes(path.read_bytes()[:-20])  # cut short after the checksum was written


def _no_checksum(path):
    path.write_bytes(b"PK\x03\x04 not really a zip")  # as if the write never finished


def _garbage_with_checksum(path):
    import hashlib

    data = b"\x80\x04 garbage that is not a torch file"
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def _cut_zip_with_checksum(path):
    import hashlib

    checkpoint.save_file(path, {"model": {"w": torch.zeros(100)}})
    data = path.read_bytes()[:-200]  # a damaged zip whose checksum was (wrongly) rewritten to match
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def _not_ours(path):
    checkpoint.save_file(path, {"weights": {"w": torch.zeros(3)}})  # a whole file, but no "model" entry


def _binary_sidecar(path):
    checkpoint.save_file(path, {"model": {"w": torch.zeros(3)}})
    path.with_name(path.name + ".sha256").write_bytes(b"\xff\xfe\x00 not a checksum")


def _folder_sidecar(path):
    sidecar = checkpoint.save_file(path, {"model": {"w": torch.zeros(3)}}).with_name(path.name + ".sha256")
    sidecar.unlink()
    sidecar.mkdir()  # was IsADirectoryError's traceback


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on our hand-made garbage
@pytest.mark.parametrize("damage", [_torn, _no_checksum, _garbage_with_checksum, _cut_zip_with_checksum, _not_ours,
                                    _binary_sidecar, _folder_sidecar])
def test_evaluate_corrupt_checkpoint(cli, tmp_path, damage):
    path = tmp_path / "final.pt"
    damage(path)
    code, _, err = cli("evaluate", "--checkpoint", path, "--workers", "0")
    assert_one_clear_line(code, err, path)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_train_unknown_config_key_in_file(cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.read_text() + "\n\n# a typo\noptim2:\n  lr: 0.1\n")
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", recipe, "--out", out)
    assert_one_clear_line(code, err, "optim2", recipe)
    recipe.write_text(RECIPE.read_text().replace("  nesterov: true", "  nestrov: true"))
    code, _, err = cli("train", "--config", recipe, "--out", out)
    assert_one_clear_line(code, err, "optim.nestrov", recipe)
    assert not out.exists()  # nothing written before the config is known to be good


@pytest.mark.parametrize("item,key", [("optim.lrr=0.1", "optim.lrr"), ("data.flip=maybe", "data.flip"),
                                      ("train.epochs=1.5", "train.epochs"), ("optim.lr", "optim.lr")])
def test_train_bad_set(cli, tmp_path, item, key):
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", RECIPE, "--out", out, "--set", item)
    assert_one_clear_line(code, err, key)
    assert not out.exists()


def test_train_missing_config_file_and_unprepared_data(cli, tmp_path):
    code, _, err = cli("train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "run")
    assert_one_clear_line(code, err, tmp_path / "nope.yaml")
    code, _, err = cli("train", "--config", RECIPE, "--out", tmp_path / "run", "--set", f"data.path={tmp_path}")
    assert_one_clear_line(code, err, tmp_path / "manifest.json")


def test_exit_code_of_the_real_command(tmp_path):
    missing = tmp_path / "final.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "resnet_repro", "evaluate", "--checkpoint", str(missing)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and str(missing) in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["model", "resnet20", "--json"], ["model", "resnet50"]])
def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path, argv):
    # `resnet-repro predict DIR | head`: head exits and the next write meets a closed pipe. Made deterministic by
    # closing the reading end before the command starts.
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    try:
        proc = subprocess.run([sys.executable, "-m", "resnet_repro", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr  # 128 + SIGPIPE, as `cat` reports it
    assert proc.stderr == ""  # no traceback, no "Exception ignored" from the flush at exit


def test_a_broken_pipe_of_our_own_is_not_taken_for_the_readers(cli, monkeypatch):
    # A loader worker's pipe breaking is a fault to show, even though it is the same exception type.
    from resnet_repro.commands import model

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(model, "run", broken)
    with pytest.raises(BrokenPipeError):
        cli("model", "resnet20")


@pytest.mark.parametrize("item,shown", [("optim.lr=-1", "-1.0"), ("optim.lr_batch=0", "0"),
                                        ("optim.momentum=-1", "-1.0"), ("optim.label_smoothing=2", "2.0"),
                                        ("train.log_interval=0", "0"), ("train.eval_every=0", "0"),
                                        ("train.threads=-3", "-3"), ("data.random_erasing=5", "5.0"),
                                        ("model.name=resnet51", "'resnet51'")])
def test_train_out_of_range_value(cli, tmp_path, item, shown):
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", RECIPE, "--out", out, "--set", item)
    assert_one_clear_line(code, err, f"'{item.split('=')[0]}': {shown}")
    assert not out.exists()  # refused before anything is written


def test_train_duplicate_key_in_recipe(cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.read_text().replace("  momentum: 0.9\n", "  momentum: 0.9\n  lr: 0.8\n"))
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", recipe, "--out", out)
    assert_one_clear_line(code, err, recipe, "'optim.lr' is given twice")
    assert not out.exists()
