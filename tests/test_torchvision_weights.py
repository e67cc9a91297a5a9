"""torchvision-layout ResNet weights <-> ours, on state dicts built here in torchvision's layout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet_repro.evaluate import read_state_dict
from resnet_repro.models.resnet import build_model
from resnet_repro.models.torchvision_weights import (WeightsError, model_from_torchvision, ours_to_torchvision,
                                                     torchvision_to_ours)

# torchvision.models.resnet: blocks per stage and whether the block is a bottleneck (expansion 4).
TV_ARCH = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True)}


def _bn(sd, name, c, g):
    sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
    sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
    sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
    sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def _conv(sd, name, cout, cin, k, g):
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5


def torchvision_state_dict(arch: str, num_classes: int = 10, seed: int = 0) -> dict:
    """Names and shapes written out the way torchvision's ResNet class registers them, with random values."""
    layers, bottleneck = TV_ARCH[arch]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "conv1", 64, 3, 7, g)
    _bn(sd, "bn1", 64, g)
    cin = 64
    for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        cout = width * (4 if bottleneck else 1)
        for j in range(n):
            p = f"layer{i}.{j}"
            if bottleneck:
                _conv(sd, f"{p}.conv1", width, cin, 1, g)
                _bn(sd, f"{p}.bn1", width, g)
                _conv(sd, f"{p}.conv2", width, width, 3, g)
                _bn(sd, f"{p}.bn2", width, g)
                _conv(sd, f"{p}.conv3", cout, width, 1, g)
                _bn(sd, f"{p}.bn3", cout, g)
            else:
                _conv(sd, f"{p}.conv1", width, cin, 3, g)
                _bn(sd, f"{p}.bn1", width, g)
                _conv(sd, f"{p}.conv2", width, width, 3, g)
                _bn(sd, f"{p}.bn2", width, g)
            if j == 0 and (i > 1 or cin != cout):  # torchvision: stride 2 or a change of width
                _conv(sd, f"{p}.downsample.0", cout, cin, 1, g)
                _bn(sd, f"{p}.downsample.1", cout, g)
            cin = cout
    sd["fc.weight"] = torch.randn(num_classes, cin, generator=g) * 0.01
    sd["fc.bias"] = torch.randn(num_classes, generator=g) * 0.01
    return sd


def torchvision_forward(sd: dict, x: torch.Tensor, arch: str) -> torch.Tensor:
    """torchvision's ResNet forward (v1.5: a bottleneck strides in its 3x3 conv), written with functional ops."""
    layers, bottleneck = TV_ARCH[arch]

    def bn(t, name):
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-5)

    def conv(t, name, stride=1):
        w = sd[f"{name}.weight"]
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    x = F.max_pool2d(F.relu(bn(conv(x, "conv1", 2), "bn1")), 3, 2, 1)
    for i, n in enumerate(layers, start=1):
        for j in range(n):
            p, stride = f"layer{i}.{j}", (2 if i > 1 and j == 0 else 1)
            if bottleneck:
                out = F.relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
                out = F.relu(bn(conv(out, f"{p}.conv2", stride), f"{p}.bn2"))
                out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            else:
                out = F.relu(bn(conv(x, f"{p}.conv1", stride), f"{p}.bn1"))
                out = bn(conv(out, f"{p}.conv2"), f"{p}.bn2")
            short = bn(conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1") \
                if f"{p}.downsample.0.weight" in sd else x
            x = F.relu(out + short)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def test_names_map_both_ways_by_hand():
    tv = {k: torch.zeros(1) for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight",
                                      "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
                                      "layer4.2.bn3.num_batches_tracked", "fc.bias")}
    ours = torchvision_to_ours(tv)
    assert sorted(ours) == sorted(["stem.0.weight", "stem.1.running_var", "stages.0.0.conv1.weight",
                                   "stages.1.0.shortcut.0.weight", "stages.1.0.shortcut.1.bias",
                                   "stages.3.2.bn3.num_batches_tracked", "fc.bias"])
    assert ours_to_torchvision(ours) == tv


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_torchvision_name_maps_to_our_model_and_back(arch):
    tv = torchvision_state_dict(arch)
    ours = torchvision_to_ours(tv)
    model = build_model(arch, 10, 3, stride_in_3x3=True)
    assert sorted(ours) == sorted(model.state_dict())  # the same set of names, nothing left over
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(ours)  # strict
    back = ours_to_torchvision(model.state_dict())
    assert sorted(back) == sorted(tv)
    for k in tv:
        torch.testing.assert_close(back[k], tv[k])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_loaded_model_computes_what_torchvision_computes(arch, tmp_path):
    tv = torchvision_state_dict(arch, seed=1)
    path = tmp_path / f"{arch}.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tv.items()}}, path)  # DDP-wrapped, as the reference saves
    model = model_from_torchvision(read_state_dict(path), arch, str(path)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torchvision_forward(tv, x, arch), rtol=1e-4, atol=1e-4)


def test_v1_strides_would_not_match():
    # The mapping is only right for v1.5 bottlenecks: our original v1 (stride in the first 1x1) differs.
    tv = torchvision_state_dict("resnet50", seed=3)
    v1 = build_model("resnet50", 10, 3, stride_in_3x3=False).eval()
    v1.load_state_dict(torchvision_to_ours(tv))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(v1(x), torchvision_forward(tv, x, "resnet50"), atol=1e-3)


def test_errors_name_the_problem(tmp_path):
    tv = torchvision_state_dict("resnet18")
    with pytest.raises(WeightsError, match="not in the torchvision ResNet layout: features.0.weight"):
        torchvision_to_ours({**tv, "features.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"does not fit resnet34: missing layer1\.2"):
        model_from_torchvision(tv, "resnet34")
    with pytest.raises(WeightsError, match="ImageNet nets only"):
        model_from_torchvision(tv, "resnet20")
    bad = dict(tv)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 1, 1\)"):
        model_from_torchvision(bad, "resnet18")
    with pytest.raises(WeightsError, match="file not found"):
        read_state_dict(tmp_path / "nope.pth")


def test_real_torchvision_layout_when_installed():
    models = pytest.importorskip("torchvision.models")
    for arch in ("resnet18", "resnet50"):
        tv = getattr(models, arch)(weights=None, num_classes=10).state_dict()
        model = model_from_torchvision(tv, arch).eval()
        ref = getattr(models, arch)(weights=None, num_classes=10)
        ref.load_state_dict(tv)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref.eval()(x), rtol=1e-4, atol=1e-4)
