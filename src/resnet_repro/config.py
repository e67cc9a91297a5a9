"""Typed run configuration: dataclasses, YAML presets, ``--set key=value`` overrides.

Every field has a default that matches the reference ImageNet recipe unless the field only makes sense for
small images; recipe files in ``configs/`` override what differs and say where each value comes from.
Unknown keys are errors (a typo must never silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


@dataclass
class DataConfig:
    path: str = "data/fashion_mnist"  # folder with manifest.json and shards (resnet-repro prepare)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 64  # per device (process); global batch = batch_size x world size
    eval_batch_size: int = 256  # per device
    workers: int = 4  # loader worker processes per device; 0 = load in the training process
    # Where training JPEGs are decoded. "cpu": loader workers decode, crop and resize (OpenCV). "gpu": workers only
    # read bytes and draw each sample's crop; the trainer decodes the batch with nvJPEG and resizes on the GPU
    # (needs CUDA and torchvision; see data/gpu_decode.py). Val images are always decoded on the CPU.
    decode: str = "cpu"
    # Train geometry. "pad_crop": pad by `pad` pixels then random crop back (the paper's CIFAR recipe);
    # "none": resize + centre crop. ImageNet crops (data/augment.py), each resized to `image_size` (default 224):
    # "inception": area U[0.08, 1], aspect log-U[3/4, 4/3], 10 tries, centre-crop fallback (torchvision
    # RandomResizedCrop, fb.resnet.torch); "tf_cnn": tf.image.sample_distorted_bounding_box(min_object_covered
    # 0.1, aspect [0.75, 1.33], area [0.05, 1], 100 attempts) as tf_cnn_benchmarks (the seed recipe);
    # "paper": shorter side U[256, 480], random crop (He et al. 2015 s3.4).
    crop: str = "pad_crop"
    # Decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg-turbo) when the train crop shrinks by >= 2x
    # anyway; off = always decode at full size (slower on large images, pixels differ by a few levels).
    dct_reduce: bool = True
    # Decode only the train crop's rows and columns (libjpeg-turbo, through the native helper data/_jpeg_region.c,
    # built at install when a C compiler and libjpeg's headers are there). The pixels are the same as a whole
    # decode followed by the cut; off, or without the helper, the whole image is decoded (OpenCV).
    region_decode: bool = True
    pad: int = 4  # pixels, pad_crop only
    image_size: int = 0  # train crop side in pixels; 0 = the stored image size (small-image data sets)
    # Progressive resizing (FFCV's rn50/rn18 configs: 160 -> 192, rounded to multiples of 32): the train side is
    # `image_size_start` up to epoch `resize_start_epoch`, `image_size` from `resize_end_epoch` on, and linear in
    # between (0-based epochs, as FFCV's start_ramp/end_ramp). image_size_start = 0 turns it off.
    image_size_start: int = 0  # pixels
    resize_start_epoch: int = 0  # 0-based epoch
    resize_end_epoch: int = 0  # 0-based epoch
    resize_multiple: int = 32  # pixels; the ramp's sizes are rounded to multiples of this (FFCV: 32)
    flip: bool = True  # random horizontal flip, p = 0.5
    random_erasing: float = 0.0  # probability of erasing one random rectangle (Zhong et al. 2017); 0 = off
    # Val geometry: resize the shorter side to `val_resize`, centre crop `val_size` (0 = keep stored size).
    val_resize: int = 0
    val_size: int = 0
    # Device-side colour distortion (data/color.py): "tf_cnn" = tf_cnn_benchmarks' distort_color (brightness
    # +-32/255, saturation [0.5, 1.5], hue +-0.2, contrast [0.5, 1.5], one of two orders per sample, clip [0, 1]),
    # with saturation and hue applied in YIQ rather than TensorFlow's HSV, so the whole chain is one 3x4 matrix
    # per image (tf_cnn's own distort_color_in_yiq option, DALI's color_twist): luma is kept, grey stays grey;
    # tests/test_color.py bounds the difference to the HSV definition. "jitter" = fb.resnet.torch's
    # ColorJitter 0.4/0.4/0.4 in random order (exact). "none" = off.
    color: str = "none"
    lighting: float = 0.0  # PCA lighting noise alphastd (AlexNet / fb.resnet.torch: 0.1); 0 = off
    # Pixel normalization on the device: "scale" (x/255 -> [0,1], the reference recipe's "no mean
    # subtraction"; "none" is the same), "scale_pm1" ([-1,1]), or "meanstd" with `mean`/`std` in [0,1] units.
    normalize: str = "meanstd"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    name: str = "resnet50"
    num_classes: int = 0  # 0 = taken from the data set's manifest
    in_channels: int = 0  # 0 = taken from the data set's manifest
    zero_init_residual: bool = False  # zero gamma of each residual branch's last BN (Goyal et al. 2017)
    stride_in_3x3: bool = False  # False = original v1 (stride in the bottleneck's first 1x1); True = "v1.5"


@dataclass
class OptimConfig:
    lr: float = 0.1  # learning rate at global batch `lr_batch` (scaled linearly with the real global batch)
    lr_batch: int = 256  # the global batch `lr` is quoted at (Goyal et al. 2017 linear rule, as the seed)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_wd_bn_bias: bool = False  # exclude BN parameters and biases from weight decay
    label_smoothing: float = 0.0


@dataclass
class ScheduleConfig:
    # step / multistep (the same): multiply by `gamma` at each of `milestones`; cosine: half cosine to
    # `final_factor`; linear: straight line from the peak to `final_factor`; onecycle: linear up to the peak at
    # `peak_epoch`, linear down to `final_factor` at the end (FFCV's "cyclic"). See schedule.py.
    kind: str = "step"
    # Unit of milestones, warmup_epochs and peak_epoch: "epoch", or "step" (optimizer steps; the paper's CIFAR
    # recipe is quoted in iterations: /10 at 32k and 48k). The field names say "epoch" for the common case.
    unit: str = "epoch"
    milestones: list[float] = field(default_factory=lambda: [30, 60, 90])  # in `unit`
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # in `unit`; warm-up before the main schedule
    # linear: from `warmup_start_factor` x lr up to the schedule's value (Goyal et al. 2017); constant: hold
    # `warmup_start_factor` x lr, then jump (the paper's ResNet-110 on CIFAR: 0.01 until ~400 iterations).
    warmup_mode: str = "linear"
    warmup_start_factor: float = 0.1
    peak_epoch: float = 0.0  # in `unit`; onecycle only
    final_factor: float = 0.0  # cosine / onecycle: lr at the last step as a fraction of the peak


@dataclass
class TrainConfig:
    epochs: int = 120
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training forward/backward (ResNet-50: ~1-2 min once, then faster steps)
    channels_last: bool = True
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    log_interval: int = 50  # steps between progress lines
    eval_every: int = 1  # epochs between val evaluations (the last epoch is always evaluated)
    precise_bn_batches: int = 25  # training batches averaged for BN statistics after training; 0 = off
    ema: float = 0.0  # EMA decay of weights per optimizer step (e.g. 0.9999); 0 = off. See ema.py
    # Early on use min(ema, (1 + n) / (10 + n)) after n updates (TensorFlow's ExponentialMovingAverage with
    # num_updates), so the average is not dominated by the random initial weights.
    ema_warmup: bool = True
    # Stop after this many optimizer steps (0 = `epochs` decides). When set, it decides the run length and the
    # number of epochs is ceil(max_steps / steps per epoch); the last epoch may be partial. The paper's CIFAR
    # recipe: 64k iterations.
    max_steps: int = 0
    tensorboard: bool = False  # also write RUN_DIR/tensorboard (needs `pip install tensorboard`); metrics.jsonl stays the record
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume on CPU)
    checkpoint_interval_min: float = 0.0  # also checkpoint mid-epoch every this many minutes; 0 = epoch ends only
    keep_checkpoints: int = 3  # newest checkpoints kept in RUN_DIR/checkpoints
    # Also checkpoint every this many optimizer steps within an epoch; 0 = off. Unlike the minutes-based
    # interval it falls on the same steps in every rerun (the fault-tolerance tests rely on that).
    checkpoint_every_steps: int = 0
    # BN statistics over the global batch (torch SyncBatchNorm; CUDA only) instead of per device. The reference
    # recipe normalizes per device (64 images per GPU), hence off by default.
    sync_bn: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value, typ, key: str):
    """Convert a YAML/CLI value to the field's declared type, or raise naming the key."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):  # YAML reads `--set data.flip=1` as the int 1
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if origin is list:
            (inner,) = typing.get_args(typ)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            elif isinstance(value, (int, float)):
                value = [value]  # a one-element list written as a scalar: `--set data.std=0.25`
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_coerce(v, inner, key) for v in value]
    except (ValueError, TypeError, yaml.YAMLError):
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {getattr(typ, '__name__', typ)}") from None
    raise ConfigError(f"config key {key!r}: unsupported type {typ}")


def _field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(cfg: Config, section: str, key: str, value, where: str) -> None:
    sections = _field_types(Config)
    if section not in sections:
        raise ConfigError(f"{where}: unknown config section {section!r}; known: {', '.join(sections)}")
    sub = getattr(cfg, section)
    types = _field_types(type(sub))
    if key not in types:
        raise ConfigError(f"{where}: unknown config key '{section}.{key}'; known in {section}: {', '.join(types)}")
    setattr(sub, key, _coerce(value, types[key], f"{section}.{key}"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides, then validation."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            hint = f" (a run folder's is {path / 'config.yaml'})" if (path / "config.yaml").is_file() else ""
            raise ConfigError(f"config file {path}: is a folder; give the YAML file{hint}")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config file {path}: section {section!r} must be a mapping")
            for key, value in values.items():
                _apply(cfg, section, key, value, f"config file {path}")
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.2")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: config key '{dotted.strip()}': {value!r} is not a valid YAML "
                              "value (quote it, or write lists as [a, b])") from None
        _apply(cfg, section.strip(), key.strip(), parsed, f"--set {item!r}")
    validate(cfg)
    return cfg


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config saved with ``to_dict`` (checkpoints, resolved config files)."""
    cfg = Config()
    for section, values in d.items():
        for key, value in values.items():
            _apply(cfg, section, key, value, "saved config")
    return cfg


_CHOICES = {
    ("data", "crop"): ("pad_crop", "none", "inception", "tf_cnn", "paper"),
    ("data", "color"): ("none", "tf_cnn", "jitter"),
    ("data", "normalize"): ("none", "scale", "scale_pm1", "meanstd"),
    ("data", "decode"): ("cpu", "gpu"),
    ("schedule", "kind"): ("step", "multistep", "cosine", "linear", "onecycle"),
    ("schedule", "unit"): ("epoch", "step"),
    ("schedule", "warmup_mode"): ("linear", "constant"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
}


def validate(cfg: Config) -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"config key '{section}.{key}': {value!r} is not one of {', '.join(choices)}")
    for section, key in (("data", "batch_size"), ("data", "eval_batch_size"), ("train", "epochs")):
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"config key '{section}.{key}' must be positive")
    if cfg.data.workers < 0:
        raise ConfigError("config key 'data.workers' must be >= 0")
    if len(cfg.data.mean) != len(cfg.data.std):
        raise ConfigError("config keys 'data.mean' and 'data.std' must have the same length")
    if cfg.data.image_size_start:
        if not 0 < cfg.data.image_size_start <= cfg.data.image_size:
            raise ConfigError("progressive resizing: 'data.image_size_start' must be positive and at most "
                              f"'data.image_size' (got {cfg.data.image_size_start} and {cfg.data.image_size})")
        if cfg.data.resize_end_epoch < cfg.data.resize_start_epoch or cfg.data.resize_multiple <= 0:
            raise ConfigError("progressive resizing: need 'data.resize_start_epoch' <= 'data.resize_end_epoch' and "
                              "'data.resize_multiple' > 0")
    if not 0.0 <= cfg.train.ema < 1.0:
        raise ConfigError(f"config key 'train.ema': {cfg.train.ema} is not a decay in [0, 1)")
    if cfg.train.max_steps < 0:
        raise ConfigError("config key 'train.max_steps' must be >= 0")
    if cfg.train.checkpoint_every_steps < 0 or cfg.train.checkpoint_interval_min < 0:
        raise ConfigError("config keys 'train.checkpoint_every_steps' and 'train.checkpoint_interval_min' "
                          "must be >= 0 (0 = off)")
    if cfg.train.keep_checkpoints < 0:
        raise ConfigError("config key 'train.keep_checkpoints' must be >= 0 (0 = keep all)")


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def dumps(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)
