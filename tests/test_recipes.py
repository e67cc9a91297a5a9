"""Every recipe in configs/ loads and trains a few steps on data the test makes; recipe values that the papers
fix are checked against the schedule and loader functions that will apply them."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, write_image_dataset
from resnet_repro.recipe import load_config
from resnet_repro.data.shards import records
from resnet_repro.schedule import lr_factor, schedule_position, train_image_size

RECIPES = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").glob("*/*.yaml"))


def rgb_dataset(root: Path, splits: dict[str, int], size: tuple[int, int] | None, ext: str, classes: int = 4) -> Path:
    """RGB images in `classes` colour classes: fixed `size` (h, w) as PNG, or ImageNet-like varying sizes as JPEG."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    entries = {}
    for k, (split, n) in enumerate(splits.items()):
        samples = []
        for i in range(n):
            h, w = size or (int(rng.integers(36, 60)), int(rng.integers(36, 60)))
            label = i % classes
            img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            img[..., label % 3] += 150
            ok, buf = cv2.imencode(f".{ext}", img)
            assert ok
            samples.append(records.Sample(f"{split}_{i:04d}", buf.tobytes(), ext, label))
        entries[split] = records.write_split(root, split, samples, 1, k)
    height, width = size or (0, 0)  # 0: no single stored size (the ImageNet layout)
    records.write_manifest(root, {"format": records.FORMAT, "dataset": f"made-{ext}",
                                  "classes": [str(c) for c in range(classes)],
                                  "image": {"height": height, "width": width, "channels": 3},
                                  "encoding": {"ext": ext, "lossless": ext == "png"}, "splits": entries})
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    base = tmp_path_factory.mktemp("recipe-data")
    return {
        "imagenet": rgb_dataset(base / "imagenet", {"train": 8, "val": 4}, None, "jpg"),
        # As prepare writes them: ImageNet's two splits, and train / held-out val / official test for the others.
        "cifar10": rgb_dataset(base / "cifar10", {"train": 8, "val": 4, "test": 4}, (32, 32), "png"),
        "fashion_mnist": write_image_dataset(base / "fashion_mnist", {"train": 8, "val": 4, "test": 4}, size=28),
    }


# Small enough for a 2-core CPU: 2 optimizer steps of batch 4, one BN batch, tiny ImageNet crops.
COMMON = ["data.workers=0", "data.batch_size=4", "data.eval_batch_size=4", "train.max_steps=2", "train.precise_bn_batches=0",
          "train.checkpoint_interval_min=0", "train.log_interval=1",
          "train.device=cpu", "train.precision=fp32", "train.profile=cpu"]  # the same run on any host
IMAGENET = ["data.image_size=32", "data.val_resize=36", "data.val_size=32"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_a_few_steps(recipe, made, tmp_path, monkeypatch):
    family = recipe.split("/")[0]
    overrides = [f"data.path={made[family]}", *COMMON]
    saved = []
    if family == "imagenet":
        overrides += IMAGENET
        # ImageNet nets checkpoint 0.1-0.7 GB each time; writing (and fsyncing) that is checkpoint.py's business,
        # tested elsewhere, and would dominate this test. Record what would be saved instead.
        from resnet_repro import checkpoint, export

        monkeypatch.setattr(checkpoint, "save", lambda *a, **k: saved.append(a[1]))
        monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: saved.append(a[1]))
        monkeypatch.setattr(export, "save_safetensors", lambda *a, **k: None)
        if load_config(REPO / "configs" / recipe).data.image_size_start:
            overrides += ["data.image_size_start=24", "data.resize_multiple=8"]
    cfg = load_config(REPO / "configs" / recipe, overrides)
    from resnet_repro.training.loop import train

    result = train(cfg, tmp_path / "run")
    assert result["model"] == load_config(REPO / "configs" / recipe, overrides).model.name
    assert result["steps"] == 2 and 0 <= result["top1_err"] <= 100
    assert result["headline"]["split"] == ("val" if family == "imagenet" else "test")  # test scored at the end
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["train_loss"])
    assert all("model" in state for state in saved) and len(saved) == (2 if family == "imagenet" else 0)


def test_every_recipe_loads_without_overrides():
    for recipe in RECIPES:
        # raises ConfigError naming the key on any unknown/invalid value; a recipe with profiles, in each of them
        for profile in ("cpu", "cpu_bf16", "cuda"):
            load_config(REPO / "configs" / recipe, profile=profile)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_seed_recipes_are_the_reference(depth):
    cfg = load_config(REPO / "configs" / "imagenet" / f"resnet{depth}_seed.yaml")
    assert cfg.model.name == f"resnet{depth}" and not cfg.model.stride_in_3x3
    assert cfg.data.batch_size * 4 == cfg.optim.lr_batch == 256  # 4 devices x 64 = the seed's global batch
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.nesterov) == (0.1, 0.9, 1e-4, False)
    # Seed note 1: the paper's scale augmentation, tf_cnn_benchmarks' colour; note 7: no mean subtraction.
    assert (cfg.data.crop, cfg.data.color, cfg.data.normalize, cfg.data.flip) == ("paper", "tf_cnn", "scale", True)
    assert (cfg.data.image_size, cfg.data.lighting) == (224, 0.0)
    assert (cfg.data.val_resize, cfg.data.val_size, cfg.train.precise_bn_batches, cfg.train.epochs) == (256, 224, 25, 120)
    # What the seed leaves open, stated: bilinear eval resize, BN epsilon 1e-5, He init, decay on every parameter.
    assert (cfg.data.val_interpolation, cfg.model.bn_eps, cfg.model.init, cfg.optim.no_wd_bn_bias) == (
        "bilinear", 1e-5, "he", False)
    factors = [lr_factor(cfg.schedule, e, 120) for e in (0, 29.99, 30, 59.99, 60, 90, 119.99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_recipes_follow_table6(depth):
    cfg = load_config(REPO / "configs" / "cifar10" / f"resnet{depth}.yaml")
    assert cfg.model.name == f"resnet{depth}"
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.lr_batch, cfg.optim.weight_decay) == (128, 0.1, 128, 1e-4)
    assert cfg.train.max_steps == 64000 and (cfg.data.crop, cfg.data.pad, cfg.data.flip) == ("pad_crop", 4, True)
    spe = 45000 // 128

    def lr_at(step):
        return 0.1 * lr_factor(cfg.schedule, *schedule_position(cfg.schedule, step // spe, step % spe, spe, 64000))

    warm = 0.01 if depth == 110 else 0.1  # the paper warms ResNet-110 up at 0.01 for ~400 iterations
    assert [lr_at(s) for s in (0, 399, 400, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [warm, warm, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_fast_recipe_follows_ffcv():
    cfg = load_config(REPO / "configs" / "imagenet" / "resnet50_fast.yaml")
    sizes = [train_image_size(cfg.data, e, 0) for e in range(cfg.train.epochs)]
    assert sizes[:30] == [160] * 30 and sizes[34:] == [192] * 6 and set(sizes) == {160, 192}
    assert cfg.optim.label_smoothing == 0.1 and cfg.optim.no_wd_bn_bias
    assert cfg.data.val_size > cfg.data.image_size  # tested at a higher resolution than trained
    peak = [lr_factor(cfg.schedule, e, cfg.train.epochs) for e in (0, 1, 2, 21, 40)]
    assert peak == pytest.approx([1e-4, 0.50005, 1.0, 0.5, 0.0])
