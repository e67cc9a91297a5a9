"""A resume reads the data the run was trained on, or says why not: a data set prepared again since (another
shuffle seed, another number of images) is refused in one line unless `--allow-change data.path` accepts it at an
epoch end; a mid-epoch checkpoint whose epoch no longer has the same steps is refused even then.

One base run (ResNet-20, 16 + 8 tiny 8x8 texture images, batch 8: 2 steps per epoch, 3 epochs, a checkpoint after
every step, all kept); each test copies it and its data, cuts the copy back to a checkpoint as a crash would have
left it, prepares the data again and resumes with `--set data.path=` the copy (a key free on resume).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_clear_line as one_line
from conftest import tiny_run_recipe, write_image_dataset
from resnet_repro import checkpoint

SPLITS = {"train": 16, "val": 8}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    from resnet_repro.cli import main

    root = tmp_path_factory.mktemp("resume_data")
    data = write_image_dataset(root / "data", SPLITS, size=8)
    recipe = root / "recipe.yaml"
    recipe.write_text(tiny_run_recipe(data, epochs=3, log_interval=1, checkpoint_every_steps=1)
                      .replace("keep_checkpoints: 3", "keep_checkpoints: 0"))
    out = root / "run"
    assert main(["train", "--config", str(recipe), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 6
    return data, out


def crashed(base, tmp_path: Path, epoch: int, step: int) -> tuple[Path, Path]:
    """(data copy, run copy) with the run as a crash just after checkpoint (epoch, step) leaves it."""
    data, run = base
    data_copy, out = shutil.copytree(data, tmp_path / "data"), shutil.copytree(run, tmp_path / "run")
    for name in ("final.pt", "final.pt.sha256", "results.json", "model.safetensors"):
        (out / name).unlink(missing_ok=True)
    for p in checkpoint.list_checkpoints(out / "checkpoints"):
        if p.name > f"ckpt-{epoch:04d}-{step:06d}.pt":
            p.unlink()
            p.with_name(p.name + ".sha256").unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(ln for ln in lines if json.loads(ln).get("epoch", 0) <= epoch))
    return data_copy, out


def resume(cli, out: Path, data: Path, *extra):
    return cli("train", "--config", out / "config.yaml", "--out", out, "--set", f"data.path={data}",
               "--resume", "auto", *extra)


def test_the_same_data_resumes_and_every_checkpoint_records_it(base, tmp_path, cli):
    data, out = crashed(base, tmp_path, 1, 1)
    saved = checkpoint.load(out / "checkpoints" / "ckpt-0001-000001.pt")["data"]
    manifest = json.loads((data / "manifest.json").read_text())
    assert saved["manifest_sha256"] == manifest["manifest_sha256"]
    assert (saved["train"], saved["val"]) == ({"split": "train", "count": 16}, {"split": "val", "count": 8})
    code, _, err = resume(cli, out, data)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["steps"] == 6


def test_data_prepared_again_with_another_seed_is_refused_and_nothing_written(base, tmp_path, cli):
    data, out = crashed(base, tmp_path, 1, 0)
    write_image_dataset(data, SPLITS, size=8, seed=7)
    before = snapshot(out)
    code, _, err = resume(cli, out, data)
    one_line(code, err, data, "prepared again: manifest SHA-256 differs", "--allow-change data.path",
             "point data.path at")
    assert snapshot(out) == before


def test_more_images_mid_epoch_are_refused_even_with_allow_change(base, tmp_path, cli):
    data, out = crashed(base, tmp_path, 1, 1)
    write_image_dataset(data, {"train": 24, "val": 8}, size=8)
    before = snapshot(out)
    code, _, err = resume(cli, out, data)
    one_line(code, err, data, "train split 16 -> 24 images", "--allow-change data.path")
    assert snapshot(out) == before
    code, _, err = resume(cli, out, data, "--allow-change", "data.path")
    # The newest epoch-end checkpoint is named: --resume auto would take the mid-epoch one again.
    one_line(code, err, data, "mid-epoch", "2 -> 3 steps per epoch", "epoch-end checkpoint",
             out / "checkpoints" / "ckpt-0001-000000.pt")
    assert snapshot(out) == before


def test_an_epoch_end_checkpoint_goes_on_with_allow_change_and_records_it(base, tmp_path, cli):
    data, out = crashed(base, tmp_path, 1, 0)
    write_image_dataset(data, {"train": 24, "val": 8}, size=8, seed=7)
    code, text, err = resume(cli, out, data, "--allow-change", "data.path")
    assert code == 0, err
    assert "allowed change (--allow-change data.path)" in text and "train split 16 -> 24 images" in text
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec.get("epoch", rec.get("event")) for rec in lines] == [1, "resume", 2, 3]
    change = lines[1]["allowed_changes"]["data.path"]
    assert (change["saved"]["train"]["count"], change["now"]["train"]["count"]) == (16, 24)
    assert change["saved"]["manifest_sha256"] != change["now"]["manifest_sha256"]
    assert (lines[1]["at_epoch"], lines[1]["at_step"]) == (1, 0)
    saved = checkpoint.load(out / "checkpoints" / "ckpt-0003-000000.pt")
    assert saved["data"]["train"]["count"] == 24 and saved["steps_per_epoch"] == 3
    # The steps taken: 2 in the first epoch on 16 images, then 3 + 3 on 24, not 3 epochs x 3.
    assert saved["steps_done"] == 8
    assert json.loads((out / "results.json").read_text())["steps"] == 8


def test_a_checkpoint_from_before_data_identity_resumes_as_before(base, tmp_path, cli):
    data, out = crashed(base, tmp_path, 1, 1)
    path = out / "checkpoints" / "ckpt-0001-000001.pt"
    state = checkpoint.load(path)
    state.pop("data", None)
    checkpoint.save_file(path, state)  # rewritten with its checksum, as an older version saved it
    code, _, err = resume(cli, out, data)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["steps"] == 6
