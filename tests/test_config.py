"""Typed config: YAML recipes, --set overrides, and errors that name the key at fault."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from resnet_repro.config import Config, ConfigError, config_from_dict, load_config, save_config

RECIPES = sorted((REPO / "configs").rglob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_there_are_recipes_to_check():
    assert REPO / "configs" / "fashion_mnist" / "resnet20.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recipe_under_configs_loads_and_round_trips(recipe, tmp_path):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    save_config(cfg, tmp_path / "resolved.yaml")  # what a run saves in RUN_DIR
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg  # what a checkpoint carries


def test_file_values_then_overrides_are_applied_and_typed(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.4\n  weight_decay: 1.0e-4\ndata:\n  batch_size: 32\n")
    cfg = load_config(path, ["optim.lr=0.2", "train.epochs=7", "data.flip=false", "schedule.milestones=[10, 20]",
                             "data.mean=[0.5]", "data.std=0.25", "optim.nesterov=yes", "model.name=resnet56",
                             "optim.momentum=1", " optim.label_smoothing = 0.1 "])
    assert cfg.optim.lr == 0.2 and type(cfg.optim.lr) is float
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.data.batch_size == 32 and type(cfg.data.batch_size) is int  # from the file, not overridden
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int
    assert cfg.data.flip is False and cfg.optim.nesterov is True
    assert cfg.schedule.milestones == [10.0, 20.0] and all(type(m) is float for m in cfg.schedule.milestones)
    assert cfg.data.mean == [0.5] and cfg.data.std == [0.25]
    assert cfg.model.name == "resnet56"
    assert cfg.optim.momentum == 1.0 and type(cfg.optim.momentum) is float
    assert cfg.optim.label_smoothing == 0.1
    assert Config().optim.lr == 0.1  # defaults are not shared state


@pytest.mark.parametrize("text", ["true", "yes", "on", "1", "True"])
def test_bool_spellings_true(text):
    assert load_config(None, [f"data.flip={text}"]).data.flip is True


@pytest.mark.parametrize("text", ["false", "no", "off", "0", "False"])
def test_bool_spellings_false(text):
    assert load_config(None, [f"data.flip={text}"]).data.flip is False


def test_unknown_key_in_file_names_the_key_and_file(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_unknown_section_names_the_section(tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(write(tmp_path, "optimizer:\n  lr: 0.1\n"))


def test_unknown_key_in_set_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.epoch\b"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.epochs=3"])


@pytest.mark.parametrize("item,key", [
    ("optim.lr=fast", "optim.lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.epochs=ten", "train.epochs"),
    ("train.epochs=", "train.epochs"),
    ("data.flip=maybe", "data.flip"),
    ("data.flip=2", "data.flip"),
    ("data.mean=[0.5, x]", "data.mean"),
    ("data.mean=[0.5", "data.mean"),  # not even valid YAML
    ("model.name=[resnet50]", "model.name"),
    ("schedule.milestones={a: 1}", "schedule.milestones"),
])
def test_bad_set_value_names_the_key(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


@pytest.mark.parametrize("item", ["optim.lr", "lr=0.1", "=3"])
def test_malformed_set_is_an_error(item):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, [item])


@pytest.mark.parametrize("item,key", [("data.crop=random_resized", "data.crop"),
                                      ("data.normalize=zscore", "data.normalize"),
                                      ("schedule.kind=exponential", "schedule.kind"),
                                      ("train.precision=fp8", "train.precision"),
                                      ("data.color=tf_cnn_yuv", "data.color"),
                                      ("data.val_interpolation=bicubic", "data.val_interpolation"),
                                      ("model.init=xavier", "model.init")])
def test_bad_choice_names_the_key_and_the_choices(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_config(None, [item])
    assert "is not one of" in str(e.value)
    assert str(e.value).count("\n") == 0  # one line
    if key == "data.color":  # every choice is named, the two tf_cnn paths included
        assert all(c in str(e.value) for c in ("none", "tf_cnn", "tf_cnn_hsv", "jitter"))


def test_invalid_values_are_errors():
    for item, key in (("data.batch_size=0", "data.batch_size"), ("train.epochs=-1", "train.epochs"),
                      ("data.workers=-1", "data.workers")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [item])
    with pytest.raises(ConfigError, match=r"data\.mean"):
        load_config(None, ["data.mean=[0.5]"])  # 1 mean for 3 std values


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "optim: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="'optim' must be a mapping"):
        load_config(write(tmp_path, "optim: 0.1\n"))


def test_saved_config_is_plain_yaml(tmp_path):
    cfg = load_config(None, ["optim.lr=0.3"])
    save_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["optim"]["lr"] == 0.3
