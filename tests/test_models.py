"""ResNet v1 against the paper: parameter counts, multiply-adds, strides, shortcuts, init, shapes.

Counts that only depend on the architecture are taken on the "meta" device (shapes, no memory, no arithmetic),
so ResNet-101/152 cost a fraction of a second; real CPU forwards check the small nets and output shapes.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from resnet_repro.models.resnet import BasicBlock, Bottleneck, PadShortcut, build_model, count_macs, model_names

# Parameter counts with a 1000-class head: torchvision / Caffe ResNet v1 (the stride position does not change them).
IMAGENET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                   "resnet101": 44_549_160, "resnet152": 60_192_808}
# Paper Table 1 "FLOPs" (multiply-adds) at 224x224, in units of 1e9.
IMAGENET_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}
# Paper Table 6 (CIFAR-10, 10 classes), millions of parameters, written as the paper writes them.
CIFAR_MPARAMS = {"resnet20": "0.27", "resnet32": "0.46", "resnet44": "0.66", "resnet56": "0.85", "resnet110": "1.7",
                 "resnet1202": "19.4"}


def meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", IMAGENET_PARAMS)
def test_imagenet_parameters_and_macs(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=1000)
        macs, shape = count_macs(model, 224)
    assert n_params(model) == IMAGENET_PARAMS[name]
    assert macs / 1e9 == pytest.approx(IMAGENET_GMACS[name], rel=0.05)
    assert shape == (1, 1000)


@pytest.mark.parametrize("name", CIFAR_MPARAMS)
def test_cifar_parameters_match_paper_table6(name):
    params = n_params(meta_model(name, num_classes=10))
    decimals = len(CIFAR_MPARAMS[name].split(".")[1])
    assert f"{params / 1e6:.{decimals}f}" == CIFAR_MPARAMS[name]


def test_count_macs_on_a_real_forward_matches_meta():
    real = build_model("resnet18")
    with torch.device("meta"):
        on_meta = count_macs(build_model("resnet18"), 224)
    assert count_macs(real, 224) == on_meta
    # Hand count for a 3x3 conv 1->2 channels at 4x4 (padding 1): 2*4*4 outputs x 9 taps, plus an FC 2 -> 3.
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(2, 3))
    assert count_macs(net, 4, in_channels=1) == (2 * 4 * 4 * 9 + 2 * 3, (1, 3))


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_cifar_nets_are_6n_plus_2_weighted_layers_with_parameter_free_shortcuts(depth):
    model = meta_model(f"resnet{depth}", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(fcs) == depth
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(pads) == 2  # option A where the width doubles: entering stage 2 and stage 3
    assert all(not list(p.parameters()) for p in pads)


@pytest.mark.parametrize("name,depth,projections", [("resnet18", 18, 3), ("resnet50", 50, 4), ("resnet152", 152, 4)])
def test_imagenet_depth_counts_main_path_layers(name, depth, projections):
    model = meta_model(name)
    shortcut_convs = {id(m) for b in model.modules() if isinstance(b, (BasicBlock, Bottleneck))
                      for m in b.shortcut.modules() if isinstance(m, nn.Conv2d)}
    main = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcut_convs]
    assert len(main) == depth
    # Option B: a projection only where the shape changes: entering stages 2-4, and for bottleneck nets also
    # entering stage 1 (64 -> 256 channels).
    assert len(shortcut_convs) == projections


def test_bottleneck_stride_is_in_first_1x1_for_v1_and_in_3x3_for_v1_5():
    for stage in (1, 2, 3):
        v1 = meta_model("resnet50").stages[stage][0]
        v15 = meta_model("resnet50", stride_in_3x3=True).stages[stage][0]
        assert (v1.conv1.kernel_size, v1.conv1.stride, v1.conv2.stride) == ((1, 1), (2, 2), (1, 1))
        assert (v15.conv1.stride, v15.conv2.kernel_size, v15.conv2.stride) == ((1, 1), (3, 3), (2, 2))
        assert v1.shortcut[0].stride == v15.shortcut[0].stride == (2, 2)
    # Same shapes and parameters; v1.5 does its 3x3 at full resolution, so it costs more (about 4.1 G).
    with torch.device("meta"):
        m1, s1 = count_macs(build_model("resnet50"), 224)
        m15, s15 = count_macs(build_model("resnet50", stride_in_3x3=True), 224)
    assert s1 == s15 and m15 / 1e9 == pytest.approx(4.1, rel=0.02) and m15 > m1
    assert n_params(meta_model("resnet50", stride_in_3x3=True)) == IMAGENET_PARAMS["resnet50"]


def test_zero_init_residual_zeroes_only_each_blocks_last_bn_gamma():
    for name, last in (("resnet20", "bn2"), ("resnet50", "bn3")):
        model = build_model(name, num_classes=10, zero_init_residual=True)
        blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
        assert blocks
        zeroed = {id(getattr(b, last)) for b in blocks}
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 0) if id(m) in zeroed else torch.all(m.weight == 1)
        plain = build_model(name, num_classes=10)
        assert all(torch.all(m.weight == 1) for m in plain.modules() if isinstance(m, nn.BatchNorm2d))


def test_zero_init_block_is_identity_on_nonnegative_input():
    # With the last BN gamma (and beta) at zero the residual branch adds nothing: out = relu(x + 0) = x for x >= 0.
    model = build_model("resnet20", num_classes=10, zero_init_residual=True).eval()
    block = model.stages[0][1]
    x = torch.rand(2, 16, 8, 8)
    torch.testing.assert_close(block(x), x)


def test_he_fan_out_init():
    conv = build_model("resnet20", num_classes=10).stages[2][0].conv2  # 64 -> 64, 3x3
    expected_std = (2 / (64 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_tf_cnn_init_is_variance_scaling_fan_in_and_truncated_normal_fc():
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000, init="tf_cnn")
    conv = model.stages[3][0].conv2  # 512 -> 512, 3x3: fan_in 4608
    w = conv.weight.detach()
    # tf.variance_scaling_initializer(): truncated normal whose std after truncation is sqrt(1 / fan_in)
    assert w.std().item() == pytest.approx((1 / 4608) ** 0.5, rel=0.02)
    assert w.abs().max().item() <= 2 * (1 / 4608) ** 0.5 / 0.87962566 + 1e-7  # cut at 2 std of the normal
    fc = model.fc  # truncated normal, std sqrt(1 / fan_in) before truncation; zero bias
    assert fc.weight.abs().max().item() <= 2 * (1 / 2048) ** 0.5 + 1e-7
    assert fc.weight.std().item() == pytest.approx(0.8796 * (1 / 2048) ** 0.5, rel=0.02)
    assert torch.count_nonzero(fc.bias) == 0
    he = build_model("resnet50", num_classes=1000)  # default: He fan-out, PyTorch's fc
    assert he.stages[3][0].conv2.weight.std().item() == pytest.approx((2 / 4608) ** 0.5, rel=0.02)
    assert torch.count_nonzero(he.fc.bias) > 0


def test_bn_eps_reaches_every_batch_norm_and_bad_values_are_errors():
    model = build_model("resnet18", num_classes=10, bn_eps=1e-3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20 and all(m.eps == 1e-3 for m in bns)
    assert all(m.eps == 1e-5 for m in build_model("resnet18").modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match=r"model\.bn_eps"):
        build_model("resnet18", bn_eps=0.0)
    with pytest.raises(ValueError, match=r"model\.init"):
        build_model("resnet18", init="xavier")


@pytest.mark.parametrize("name,size,in_channels,classes", [
    ("resnet20", 32, 3, 10), ("resnet20", 28, 1, 10), ("resnet32", 16, 1, 4), ("resnet18", 64, 1, 1000),
    ("resnet50", 64, 3, 7)])
def test_output_shapes_and_grayscale_input(name, size, in_channels, classes):
    model = build_model(name, num_classes=classes, in_channels=in_channels).eval()
    assert model.stem[0].in_channels == in_channels
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_channels_last_forward_matches_contiguous():
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def cifar_params(n: int, k: int, in_channels: int = 3, classes: int = 10) -> int:
    """Parameters of a 6n+2 CIFAR net with every width times k, counted by hand: 3x3 convs (no bias) with their
    BN's two vectors each, parameter-free option-A shortcuts, an FC with bias."""
    widths = [16 * k, 32 * k, 64 * k]
    total, prev = in_channels * widths[0] * 9 + 2 * widths[0], widths[0]
    for c in widths:
        for _ in range(n):
            total += prev * c * 9 + 2 * c + c * c * 9 + 2 * c
            prev = c
    return total + widths[-1] * classes + classes


@pytest.mark.parametrize("k", [1, 2, 3])
def test_model_width_multiplies_every_width_of_a_cifar_net(k):
    assert cifar_params(3, 1) == 269_722  # the paper's ResNet-20 (Table 6: 0.27 M), so the hand count is right
    model = meta_model("resnet20", num_classes=10, width=k)
    assert n_params(model) == cifar_params(3, k)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sorted({m.out_channels for m in convs}) == [16 * k, 32 * k, 64 * k]
    assert len([m for m in model.modules() if isinstance(m, PadShortcut)]) == 2  # the stem widens too: stage 1
    with torch.device("meta"):
        macs, base = count_macs(model, 32)[0], count_macs(build_model("resnet20", num_classes=10), 32)[0]
    assert macs == pytest.approx(k * k * base, rel=0.01)  # about k^2 the multiply-adds (the FC grows as k)
    real = build_model("resnet20", num_classes=10, in_channels=1, width=k)
    assert real(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_model_width_is_for_cifar_nets_only(cli):
    with pytest.raises(ValueError, match="CIFAR nets only"):
        build_model("resnet50", width=2)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="whole factor"):
            build_model("resnet20", width=bad)
    code, out, _ = cli("model", "resnet20", "--width", "2", "--in-channels", "1", "--input-size", "28")
    assert code == 0 and f"resnet20 x2 wide: {cifar_params(3, 2, in_channels=1):,} parameters" in out
    code, _, err = cli("model", "resnet50", "--width", "2")
    assert code == 2 and "--width 2" in err and "CIFAR" in err


def test_unknown_model_name_is_an_error():
    assert "resnet50" in model_names() and "resnet1202" in model_names()
    with pytest.raises(ValueError, match="resnet51"):
        build_model("resnet51")


def test_cli_model_json(cli):
    code, out, _ = cli("model", "resnet50", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model"] == "resnet50"
    assert info["parameters"] == IMAGENET_PARAMS["resnet50"]
    assert info["macs"] / 1e9 == pytest.approx(3.8, rel=0.05)
    assert info["input"] == [1, 3, 224, 224] and info["output"] == [1, 1000]


def test_cli_model_text_and_unknown_name(cli):
    code, out, _ = cli("model", "resnet20", "--in-channels", "1", "--input-size", "28")
    # 269,722 (Table 6, 3-channel input) less the stem conv's two missing input channels: 16 x 2 x 3 x 3 = 288.
    assert code == 0 and "269,434 parameters" in out and "(1, 10)" in out
    code, _, err = cli("model", "resnet21")
    assert code == 2 and "resnet21" in err
