"""Checkpoints that verify but cannot be used, and checksum files that cannot be read: one line naming the file
(and the entry), exit 2, never a traceback."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_one_clear_line
from resnet_repro import checkpoint
from resnet_repro.config import Config
from resnet_repro.evaluate import load_trained
from resnet_repro.models.resnet import build_model


def _state(**changes) -> dict:
    """What training writes for a ResNet-20 on 4 classes of 1-channel images, with `changes` (None: drop it)."""
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.name = "resnet20"
    cfg.data.path = "/nonexistent"
    state = {"model": build_model("resnet20", 4, 1).state_dict(), "config": cfg.to_dict(),
             "classes": ["0", "1", "2", "3"], "class_names": ["a", "b", "c", "d"], "in_channels": 1, "epoch": 1,
             "step": 0, "version": "test"}
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def _drop_first(tensors: dict) -> dict:
    return dict(list(tensors.items())[1:])


BAD_CONTENT = {  # name: (entries changed, what the message must name)
    "no_config": ({"config": None}, "'config'"),
    "config_is_a_string": ({"config": "resnet20"}, "'config'"),
    "config_section_is_a_list": ({"config": {"model": ["resnet20"]}}, "'config'"),
    "config_unknown_key": ({"config": {"model": {"name": "resnet20", "depth": 3}}}, "model.depth"),
    "config_unknown_model": ({"config": {"model": {"name": "resnet7"}}}, "resnet7"),
    "no_classes": ({"classes": None}, "'classes'"),
    "classes_empty": ({"classes": []}, "'classes'"),
    "in_channels_a_string": ({"in_channels": "1"}, "'in_channels'"),
    "class_names_too_few": ({"class_names": ["a"]}, "'class_names'"),
    "model_not_tensors": ({"model": {"w": "x"}}, "'model'"),
    "weights_of_another_model": ({"model": {"w": torch.zeros(3)}}, "unexpected w"),
    "weights_missing_one": ({"model": _drop_first(build_model("resnet20", 4, 1).state_dict())},
                            "missing stem.0.weight"),
    "classes_do_not_fit_weights": ({"classes": ["0", "1"], "class_names": None}, "wrong shape fc.weight"),
    "in_channels_do_not_fit_weights": ({"in_channels": 3}, "wrong shape stem.0.weight"),
}


@pytest.mark.parametrize("name", BAD_CONTENT)
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_checkpoint_that_verifies_but_cannot_be_used(cli, tmp_path, name, command):
    changes, named = BAD_CONTENT[name]
    path = checkpoint.save_file(tmp_path / "final.pt", _state(**changes))
    argv = {"evaluate": ["evaluate", "--checkpoint", path, "--workers", "0"],
            "predict": ["predict", tmp_path / "x.png", "--checkpoint", path],
            "export": ["export", path, "--out", tmp_path / "m.safetensors"]}[command]
    code, _, err = cli(*argv)
    assert_one_clear_line(code, err, path, named)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        load_trained(path)


def test_ema_weights_that_do_not_fit_name_the_ema(tmp_path):
    ema = {"module": {"w": torch.zeros(3)}, "updates": 1, "decay": 0.9}
    path = checkpoint.save_file(tmp_path / "final.pt", _state(ema=ema))
    load_trained(path)  # the trained weights are fine
    with pytest.raises(checkpoint.CheckpointError, match="'ema' weights do not fit the resnet20"):
        load_trained(path, weights="ema")


def test_good_checkpoint_without_optional_entries_still_loads(tmp_path):
    """Older or EMA-less checkpoints lack class_names, image and any EMA: they load as before."""
    path = checkpoint.save_file(tmp_path / "final.pt", _state(class_names=None))
    trained = load_trained(path)
    assert trained.classes == trained.class_names == ["0", "1", "2", "3"] and trained.in_channels == 1
    with pytest.raises(checkpoint.CheckpointError, match="holds no EMA weights"):
        load_trained(path, weights="ema")


def _binary_sidecar(sidecar):
    sidecar.write_bytes(b"\xff\xfe\x80\x00 not text")


def _folder_sidecar(sidecar):
    sidecar.unlink()
    sidecar.mkdir()


@pytest.mark.parametrize("damage", [_binary_sidecar, _folder_sidecar])
def test_unreadable_checksum_file_is_skipped_and_never_pruned(tmp_path, damage, capsys):
    """Like a missing checksum file: --resume auto falls back to an older checkpoint, and pruning keeps it."""
    ckpts = tmp_path / "checkpoints"
    for step in range(2):
        checkpoint.save(ckpts, {**_state(), "run_id": "r1"}, 0, step)
    damage(ckpts / "ckpt-0000-000001.pt.sha256")
    path, _ = checkpoint.load_latest(ckpts, run_id="r1")
    assert path.name == "ckpt-0000-000000.pt"
    assert "ckpt-0000-000001.pt.sha256" in capsys.readouterr().err
    for step in range(2, 6):
        checkpoint.save(ckpts, {**_state(), "run_id": "r1"}, 0, step, keep=2)
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["ckpt-0000-000001.pt", "ckpt-0000-000004.pt",
                                                          "ckpt-0000-000005.pt"]
