"""A trained model ready for inference, for ``evaluate``, ``predict`` and ``export``, from either source:

* ``load_trained``: a resnet-repro checkpoint (final.pt or checkpoints/ckpt-*.pt), its trained weights or
  their moving average (EMA), with the run's own config.
* ``trained_from_torchvision``: a torchvision-layout ResNet state_dict file (``read_state_dict``), renamed to
  our layout by models/torchvision_weights.py, with torchvision's published test geometry.

Either way the result (``Trained``) carries what is needed to feed the model (normalization, val geometry,
channels, stored image size) and to name its outputs (the class list of the data it was trained or is
evaluated on).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint
from ..config import Config, ConfigError
from ..recipe import config_from_dict
from ..data.shards.records import MANIFEST, RecordError
from ..data.shards.remote import is_url, load_manifest
from ..models.resnet import SPECS, build_model
from ..models.torchvision_weights import WeightsError, model_from_torchvision


@dataclass
class Trained:
    """A model ready for inference and what is needed to feed it and name its outputs."""

    model: torch.nn.Module
    cfg: object  # config.Config: data.* gives the normalization and val geometry
    classes: list[str]
    class_names: list[str]
    in_channels: int
    image_size: int | None  # side of the training data's stored images (0: of many sizes); None: not known
    source: str
    data_folder: str | None = None  # where the run's data.path led when it trained (None: not recorded)

    def input_size(self, what: str) -> int:
        """The side `what` (predict, an ONNX export) feeds the model: data.val_size, else the stored images' side,
        else the net's default (ImageNet data: images of many sizes). A checkpoint from before checkpoints recorded
        the stored size, whose data folder is not found from here, is refused: the net's default would be a
        silent guess (32 for a CIFAR net trained on 28x28 Fashion-MNIST)."""
        d = self.cfg.data
        if d.val_size:
            return d.val_size
        if self.image_size is None:
            raise checkpoint.CheckpointError(
                f"checkpoint {self.source}: records no image size (saved before checkpoints did), and its data "
                f"folder {d.path} is not found from here, so {what} cannot tell the input size; give --data with the "
                "prepared data set, or run from the folder the run was trained in")
        return self.image_size or SPECS[self.cfg.model.name].input_size


def load_trained(path, weights: str = "model", data: str | None = None) -> Trained:
    """A resnet-repro checkpoint (final.pt or checkpoints/ckpt-*.pt) -> Trained.

    `weights`: "model" (the trained weights) or "ema" (their moving average, when the run kept one).
    `data`: a prepared data folder whose manifest gives the stored image size (default: the run's own)."""
    state = checkpoint.load_model_file(path)
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:  # it names the key but not the file, which is what the user has to act on
        raise checkpoint.CheckpointError(f"checkpoint {path}: its config does not fit this version: {e}") from None
    if weights == "model":
        tensors = state["model"]
    elif weights == "ema":
        tensors = state.get("model_ema") or (state.get("ema") or {}).get("module")
        if tensors is None:
            raise checkpoint.CheckpointError(f"checkpoint {path}: holds no EMA weights (train.ema was off)")
    else:
        raise ValueError(f"weights must be 'model' or 'ema', not {weights!r}")
    try:
        model = build_model(cfg.model.name, len(state["classes"]), state["in_channels"],
                            stride_in_3x3=cfg.model.stride_in_3x3, bn_eps=cfg.model.bn_eps, width=cfg.model.width)
    except ValueError as e:  # an unknown model name or a bad model.bn_eps in the saved config
        raise checkpoint.CheckpointError(f"checkpoint {path}: its config describes no model this version can "
                                         f"build ({e})") from None
    _load_weights(model, tensors, path, weights, cfg.model.name)
    recorded = state.get("data_folder")
    if data is None and isinstance(recorded, str) and not is_url(recorded) and (Path(recorded) / MANIFEST).is_file():
        # The data the run trained on, wherever this is run from (a relative data.path is read from the folder
        # training ran in); data.path as given where that folder has gone (data.path may move, as on resume).
        cfg.data.path = recorded
    image_size = (state.get("image") or {}).get("height")
    if image_size is None:
        try:
            image_size = load_manifest(data or cfg.data.path)["image"].get("height")
        except RecordError:
            image_size = None
    return Trained(model.eval(), cfg, list(state["classes"]), list(state.get("class_names", state["classes"])),
                   int(state["in_channels"]), image_size, str(path), recorded if isinstance(recorded, str) else None)


def _load_weights(model: torch.nn.Module, tensors: dict, path, weights: str, name: str) -> None:
    """``model.load_state_dict(tensors)``, or CheckpointError naming the file and the first keys that do not fit,
    instead of torch's multi-line RuntimeError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in tensors.items()
              if k in expected and v.shape != expected[k].shape]
    problems = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    if not problems:
        try:
            model.load_state_dict(tensors)
            return
        except RuntimeError as e:  # whatever the checks above did not foresee, in one line
            problems = [(str(e).strip().splitlines() or [type(e).__name__])[0][:300]]
    raise checkpoint.CheckpointError(
        f"checkpoint {path}: its {weights!r} weights do not fit the {name} ({model.fc.out_features} classes, "
        f"in_channels {model.stem[0].in_channels}) its config describes: {'; '.join(problems)}")


def read_state_dict(path: str | Path) -> dict:
    """Tensors from a .pth/.pt (loaded with weights_only=True: no pickled code runs) or .safetensors file.

    Accepts a bare state_dict or one wrapped as {"model": ...} / {"state_dict": ...} (torchvision's training
    reference), and drops the "module." prefix DistributedDataParallel adds."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {'a folder, not a weights file' if path.is_dir() else 'file not found'}")
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


def trained_from_torchvision(path: str | Path, name: str, data: str | Path) -> Trained:
    """torchvision weights as a Trained, with torchvision's published test geometry (shorter side 256, centre
    crop 224, ImageNet mean/std) and the class list of the prepared data set at `data`."""
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
