"""Typed config: YAML recipes, --set overrides, and errors that name the key at fault."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from resnet_repro.config import Config, ConfigError
from resnet_repro.recipe import config_from_dict, load_config, save_config

RECIPES = sorted((REPO / "configs").rglob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_there_are_recipes_to_check():
    assert REPO / "configs" / "fashion_mnist" / "resnet20.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recipe_under_configs_loads_and_round_trips(recipe, tmp_path):
    cfg = load_config(recipe, profile="cpu")  # a recipe with profiles: the caller chooses one (runtime.load_recipe)
    assert isinstance(cfg, Config)
    save_config(cfg, tmp_path / "resolved.yaml", chosen_on={"cpu_model": "x"})  # what a run saves in RUN_DIR
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg  # what a checkpoint carries


def test_file_values_then_overrides_are_applied_and_typed(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.4\n  weight_decay: 1.0e-4\ndata:\n  batch_size: 32\n")
    cfg = load_config(path, ["optim.lr=0.2", "train.epochs=7", "data.flip=false", "schedule.milestones=[10, 20]",
                             "data.mean=[0.5]", "data.std=0.25", "optim.nesterov=yes", "model.name=resnet56",
                             "optim.momentum=0", " optim.label_smoothing = 0.1 "])
    assert cfg.optim.lr == 0.2 and type(cfg.optim.lr) is float
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.data.batch_size == 32 and type(cfg.data.batch_size) is int  # from the file, not overridden
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int
    assert cfg.data.flip is False and cfg.optim.nesterov is True
    assert cfg.schedule.milestones == [10.0, 20.0] and all(type(m) is float for m in cfg.schedule.milestones)
    assert cfg.data.mean == [0.5] and cfg.data.std == [0.25]
    assert cfg.model.name == "resnet56"
    assert cfg.optim.momentum == 0.0 and type(cfg.optim.momentum) is float  # YAML's int 0, as a float
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


# --- One validation pass, driven by the fields' types (issue 14) ---------------------------------------------------

@pytest.mark.parametrize("item,shown,allowed", [
    ("optim.lr=-1", "-1.0", "> 0"), ("optim.lr=0", "0.0", "> 0"), ("optim.lr_batch=0", "0", ">= 1"),
    ("optim.momentum=-1", "-1.0", "in [0, 1)"), ("optim.momentum=1", "1.0", "in [0, 1)"),
    ("optim.label_smoothing=2", "2.0", "in [0, 1)"), ("optim.weight_decay=-1e-4", "-0.0001", ">= 0"),
    ("train.log_interval=0", "0", ">= 1"), ("train.eval_every=0", "0", ">= 1"), ("train.threads=-3", "-3", ">= 0"),
    ("train.epochs=0", "0", ">= 1"), ("train.ema=1", "1.0", "in [0, 1)"), ("data.random_erasing=5", "5.0", "in [0, 1]"),
    ("data.batch_size=0", "0", ">= 1"), ("data.resize_multiple=0", "0", ">= 1"), ("data.lighting=-0.1", "-0.1", ">= 0"),
    ("data.std=[0.2, 0]", "0.0", "> 0"), ("data.mean=[0.5, 2, 0.5]", "2.0", "in [0, 1]"),
    ("schedule.gamma=0", "0.0", "in (0, 1]"), ("schedule.milestones=[30, -1]", "-1.0", ">= 0"),
    ("schedule.final_factor=1.5", "1.5", "in [0, 1]"), ("optim.lr=.nan", "nan", "finite and > 0"),
    ("optim.lr=.inf", "inf", "finite and > 0"),
])
def test_out_of_range_value_names_key_value_and_range(item, shown, allowed):
    key = item.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    msg = str(e.value)
    assert f"config key '{key}': {shown}" in msg and msg.endswith(allowed) and item in msg, msg


def _numeric_fields():
    import dataclasses
    import typing

    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(type(getattr(Config(), section.name)))
        for f in dataclasses.fields(type(getattr(Config(), section.name))):
            if hints[f.name] in (int, float, list[int], list[float]):
                yield f"{section.name}.{f.name}"


@pytest.mark.parametrize("key", list(_numeric_fields()))
def test_every_number_is_range_checked(key):
    """Every numeric field, including ones added later without a RANGES entry, refuses a negative value."""
    value = "[-1, -1, -1]" if key in ("data.mean", "data.std") else "-1"
    with pytest.raises(ConfigError, match=rf"config key '{key}': -1"):
        load_config(None, [f"{key}={value}"])


def test_choice_fields_carry_their_choices_in_the_type():
    from resnet_repro.config import choices

    assert choices("data", "crop") == ("pad_crop", "none", "inception", "tf_cnn", "paper")
    assert choices("train", "precision") == ("auto", "fp32", "bf16", "fp16")
    for p in ("auto", "fp32", "bf16", "fp16"):
        assert load_config(None, [f"train.precision={p}"]).train.precision == p


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"model\.name': 'resnet51' is not one of") as e:
        load_config(None, ["model.name=resnet51"])
    for known in ("resnet18", "resnet50", "resnet20", "resnet110"):
        assert known in str(e.value)


def test_bad_value_from_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "optim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"optim\.lr': -1\.0") as e:
        load_config(path)
    assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match=r"--set 'optim\.lr=-2'"):  # the override is what is wrong
        load_config(path, ["optim.lr=-2"])


@pytest.mark.parametrize("text,key,lines", [
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.4\n", "optim.lr", "2 and 4"),
    ("optim:\n  lr: 0.1\ndata:\n  batch_size: 8\noptim:\n  lr: 0.4\n", "optim", "1 and 5"),
])
def test_duplicate_yaml_keys_are_an_error(tmp_path, text, key, lines):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"key '{key}' is given twice \(lines {lines}\)") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_yaml_bomb_is_refused_without_expanding_it(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")]
    with pytest.raises(ConfigError, match="section 'a' must be a mapping"):
        load_config(write(tmp_path, "\n".join(lines) + "\n"))


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder") as e:
        load_config(tmp_path)
    assert str(tmp_path) in str(e.value)
