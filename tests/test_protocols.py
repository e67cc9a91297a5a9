"""Test protocols (evaluate.py) on hand-made models whose scores can be worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from resnet_repro.config import DataConfig
from resnet_repro.data.augment.device import DeviceTransform
from resnet_repro.data.augment.geometry import EvalGeometry
from resnet_repro.data.loading.loader import BatchDataset, DevicePrefetcher, Job, eval_batch_indices, make_loader
from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.staging import encode_png
from resnet_repro.evaluate import (PAPER_SCALES, Protocol, evaluate, evaluate_protocols, five_crops, format_table,
                                   make_protocol, score_images)
from resnet_repro.models.resnet import build_model

CPU = torch.device("cpu")


def scale_transform(channels=1):
    # normalize "scale": the model sees pixel / 255, so hand-made models read pixel values directly.
    return DeviceTransform(DataConfig(normalize="scale", mean=[0.0] * channels, std=[1.0] * channels), channels, CPU,
                           channels_last=False)


def softmax(v):
    e = np.exp(np.asarray(v, np.float64) - np.max(v))
    return e / e.sum()


class TopRow(nn.Module):
    """Logits = 8 x the first row of the view (one class per column): which crop it saw is visible in the scores."""

    def forward(self, x):
        return 8 * x[:, 0, 0, :]


class SizeAndLeftEdge(nn.Module):
    """Logits = [height / 4, width / 4, 3 x mean of the left-most column]: the view's size and its mirroring."""

    def forward(self, x):
        n, _, h, w = x.shape
        size = torch.tensor([h / 4, w / 4], dtype=x.dtype).expand(n, 2)
        return torch.cat([size, 3 * x[:, 0, :, 0].mean(dim=1, keepdim=True)], dim=1)


def test_five_crops_are_the_corners_and_the_centre():
    img = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8, 1)
    tl, tr, bl, br, c = five_crops(img, 4)
    np.testing.assert_array_equal(tl, img[0:4, 0:4])
    np.testing.assert_array_equal(tr, img[0:4, 4:8])
    np.testing.assert_array_equal(bl, img[2:6, 0:4])
    np.testing.assert_array_equal(br, img[2:6, 4:8])
    np.testing.assert_array_equal(c, img[1:5, 2:6])
    with pytest.raises(ValueError, match="smaller than the crop"):
        five_crops(img, 7)


def test_ten_crop_averages_softmax_over_five_crops_and_their_mirrors():
    small = (10 * np.arange(6)[:, None] + 3 * np.arange(8)[None, :]).astype(np.uint8)  # 6x8, all values distinct
    # Stored at twice the size: shrinking back to shorter side 6 is an exact 2x2 block average (cv2 INTER_AREA),
    # so the resized image is `small` again and the crops can be written down by hand.
    img = np.repeat(np.repeat(small, 2, 0), 2, 1)[:, :, None]
    protocol = Protocol("10crop", resize=6, crop=4)
    (probs,) = score_images(TopRow(), [img], [protocol], scale_transform(), CPU)
    # Top rows of the five crops of the 6x8 image: top-left, top-right, bottom-left, bottom-right, centre.
    rows = [small[0, 0:4], small[0, 4:8], small[2, 0:4], small[2, 4:8], small[1, 2:6]]
    rows += [r[::-1] for r in rows]  # the mirrored crops' top rows run backwards
    expected = np.mean([softmax(8 * r / 255.0) for r in rows], axis=0)
    assert protocol.views_per_image == 10
    np.testing.assert_allclose(probs[0].numpy(), expected, rtol=1e-5)


def test_ten_crop_of_a_pad_crop_net_crops_the_zero_padded_image():
    img = (1 + 10 * np.arange(4)[:, None] + 3 * np.arange(4)[None, :]).astype(np.uint8)[:, :, None]  # 4x4
    protocol = make_protocol("10crop", DataConfig(crop="pad_crop", pad=1), 4)  # trained with pad-1 crops of 4
    assert protocol == Protocol("10crop", 0, 4, (), 1)
    (probs,) = score_images(TopRow(), [img], [protocol], scale_transform(), CPU)
    padded = np.pad(img[:, :, 0], 1)  # 6x6: crops of 4 at (0,0), (0,2), (2,0), (2,2) and the centre (1,1)
    rows = [padded[0, 0:4], padded[0, 2:6], padded[2, 0:4], padded[2, 2:6], padded[1, 1:5]]
    rows += [r[::-1] for r in rows]
    expected = np.mean([softmax(8 * r / 255.0) for r in rows], axis=0)
    np.testing.assert_allclose(probs[0].numpy(), expected, rtol=1e-5)
    assert "of the 1-px zero-padded image" in protocol.describe()


def test_single_and_flip_protocols():
    small = (10 * np.arange(6)[:, None] + 3 * np.arange(8)[None, :]).astype(np.uint8)
    img = small[:, :, None]
    single, flip = Protocol("single", 0, 4), Protocol("flip", 0, 4)
    p_single, p_flip = score_images(TopRow(), [img, img], [single, flip], scale_transform(), CPU)
    centre = small[1, 2:6]
    np.testing.assert_allclose(p_single[1].numpy(), softmax(8 * centre / 255.0), rtol=1e-5)
    np.testing.assert_allclose(p_flip[0].numpy(),
                               (softmax(8 * centre / 255.0) + softmax(8 * centre[::-1] / 255.0)) / 2, rtol=1e-5)


def test_multiscale_runs_whole_images_at_each_scale_and_mirrors_them():
    img = np.zeros((20, 30, 1), np.uint8)
    img[:, 15:] = 255  # dark left half, bright right half: only a mirrored view has a bright left edge
    protocol = Protocol("multiscale", resize=0, crop=0, scales=(8, 10, 16))
    (probs,) = score_images(SizeAndLeftEdge(), [img, img], [protocol], scale_transform(), CPU)
    # Shorter side 20 -> s keeps the aspect 3:2, so the whole image is s x 1.5s: 8x12, 10x15, 16x24.
    expected = np.mean([softmax([h / 4, w / 4, 3 * edge]) for h, w in ((8, 12), (10, 15), (16, 24))
                        for edge in (0.0, 1.0)], axis=0)
    assert protocol.views_per_image == 6
    np.testing.assert_allclose(probs.numpy(), np.stack([expected, expected]), rtol=1e-5)


class ShapeRecorder(nn.Module):
    """Appends the shape of every forward pass's input to `seen`; scores every view 0."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return torch.zeros(len(x), 2)


def test_multiscale_groups_views_of_different_images_by_size():
    seen = []
    wide, tall = np.zeros((20, 30, 1), np.uint8), np.zeros((30, 20, 1), np.uint8)
    score_images(ShapeRecorder(seen), [wide, tall, wide], [Protocol("multiscale", 0, 0, (10,))], scale_transform(), CPU)
    # One pass per distinct size, mirrors in the same pass: 2 wide images x 2, then 1 tall image x 2.
    assert sorted(seen) == [(2, 1, 15, 10), (4, 1, 10, 15)]


def test_larger_views_go_through_in_smaller_passes():
    seen = []
    imgs = [np.zeros((20, 30, 1), np.uint8)] * 3
    # max_views 8 of the 10x10 crop size: 10x15 views get 8 x 100/150 -> 5 views a pass, i.e. 2 images + their
    # mirrors; 20x30 views get 8 x 100/600 -> 1 view, i.e. 1 image + mirror (never fewer).
    score_images(ShapeRecorder(seen), imgs, [Protocol("multiscale", 0, 10, (10, 20))], scale_transform(), CPU, max_views=8)
    assert seen == [(4, 1, 10, 15), (2, 1, 10, 15), (2, 1, 20, 30), (2, 1, 20, 30), (2, 1, 20, 30)]


def test_fully_convolutional_scores_equal_the_forward_pass():
    # Why multiscale can run the net unchanged: the classifier applied at every position of the last feature
    # map and averaged over space gives the same scores as global average pooling followed by the classifier.
    torch.manual_seed(0)
    model = build_model("resnet20", 5, 1).eval()
    x = torch.randn(2, 1, 40, 56)
    with torch.no_grad():
        features = model.stages(model.stem(x))
        score_map = torch.einsum("bchw,kc->bkhw", features, model.fc.weight) + model.fc.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(score_map.mean(dim=(2, 3)), model(x), rtol=1e-4, atol=1e-5)


def test_protocol_sizes_follow_the_run_and_the_paper():
    imagenet = DataConfig(val_resize=256, val_size=224)
    assert make_protocol("10crop", imagenet, None) == Protocol("10crop", 256, 224)
    assert make_protocol("multiscale", imagenet, None).scales == PAPER_SCALES
    # Images of varying size and no val sizes in the config: the per-epoch val pass's 256 -> 224.
    assert make_protocol("single", DataConfig(val_resize=0, val_size=0), None) == Protocol("single", 256, 224)
    small = DataConfig()  # Fashion-MNIST: keep the stored 28x28
    assert make_protocol("single", small, 28) == Protocol("single", 0, 28)
    assert make_protocol("multiscale", small, 28).scales == (28, 32, 48, 60, 80)
    assert make_protocol("10crop", small, 28, resize=32).describe() == "shorter side 32, 4 corner + centre crops 28, + mirrors"
    with pytest.raises(ValueError, match="unknown protocol"):
        Protocol("12crop", 0, 28)


def test_protocols_use_the_runs_eval_filter():
    """`evaluate --protocol single` must reproduce the per-epoch val pass, so it resizes with data.val_interpolation."""
    from resnet_repro.data.augment.geometry import EvalGeometry
    from resnet_repro.data.sources.synthetic import photo_like_image

    img = photo_like_image(np.random.default_rng(0), 300, 260)
    outs = {}
    for interp in ("bilinear", "area", "tf1_bilinear"):
        cfg = DataConfig(val_resize=128, val_size=112, val_interpolation=interp)
        protocol = make_protocol("single", cfg, None)
        assert protocol.interpolation == interp
        outs[interp] = protocol.views(img)[0]
        np.testing.assert_array_equal(outs[interp], EvalGeometry(cfg, 0)(img))
        assert make_protocol("10crop", cfg, None).views(img)[4].shape == (112, 112, 3)
    assert np.abs(outs["bilinear"].astype(int) - outs["area"]).mean() > 0.5  # the filters differ


# --- On prepared records -----------------------------------------------------------------------------------

class PixelClassifier(nn.Module):
    """Predicts class c when the image's mean pixel value is 20 c (images of label c are made that way)."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3)) * 255
        return -(mean.view(-1, 1) - 20 * torch.arange(5.0).view(1, -1)).abs()


def make_records(root, n=24, wrong_every=4):
    samples = []
    for i in range(n):
        label = i % 5
        shown = (label + 1) % 5 if i % wrong_every == 0 else label  # every 4th image shows another class
        img = np.full((12, 12), 20 * shown, np.uint8)
        samples.append(records.Sample(f"s{i:03d}", encode_png(img), "png", label))
    split = records.write_split(root, "val", samples, 3, 0)
    records.write_manifest(root, {"format": records.FORMAT, "dataset": "made", "classes": [str(c) for c in range(5)],
                                  "image": {"height": 12, "width": 12, "channels": 1}, "splits": {"val": split}})
    return RecordReader(root, "val")


@pytest.mark.parametrize("workers", [0, 1])
def test_evaluate_protocols_counts_every_sample_once(tmp_path, workers):
    reader = make_records(tmp_path)
    protocols = [make_protocol(p, DataConfig(), 12, crop=8) for p in ("single", "flip", "10crop", "multiscale")]
    results = evaluate_protocols(PixelClassifier(), reader, protocols, scale_transform(), CPU, batch_size=32,
                                 workers=workers)
    assert [r["protocol"] for r in results] == ["single", "flip", "10crop", "multiscale"]
    for r in results:
        assert r["count"] == 24
        assert r["top1_correct"] == 18  # 6 of 24 images (i = 0, 4, ..., 20) show the wrong class
        assert r["top1_err"] == pytest.approx(25.0)
    table = format_table(results)
    assert "10crop" in table and "25.00" in table
    # 5 classes: top-5 holds every label, so the table says so instead of printing 0.00.
    assert all(r["classes"] == 5 for r in results) and "n/a (5 classes)" in table and "0.00" not in table
    json.dumps(results)


def test_single_protocol_matches_the_training_loops_val_pass(tmp_path):
    reader = make_records(tmp_path, n=40, wrong_every=3)
    torch.manual_seed(0)
    model = build_model("resnet20", 5, 1).eval()
    cfg = DataConfig(normalize="scale", mean=[0.0], std=[1.0], val_size=10, val_resize=11)
    transform = DeviceTransform(cfg, 1, CPU)
    ds = BatchDataset(reader, EvalGeometry(cfg, 12), 1, 0, train=False)
    jobs = [Job(0, s, idx) for s, idx in enumerate(eval_batch_indices(len(reader), 16))]
    old = evaluate(model, DevicePrefetcher(make_loader(ds, jobs, 0, False), CPU, transform), CPU)
    (new,) = evaluate_protocols(model, reader, [make_protocol("single", cfg, 12)], transform, CPU, batch_size=16,
                                workers=0)
    assert new["top1_correct"] == old["top1_correct"] and new["top5_correct"] == old["top5_correct"]
    assert new["loss"] == pytest.approx(old["loss"], rel=1e-4)


# --- The command line ------------------------------------------------------------------------------------

def test_evaluate_cli_table_json_and_out(cli, tmp_path, texture_data):
    from test_export import fake_run_checkpoint

    ck = fake_run_checkpoint(tmp_path / "final.pt", texture_data)
    code, out, err = cli("evaluate", "--checkpoint", ck, "--protocol", "single", "--protocol", "10crop", "--resize",
                         "18", "--crop", "16", "--workers", "0", "--out", tmp_path / "evaluation.json")
    assert code == 0, err
    header, single, tencrop = out.splitlines()[1:4]
    assert header.split()[:3] == ["protocol", "views", "top-1"]
    assert single.split()[:2] == ["single", "1"] and tencrop.split()[:2] == ["10crop", "10"]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert [r["count"] for r in saved["results"]] == [64, 64]
    code, out, err = cli("evaluate", "--checkpoint", ck, "--json", "--workers", "0")
    assert code == 0 and json.loads(out)["results"][0]["protocol"] == "single"  # the default protocol
    code, out, err = cli("evaluate", "--checkpoint", ck, "--protocol", "10crop", "--crop", "20", "--workers", "0")
    assert code == 2 and "--crop 20 is larger than the stored 16x16 images" in err  # before any image is read


def test_an_image_a_protocol_cannot_cut_is_named():
    """Where only the image can tell (a data set of mixed sizes), the error names its shard and key."""
    from resnet_repro.evaluate import group_views

    protocol = make_protocol("single", DataConfig(), 0, resize=0, crop=20)
    images = [np.zeros((24, 24, 3), np.uint8), np.zeros((16, 30, 3), np.uint8)]
    with pytest.raises(ValueError, match="shard val-00000.tar key b: protocol single: image 16x30 is smaller"):
        group_views(images, [protocol], ["shard val-00000.tar key a", "shard val-00000.tar key b"])
    ((_, views, owners),) = group_views(images[:1], [protocol], ["a"])
    assert views.shape == (1, 20, 20, 3) and list(owners) == [0]


def test_evaluate_cli_with_torchvision_weights(cli, tmp_path):
    from test_torchvision_weights import torchvision_forward, torchvision_state_dict

    # Four classes of 3-channel 40x40 images; torchvision-layout ResNet-18 weights with a 4-way classifier.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    labels = [0, 1, 2, 3, 0, 1]
    samples = [records.Sample(f"s{i}", encode_png(img[:, :, ::-1]), "png", lab)  # PNG holds BGR for OpenCV
               for i, (img, lab) in enumerate(zip(images, labels))]
    data = tmp_path / "data"
    data.mkdir()
    split = records.write_split(data, "val", samples, 1, 0)
    records.write_manifest(data, {"format": records.FORMAT, "dataset": "made", "classes": ["a", "b", "c", "d"],
                                  "image": {"height": 40, "width": 40, "channels": 3}, "splits": {"val": split}})
    tv = torchvision_state_dict("resnet18", num_classes=4, seed=5)
    torch.save(tv, tmp_path / "tv.pth")
    code, out, err = cli("evaluate", "--torchvision-weights", tmp_path / "tv.pth", "--model", "resnet18", "--data",
                         data, "--resize", "40", "--crop", "32", "--workers", "0", "--json")
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    # By hand: centre 32x32 crop, torchvision's ImageNet mean/std, torchvision's forward.
    x = torch.from_numpy(images[:, 4:36, 4:36].astype(np.float32) / 255).permute(0, 3, 1, 2)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = int((torchvision_forward(tv, x, "resnet18").argmax(1) == torch.tensor(labels)).sum())
    assert result["top1_correct"] == want and result["count"] == 6
    code, out, err = cli("evaluate", "--torchvision-weights", tmp_path / "tv.pth", "--data", data)
    assert code == 2 and "needs --model" in err


def test_evaluate_under_torchrun_counts_each_image_once(tmp_path, texture_data):
    import os
    import subprocess
    import sys

    from test_export import fake_run_checkpoint

    ck = fake_run_checkpoint(tmp_path / "final.pt", texture_data)
    args = ["evaluate", "--checkpoint", str(ck), "--protocol", "flip", "--protocol", "multiscale", "--workers", "0",
            "--batch-size", "24", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "resnet_repro", *args, "--out", str(tmp_path / "two.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    from resnet_repro.cli import main

    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["world_size"] == 2
    for a, b in zip(one["results"], two["results"]):
        assert b["count"] == 64 and (a["top1_correct"], a["top5_correct"]) == (b["top1_correct"], b["top5_correct"])
