"""Numbers, names and files that cannot be used, refused before any work with a line naming the option, key or
file: found by probing the commands with bad values (each of these once got through, or ended in a traceback)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import assert_one_clear_line, tiny_run_recipe, write_image_dataset
from resnet_repro import atomic
from resnet_repro.config import ConfigError, DataConfig
from resnet_repro.data.augment.geometry import EvalGeometry
from resnet_repro.data.shards import records


@pytest.mark.parametrize("argv,flag", [
    (["prepare", "folder", "--max-side", "-1"], "--max-side"),  # was taken as "on": every image shrunk to 1x1
    (["prepare", "folder", "--quality", "200"], "--quality"),
    (["prepare", "folder", "--quality", "-5"], "--quality"),
    (["prepare", "folder", "--train-shards", "-1"], "--train-shards"),  # was numpy's traceback
    (["prepare", "folder", "--workers", "-3"], "--workers"),
    (["prepare", "fashion-mnist", "--val-size", "-5"], "--val-size"),
    (["prepare", "folder", "--seed", "x"], "--seed"),
    (["evaluate", "--checkpoint", "CK", "--crop", "-3"], "--crop"),  # was a ZeroDivisionError
    (["evaluate", "--checkpoint", "CK", "--protocol", "multiscale", "--scales", "224", "0"], "--scales"),
    (["evaluate", "--checkpoint", "CK", "--pad", "-2"], "--pad"),  # was blamed on a shard's sample
    (["evaluate", "--checkpoint", "CK", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--checkpoint", "CK", "--workers", "-1"], "--workers"),
    (["bench", "train", "--steps", "0"], "--steps"),
    (["verify", "DATA", "--workers", "-1"], "--workers"),
    (["model", "resnet20", "--in-channels", "0"], "--in-channels"),
])
def test_numbers_out_of_range_refused_by_the_parser(cli, tmp_path, argv, flag):
    out = tmp_path / "out"
    code, _, err = cli(*argv, *(["--out", out] if argv[0] == "prepare" else []))
    assert code == 2, err
    assert f"argument {flag}:" in err and "Traceback" not in err, err
    assert not out.exists()


def test_zero_keeps_meaning_the_default(cli, tmp_path):
    """0 is each option's documented default (keep sizes / one process per core), not a value out of range."""
    code, _, err = cli("prepare", "folder", "--src", tmp_path / "nope", "--out", tmp_path / "out",
                       "--max-side", "0", "--quality", "0", "--workers", "0", "--train-shards", "0")
    assert_one_clear_line(code, err, tmp_path / "nope")  # past the parser, refused for the missing folder


@pytest.fixture
def run_on_textures(tmp_path):
    """A 1-epoch ResNet-20 run on 16x16 textures: (recipe, data)."""
    data = write_image_dataset(tmp_path / "data", {"train": 16, "val": 8}, size=16)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_run_recipe(data, epochs=1, log_interval=1, checkpoint_every_steps=0))
    return recipe, data


def test_val_crop_larger_than_the_stored_images_refused_at_start(cli, tmp_path, run_on_textures):
    recipe, _ = run_on_textures
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", recipe, "--out", out, "--set", "data.val_size=64")
    assert_one_clear_line(code, err, "data.val_size", "16x16")
    assert not out.exists()  # was: an epoch trained, then a traceback, checkpoints and config.yaml left
    # With a resize that enlarges the images first, the crop can be cut.
    geometry = EvalGeometry(DataConfig(val_resize=72, val_size=64), 16)
    assert geometry.size == 64
    with pytest.raises(ConfigError, match="data.val_size"):
        EvalGeometry(DataConfig(val_size=64), 16)


def test_unknown_device_named(cli, tmp_path, run_on_textures):
    recipe, _ = run_on_textures
    for bad in ("banana", "cpu:0", "gpu"):
        code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", f"train.device={bad}")
        assert_one_clear_line(code, err, repr(bad), "train.device")
    assert not (tmp_path / "run").exists()


def test_config_type_error_names_the_file_and_empty_recipe_refused(cli, tmp_path, run_on_textures):
    recipe, _ = run_on_textures
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("epochs: 1,", "epochs: ten,"))
    code, _, err = cli("train", "--config", bad, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, bad, "train.epochs", "'ten'")
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", "train.epochs=ten")
    assert_one_clear_line(code, err, "--set 'train.epochs=ten'")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")  # would have trained every default: ResNet-50 for 120 epochs
    code, _, err = cli("train", "--config", empty, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, empty, "empty")
    assert not (tmp_path / "run").exists()


def _rewrite(data, edit):
    manifest = json.loads((data / records.MANIFEST).read_text())
    edit(manifest)
    records.write_manifest(data, manifest)  # with a matching own SHA-256: only the content checks can object


def test_manifest_without_image_entry_or_with_a_shard_left_out(tmp_path):
    data = write_image_dataset(tmp_path / "a", {"train": 16, "test": 8}, size=8)
    _rewrite(data, lambda m: m.pop("image"))
    with pytest.raises(records.RecordError, match=r"manifest.json: no valid 'image'"):
        records.load_manifest(data)
    data = write_image_dataset(tmp_path / "b", {"train": 16, "test": 8}, size=8)
    _rewrite(data, lambda m: m["splits"]["test"]["shards"].pop())  # one of two shards: half the test set unread
    with pytest.raises(records.RecordError, match=r"split 'test' counts 8 images, its shards 4"):
        records.load_manifest(data)


def test_evaluate_refuses_what_it_cannot_score_in_one_line(cli, tmp_path, run_on_textures, monkeypatch):
    """Before any image is read: data that is not there, a resize below the crop, a crop the images cannot give."""
    recipe, data = run_on_textures
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # trained on a data.path relative to the folder training ran in, as `make train`
    code, _, err = cli("train", "--config", recipe, "--out", out, "--set", f"data.path={data.name}")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # From another folder: the data is where data.path led when the run trained (was "no manifest; prepare ...").
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0")
    assert code == 0 and f"on {data} split val" in printed, err
    moved = tmp_path / "moved"
    data.rename(moved)  # and once the data has gone from there, one line that says so and names --data
    code, _, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0")
    assert_one_clear_line(code, err, f"trained on {data}, data.path {data.name}", f"(read from {elsewhere})",
                          "--data FOLDER")
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0", "--data", moved)
    assert code == 0 and "single" in printed, err
    moved.rename(data)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0", "--resize", "10",
                       "--crop", "16")
    assert_one_clear_line(code, err, "--resize 10", "16")  # was scored at 16 and labelled "shorter side 10"
    # A crop larger than the stored 16x16 images: refused before the pass (was a worker's traceback at its first
    # batch); 10crop cuts from the image zero-padded by --pad, so up to 16 + 2 x pad fits.
    code, _, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "1", "--crop", "20")
    assert_one_clear_line(code, err, "--crop 20", "16x16", "at most 16", "--resize of at least 20")
    code, _, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0", "--crop", "19",
                       "--protocol", "10crop", "--pad", "1")
    assert_one_clear_line(code, err, "--crop 19", "padded by 1 px", "at most 18")
    code, printed, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0", "--crop", "18",
                             "--protocol", "10crop", "--pad", "1")
    assert code == 0 and "10crop" in printed, err


def test_replaced_files_get_the_usual_mode(tmp_path):
    """safetensors and mkstemp write their temp files 0600: the export must not end up readable by its owner
    only, unlike every other file of a run."""
    for unique in (False, True):
        target = tmp_path / f"model{int(unique)}.bin"
        with atomic.replacing(target, unique=unique) as tmp:
            tmp.write_bytes(b"weights")
            os.chmod(tmp, 0o600)
        mask = os.umask(0o022)
        os.umask(mask)
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("env,named", [
    ({"WORLD_SIZE": "2", "RANK": "3"}, "RANK=3"),  # was: waits 30 minutes for peers that never come
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK=-1"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-2"}, "LOCAL_RANK=-2"),
])
def test_torchrun_variables_that_describe_no_group(cli, tmp_path, monkeypatch, run_on_textures, env, named):
    recipe, _ = run_on_textures
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29599")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run")
    assert_one_clear_line(code, err, named, "torchrun")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def trained_run(tmp_path, run_on_textures, cli):
    """The 1-epoch run of run_on_textures, trained: its folder."""
    recipe, _ = run_on_textures
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", recipe, "--out", out)
    assert code == 0, err
    return out


def test_checkpoints_record_the_image_size_and_an_old_one_away_from_its_data_is_refused(cli, tmp_path, trained_run,
                                                                                       monkeypatch):
    """predict sized a photo by the run's data folder, found relative to wherever it ran, else silently by the
    net's default (32 for a CIFAR net trained on 16x16 here): another folder, another answer."""
    import cv2
    import numpy as np

    from resnet_repro import checkpoint

    state = checkpoint.load(trained_run / "final.pt")
    assert state["image"] == {"height": 16, "width": 16, "channels": 1}
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8))
    data = state["config"]["data"]["path"]
    assert state["data_folder"] == str(Path(data).resolve())  # where data.path led: evaluate finds it from anywhere
    old = tmp_path / "old.pt"  # as saved before: no image facts nor data folder, trained on a relative data path
    checkpoint.save_file(old, {**{k: v for k, v in state.items() if k not in ("image", "data_folder")},
                               "config": {**state["config"], "data": {**state["config"]["data"], "path": "data"}}})
    monkeypatch.chdir(tmp_path / "run")  # where no ./data is
    code, _, err = cli("predict", "--checkpoint", old, image)
    assert_one_clear_line(code, err, old, "records no image size", "--data")
    code, out, err = cli("predict", "--checkpoint", old, "--data", data, image, "--json")
    assert code == 0 and "centre crop 16" in out, err



def test_predict_ten_crop_of_a_pad_crop_net_uses_the_padded_image(cli, tmp_path, trained_run):
    """predict resizes a photo's shorter side to exactly the crop: seen whole, so its 10 crops come from the
    zero-padded image as evaluate's do; they were five copies of the whole image, the flip result again."""
    import cv2
    import numpy as np

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (20, 20), dtype=np.uint8))
    results = {}
    for protocol in ("flip", "10crop"):
        code, out, err = cli("predict", "--checkpoint", trained_run / "final.pt", image, "--protocol", protocol,
                             "--json")
        assert code == 0, err
        results[protocol] = json.loads(out)[0]
    assert "zero-padded" in results["10crop"]["protocol"]
    assert results["10crop"]["top"] != results["flip"]["top"]


def test_start_up_mistakes_of_train_are_config_errors(cli, tmp_path, run_on_textures):
    """Exit 2 naming the key and the fix, as every config error; exit 3 is for a training that failed."""
    recipe, _ = run_on_textures
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", "data.batch_size=64")
    assert_one_clear_line(code, err, "data.batch_size", "16 training samples", "at most 16")
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", "data.decode=gpu")
    assert_one_clear_line(code, err, "data.decode", "data.decode=cpu")  # 1-channel PNGs, on any device


def test_verify_on_a_path_that_is_no_data_folder(cli, tmp_path, run_on_textures):
    """A user's mistake (exit 2, one line), not a problem found in the data (exit 1)."""
    _, data = run_on_textures
    for path, words in ((data / "manifest.json", "is a file"), (tmp_path / "nope", "not found"),
                        (tmp_path, "no manifest.json")):
        code, _, err = cli("verify", path)
        assert_one_clear_line(code, err, path, words)


def test_model_that_does_not_fit_in_memory_and_two_weight_sources(cli, tmp_path, monkeypatch):
    from resnet_repro.models import resnet

    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 25600000000 bytes")

    monkeypatch.setattr(resnet, "build_model", too_big)
    code, _, err = cli("model", "resnet20", "--num-classes", "100000000")
    assert_one_clear_line(code, err, "100,000,000 classes", "does not fit in memory")
    code, _, err = cli("evaluate", "--checkpoint", "a.pt", "--torchvision-weights", "b.pth")
    assert_one_clear_line(code, err, "not both")


def test_allow_change_without_resume_and_torchvision_weights_named(cli, tmp_path, run_on_textures):
    recipe, data = run_on_textures
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--allow-change", "train.epochs")
    assert_one_clear_line(code, err, "--allow-change", "--resume")
    assert not (tmp_path / "run").exists()
    import torch

    from resnet_repro.models.resnet import build_model

    ours = tmp_path / "resnet20.pth"  # a state_dict of our CIFAR net: not the torchvision layout
    torch.save(build_model("resnet20", 4, 1).state_dict(), ours)
    for path, words in ((ours, "not in the torchvision ResNet layout"), (tmp_path, "a folder")):
        code, _, err = cli("evaluate", "--torchvision-weights", path, "--model", "resnet18", "--data", data,
                           "--workers", "0")
        assert_one_clear_line(code, err, path, words)


def test_a_schedule_the_run_never_reaches_is_warned_about_in_the_log(cli, tmp_path, run_on_textures):
    """A shortened run of a long recipe is legitimate (a smoke test), so it trains; but the log said "peak lr"
    for a run whose warm-up never ended, and nothing about milestones it never reached."""
    recipe, _ = run_on_textures
    code, out, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", "schedule.warmup_epochs=5")
    assert code == 0, err
    assert "warning: schedule.warmup_epochs 5 is not shorter than the run (1 epochs)" in out


def test_env_warns_of_a_gpu_decoder_train_would_refuse(cli, run_on_textures):
    recipe, _ = run_on_textures  # train.device: cpu
    code, out, err = cli("env", "--config", recipe, "--set", "data.decode=gpu")
    assert code == 0, err
    assert "warning: data.decode=gpu needs a CUDA device (here: cpu); is for JPEG data sets with ImageNet " \
           "crops, not data.crop=pad_crop: train refuses it (use data.decode=cpu)" in out
