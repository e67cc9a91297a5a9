"""torchvision-layout ResNet weights <-> ours, so published weights can be evaluated with this pipeline.

torchvision's ResNet-50/101/152 are "v1.5" (the bottleneck's stride on its 3x3 conv), which is our
``stride_in_3x3=True``; ResNet-18/34 (basic blocks) are the same in both variants. Everything else matches
the paper's option-B ImageNet nets built here, so the two layouts differ only in names:

    torchvision                       ours
    conv1.*                           stem.0.*
    bn1.*                             stem.1.*
    layer{i}.{j}.conv{k}.* / bn{k}.*  stages.{i-1}.{j}.conv{k}.* / bn{k}.*
    layer{i}.{j}.downsample.{0,1}.*   stages.{i-1}.{j}.shortcut.{0,1}.*
    fc.*                              fc.*

A typical use: ``resnet-repro evaluate --torchvision-weights resnet50-0676ba61.pth --model resnet50 --data
data/imagenet --protocol single --protocol 10crop`` (the class order must be torchvision's, i.e. the sorted
WordNet ids, which is what an ImageNet folder sorted by name gives).

Only names and shapes live here, next to the model they describe: reading a weights file and pairing the
model with a data set's classes and test geometry is evaluate/trained_model.py's job (read_state_dict,
trained_from_torchvision), so that models/ knows no files, data or evaluation.
"""
from __future__ import annotations

import re

from .resnet import IMAGENET_SPECS, ResNet, build_model

_TO_OURS = [
    (re.compile(r"^conv1\.(.+)$"), lambda m: f"stem.0.{m[1]}"),
    (re.compile(r"^bn1\.(.+)$"), lambda m: f"stem.1.{m[1]}"),
    (re.compile(r"^fc\.(.+)$"), lambda m: f"fc.{m[1]}"),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\.(\d+)\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"),
    (re.compile(r"^layer(\d+)\.(\d+)\.((?:conv|bn)\d+)\.(.+)$"), lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{m[3]}.{m[4]}"),
]
_TO_TORCHVISION = [
    (re.compile(r"^stem\.0\.(.+)$"), lambda m: f"conv1.{m[1]}"),
    (re.compile(r"^stem\.1\.(.+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^fc\.(.+)$"), lambda m: f"fc.{m[1]}"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.shortcut\.(\d+)\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{m[3]}.{m[4]}"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.((?:conv|bn)\d+)\.(.+)$"), lambda m: f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}.{m[4]}"),
]


class WeightsError(ValueError):
    """A weights file or name that does not fit the torchvision ResNet layout; the message names it."""


def _rename(state: dict, rules, layout: str) -> dict:
    out, unknown = {}, []
    for name, tensor in state.items():
        for pattern, repl in rules:
            m = pattern.match(name)
            if m:
                out[repl(m)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise WeightsError(f"{len(unknown)} parameter name(s) are not in the {layout} ResNet layout: {shown}")
    return out


def torchvision_to_ours(state: dict) -> dict:
    """A torchvision ResNet state_dict with our names (same tensors, not copied)."""
    return _rename(state, _TO_OURS, "torchvision")


def ours_to_torchvision(state: dict) -> dict:
    """Our ImageNet ResNet state_dict with torchvision's names (same tensors, not copied)."""
    return _rename(state, _TO_TORCHVISION, "resnet-repro ImageNet")


def model_from_torchvision(state: dict, name: str, where: str = "state_dict") -> ResNet:
    """Our `name` model (v1.5 for bottleneck nets) holding the weights of a torchvision-layout state_dict."""
    if name not in IMAGENET_SPECS:
        raise WeightsError(f"{where}: torchvision weights fit the ImageNet nets only ({', '.join(IMAGENET_SPECS)}), "
                           f"not {name!r}")
    try:
        ours = torchvision_to_ours(state)
    except WeightsError as e:  # its message lists the names; the file is what the user has to act on
        raise WeightsError(f"{where}: {e}") from None
    if "fc.weight" not in ours or "stem.0.weight" not in ours:
        raise WeightsError(f"{where}: no conv1.weight / fc.weight; not a torchvision ResNet state_dict")
    num_classes, in_channels = ours["fc.weight"].shape[0], ours["stem.0.weight"].shape[1]
    model = build_model(name, num_classes, in_channels, stride_in_3x3=True)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    extra = sorted(set(ours) - set(expected))
    if missing or extra:
        tv_missing = sorted(ours_to_torchvision({k: expected[k] for k in missing})) if missing else []
        raise WeightsError(f"{where} does not fit {name}: missing {', '.join(tv_missing[:5]) or '-'}; "
                           f"unexpected {', '.join(sorted(ours_to_torchvision({k: ours[k] for k in extra}))[:5]) or '-'}"
                           " (is it another depth?)")
    for k, v in ours.items():
        if v.shape != expected[k].shape:
            raise WeightsError(f"{where}: {ours_to_torchvision({k: v}).popitem()[0]} has shape {tuple(v.shape)}, "
                               f"{name} needs {tuple(expected[k].shape)}")
    model.load_state_dict(ours)
    return model
