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
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

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


def read_state_dict(path: str | Path) -> dict:
    """Tensors from a .pth/.pt (loaded with weights_only=True: no pickled code runs) or .safetensors file.

    Accepts a bare state_dict or one wrapped as {"model": ...} / {"state_dict": ...} (torchvision's training
    reference), and drops the "module." prefix DistributedDataParallel adds."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a file that is not a checkpoint
            # One line, and never torch's advice to retry with weights_only=False: that would run whatever code
            # the file's pickle holds, and a real state_dict never needs it.
            lines = str(e).strip().splitlines()
            reason = "not a plain state_dict of tensors (refused by the weights-only loader)" \
                if "Weights only load failed" in str(e) or not lines else lines[0][:200]
            raise WeightsError(f"{path}: cannot be read as a PyTorch state_dict ({type(e).__name__}: {reason})") \
                from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def model_from_torchvision(state: dict, name: str, where: str = "state_dict") -> ResNet:
    """Our `name` model (v1.5 for bottleneck nets) holding the weights of a torchvision-layout state_dict."""
    if name not in IMAGENET_SPECS:
        raise WeightsError(f"{where}: torchvision weights fit the ImageNet nets only ({', '.join(IMAGENET_SPECS)}), "
                           f"not {name!r}")
    ours = torchvision_to_ours(state)
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


def trained_from_torchvision(path: str | Path, name: str, data: str | Path):
    """torchvision weights as an evaluate.Trained, with torchvision's published test geometry (shorter side
    256, centre crop 224, ImageNet mean/std) and the class list of the prepared data set at `data`."""
    from ..config import Config
    from ..data.records import load_manifest
    from ..evaluate import Trained

    model = model_from_torchvision(read_state_dict(path), name, str(path))
    manifest = load_manifest(data)
    classes = manifest["classes"]
    if len(classes) != model.fc.out_features:
        raise WeightsError(f"{path}: {model.fc.out_features} classes, but {data} has {len(classes)}")
    cfg = Config()
    cfg.data.path, cfg.model.name, cfg.model.stride_in_3x3 = str(data), name, True
    cfg.data.val_resize, cfg.data.val_size = 256, 224  # torchvision's ImageNet evaluation: resize 256, crop 224
    cfg.data.normalize = "meanstd"  # the Config defaults are torchvision's ImageNet mean / std
    return Trained(model.eval(), cfg, list(classes), list(manifest.get("class_names", classes)),
                   model.stem[0].in_channels, manifest["image"].get("height"), str(path))
