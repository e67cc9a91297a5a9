"""ResNet v1 (He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385).

Two families:

* ImageNet nets (18, 34, 50, 101, 152): a 7x7/2 stem conv, 3x3/2 max pool, four stages, global average
  pool, fully-connected classifier. Original v1 puts the bottleneck's stride-2 on its first 1x1 conv (as in
  the Caffe models and the reference TF reproduction); ``stride_in_3x3=True`` gives the later "v1.5" variant
  (torchvision, NVIDIA) that moves it to the 3x3 conv. Shortcuts are identity where shapes agree and a
  1x1 conv + BN projection where they change (the paper's option B).
* CIFAR nets (6n+2: 20, 32, 44, 56, 110, 1202): three stages of 16/32/64 channels with basic blocks and the
  paper's option-A shortcut, a parameter-free stride-2 subsample plus zero channel padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, shortcut: str = "B", stride_in_3x3: bool = True):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, cout, 3)
        self.shortcut = _make_shortcut(cin, cout, stride, shortcut)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        return [self.bn2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, shortcut: str = "B", stride_in_3x3: bool = False):
        super().__init__()
        cout = width * self.expansion
        s1, s3 = (1, stride) if stride_in_3x3 else (stride, 1)
        self.conv1, self.bn1 = _conv_bn(cin, width, 1, s1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, s3)
        self.conv3, self.bn3 = _conv_bn(width, cout, 1)
        self.shortcut = _make_shortcut(cin, cout, stride, shortcut)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        return [self.bn3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class PadShortcut(nn.Module):
    """The paper's option A: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the padding between both ends of the channel axis, as the widely used CIFAR ports do.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def _make_shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cin, cout, stride)
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


class ResNet(nn.Module):
    def __init__(self, block, layers: list[int], widths: list[int], num_classes: int, in_channels: int,
                 stem: str, shortcut: str, stride_in_3x3: bool):
        super().__init__()
        if stem == "imagenet":
            # 7x7/2 conv then 3x3/2 max pool: 224 -> 56 before the first stage.
            self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 7, 2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
            cin = widths[0]
        else:
            # CIFAR: one 3x3 conv at full resolution.
            self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True))
            cin = widths[0]
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, w, stride, shortcut, stride_in_3x3))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class Spec:
    block: type
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    stem: str
    shortcut: str
    input_size: int  # the resolution the paper reports multiply-adds at


IMAGENET_SPECS = {
    "resnet18": Spec(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), "imagenet", "B", 224),
    "resnet34": Spec(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", "B", 224),
    "resnet50": Spec(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", "B", 224),
    "resnet101": Spec(Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512), "imagenet", "B", 224),
    "resnet152": Spec(Bottleneck, (3, 8, 36, 3), (64, 128, 256, 512), "imagenet", "B", 224),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
SPECS = dict(IMAGENET_SPECS)
for _d in CIFAR_DEPTHS:
    _n = (_d - 2) // 6
    SPECS[f"resnet{_d}"] = Spec(BasicBlock, (_n, _n, _n), (16, 32, 64), "cifar", "A", 32)


def model_names() -> list[str]:
    return list(SPECS)


def wide_names() -> list[str]:
    """The nets `width` (model.width) applies to: the CIFAR ones."""
    return [name for name, spec in SPECS.items() if spec.stem == "cifar"]


def build_model(name: str, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False,
                stride_in_3x3: bool = False, shortcut: str | None = None, bn_eps: float = 1e-5,
                init: str = "he", width: int = 1) -> ResNet:
    """Build a ResNet by name ("resnet50", "resnet20", ...).

    ``stride_in_3x3`` only affects bottleneck nets (basic blocks always stride in their first 3x3).
    ``shortcut`` overrides the family default ("B" projection for ImageNet nets, "A" padding for CIFAR).
    ``bn_eps``: every BatchNorm's epsilon (model.bn_eps). ``init``: "he" or "tf_cnn" (model.init, config.py).
    ``width``: CIFAR nets only, every width (stem included) times this factor (model.width).
    """
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SPECS)}")
    if not bn_eps > 0:
        raise ValueError(f"model.bn_eps must be positive, got {bn_eps}")
    if init not in INITS:
        raise ValueError(f"model.init={init!r} is not one of {', '.join(INITS)}")
    s = SPECS[name]
    if width != 1 and name not in wide_names():
        raise ValueError(f"model.width={width!r} widens the CIFAR nets only; {name} is not one")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"model.width={width!r}: must be a whole factor >= 1")
    if s.block is BasicBlock:
        stride_in_3x3 = True
    # The stem widens with the stages (WRN keeps it at 16): the first stage's shortcuts then stay identities.
    model = ResNet(s.block, list(s.layers), [w * width for w in s.widths], num_classes, in_channels, s.stem,
                   shortcut or s.shortcut, stride_in_3x3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = bn_eps
    init_weights(model, zero_init_residual, init)
    return model


INITS = ("he", "tf_cnn")
# TensorFlow's truncated_normal draws N(0, 1) cut at +-2 std; TF 1.x's variance_scaling_initializer divides its
# std by this (the std of that truncated distribution) so the weights keep the intended variance.
_TRUNCATED_STD = 0.87962566103423978


def _truncated_normal_(w: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


def init_weights(model: ResNet, zero_init_residual: bool, init: str = "he") -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if init == "he":
                # He et al. 2015 ("Delving deep into rectifiers") fan-out init, as in the paper and torchvision.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                # tf_cnn_benchmarks' conv: tf.variance_scaling_initializer() = scale 1, fan_in, truncated normal.
                fan_in = m.weight[0].numel()
                _truncated_normal_(m.weight, (1.0 / fan_in) ** 0.5 / _TRUNCATED_STD)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and init == "tf_cnn":
            # tf_cnn_benchmarks' affine (linear activation): truncated normal, std sqrt(1 / fan_in); bias 0.
            _truncated_normal_(m.weight, (1.0 / m.in_features) ** 0.5)
            nn.init.zeros_(m.bias)
    # Zero-init of each residual branch's last BN gamma (Goyal et al. 2017): every block starts as identity,
    # which makes large-batch and warm-up-free training steadier.
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                for bn in m.residual_bns():
                    nn.init.zeros_(bn.weight)


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> tuple[int, tuple[int, ...]]:
    """Multiply-adds of one forward pass at ``input_size`` (convolutions and the FC layer, as the paper
    counts FLOPs), and the output shape. Counted with forward hooks on a meta-free CPU pass of batch 1."""
    macs = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal macs
        macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def fc_hook(m: nn.Linear, inp, out):
        nonlocal macs
        macs += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(fc_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs, tuple(out.shape)
