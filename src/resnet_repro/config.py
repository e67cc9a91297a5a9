"""Typed run configuration: the sections as dataclasses, what each field allows, and the check of a whole config.

A default is a plain starting point, not a recipe (several differ from the reference ImageNet recipe: colour,
normalization, val interpolation, workers); the recipe files in ``configs/`` set what they use and say where each
value comes from (configs/imagenet/resnet50_seed.yaml is the reference).
Reading recipes, ``--set`` overrides and saved configs, and writing the resolved one, is recipe.py's job.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Range:
    """The values a numeric field allows (a list field: each of its elements), declared in its section's
    RANGES. NaN and infinities never pass. A number without an entry in RANGES must be >= 0 (see validate)."""
    lo: float | None = 0
    hi: float | None = None
    lo_open: bool = False  # True: lo itself is excluded
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        return (math.isfinite(v) and (self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


class OneOf:
    """The strings a choice field allows: a Literal's choices, or (``Annotated[str, OneOf(names)]``) a list
    computed when first needed, where the choices live in another module (model names live with the models)."""

    def __init__(self, names):
        self.names = names

    def _all(self) -> tuple[str, ...]:
        return tuple(self.names() if callable(self.names) else self.names)

    def __contains__(self, v) -> bool:
        return v in self._all()

    def __str__(self) -> str:
        return "one of " + ", ".join(self._all())


POSITIVE = Range(0, lo_open=True)
COUNT = Range(1)  # an integer that must be at least 1
FRACTION = Range(0, 1)  # [0, 1]
DECAY = Range(0, 1, hi_open=True)  # [0, 1)
# Loader processes for one trainer (data.workers, bench --workers / --e2e): several times what the largest machines'
# cores feed; a typo's extra digits would otherwise start that many processes.
MAX_WORKERS = 512


def _model_names() -> list[str]:
    from .models.resnet import SPECS  # on first validation, not on import: config.py itself needs no torch

    return list(SPECS)


def model_label(name: str, width: int = 1) -> str:
    """How logs, `model`, `bench` and `report` name a net: "resnet20", or "resnet20 x2 wide" with model.width 2."""
    return f"{name} x{width} wide" if width != 1 else name


def model_entry(name: str, width: int = 1) -> dict:
    """How results.json, safetensors metadata, `model --json` and `bench` record a net: {"model"}, with "width"
    only where it is not 1 (so a paper net's record reads as it did before model.width)."""
    return {"model": name, **({"width": width} if width != 1 else {})}


def _wide_names() -> list[str]:
    from .models.resnet import wide_names  # on first validation, as _model_names

    return wide_names()


@dataclass
class DataConfig:
    path: str = "data/fashion_mnist"  # folder with manifest.json and shards (resnet-repro prepare)
    # or the URL of a copy of one (s3://, gs://, http(s)://, file://; fsspec, see data/shards/remote.py), read in place;
    # cache_dir: a local folder where such shards are kept, each fetched whole on first use ("" = none)
    cache_dir: str = ""
    # Splits trained on, read as one: ["train"]; a final run may add the val split (["train", "val"]) once its
    # choices are fixed on val. The test split is never trained on (an error), and is scored once at the end.
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    # Per-epoch evaluations, precise BN's before/after and every recipe comparison use this split. When it is
    # also in train_splits its figures are labelled "not held out" (metrics.jsonl val_held_out, results.json).
    val_split: str = "val"
    batch_size: int = 64  # per device (process); global batch = batch_size x world size
    eval_batch_size: int = 256  # per device
    # Loader worker processes per device; 0 = load in the training process; "auto" = from the cores
    # (data/loading/cores.py: on a GPU, this process's cores minus 2 for the training and pin-memory threads).
    # The log states the plan.
    workers: int | Literal["auto"] = 4
    # Where training JPEGs are decoded. "cpu": loader workers decode, crop and resize (OpenCV). "gpu": workers only
    # read bytes and draw each sample's crop; the trainer decodes the batch with nvJPEG and resizes on the GPU
    # (needs CUDA and torchvision; see data/loading/gpu_decode.py). Val images are always decoded on the CPU.
    decode: Literal["cpu", "gpu"] = "cpu"
    # With decode "gpu": the share of each training batch that nvJPEG decodes; the workers decode the rest (the
    # batch's last samples) as on the CPU path, with the same crop boxes and flips. Below 1 when the GPU side
    # cannot keep up and the workers have time to spare (DALI's hw_decoder_load is the same idea): torchvision
    # decodes a batch in one call behind one process-wide lock (a second decoding thread cannot help), on the
    # GPU's hardware JPEG engines where it has them (A100 and later). `bench train --e2e gpu:8:plan:0.75`
    # measures a share end to end; `bench gpu-decode` times the GPU side alone.
    gpu_decode_share: float = 1.0
    # Train geometry. "pad_crop": pad by `pad` pixels then random crop back (the paper's CIFAR recipe);
    # "none": resize + centre crop. ImageNet crops (data/augment/), each resized to `image_size` (default 224):
    # "inception": area U[0.08, 1], aspect log-U[3/4, 4/3], 10 tries, then the central crop clamped to the aspect
    # range: torchvision's RandomResizedCrop (fb.resnet.torch's RandomSizedCrop differs: aspect uniform in
    # [3/4, 4/3] with w and h swapped half the time, bicubic, and shorter side 224 + centre crop as fallback);
    # "tf_cnn": tf.image.sample_distorted_bounding_box(min_object_covered 0.1, aspect [0.75, 1.33], area
    # [0.05, 1], 100 attempts) as tf_cnn_benchmarks' own training (not the seed's: its note 1 names the paper's);
    # "paper": shorter side U[256, 480], random crop (He et al. 2015 s3.4; the seed recipe, its note 1).
    crop: Literal["pad_crop", "none", "inception", "tf_cnn", "paper"] = "pad_crop"
    # Decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg-turbo) when the train crop shrinks by >= 2x
    # anyway; off = always decode at full size (slower on large images, pixels differ by a few levels).
    dct_reduce: bool = True
    # Decode only the train crop's rows and columns (libjpeg-turbo, through the native helper
    # data/decode/_jpeg_region.c, built at install when a C compiler and libjpeg's headers are there). The pixels
    # are the same as a whole decode followed by the cut; off, or without the helper, the whole image is decoded
    # (OpenCV).
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
    # How the flip is chosen. "random": a fair coin per sample and epoch. "alternate" (Jordan 2024, "94% on CIFAR-10
    # in 3.29 seconds"): a fair coin per sample in epoch 0, then the opposite of the epoch before, so every two
    # consecutive epochs show each image both ways; said to be worth more in short runs. Crops, erasing and colour
    # are drawn the same under both (data/augment/geometry.py).
    flip_schedule: Literal["random", "alternate"] = "random"
    random_erasing: float = 0.0  # probability of erasing one random rectangle (Zhong et al. 2017); 0 = off
    # Val geometry: resize the shorter side to `val_resize`, centre crop `val_size` (0 = keep stored size).
    val_resize: int = 0
    val_size: int = 0
    # Filter of that resize (and of evaluate's protocols): "bilinear" (OpenCV INTER_LINEAR, half-pixel centres:
    # Caffe's and tf_cnn_benchmarks' eval on TF >= 1.14; the seed recipe), "tf1_bilinear" (TF 1.x's
    # resize_images, no half-pixel offset: tf_cnn_benchmarks' eval under TF 1.12), or "area" (INTER_AREA when
    # shrinking, bilinear when enlarging; FFCV). See augment.geometry.resize_to. The default stays "area" so that runs
    # saved before this key existed evaluate as they did.
    val_interpolation: Literal["area", "bilinear", "tf1_bilinear"] = "area"
    # Device-side colour distortion (data/augment/color.py): "tf_cnn" = tf_cnn_benchmarks' distort_color as it runs by
    # default (distort_color_in_yiq=True; the seed recipe): brightness +-32/255, saturation [0.5, 1.5] and hue
    # +-0.2*pi radians in YIQ, contrast [0.5, 1.5], one of two orders per sample, clip [0, 1]; linear, so one 3x4
    # matrix per image. "tf_cnn_hsv" = its distort_color_in_yiq=False path: saturation and hue by TensorFlow's HSV
    # ops (hue +-0.2 of a turn), per pixel. "jitter" = fb.resnet.torch's ColorJitter 0.4/0.4/0.4 in random order
    # (exact). "none" = off. tests/test_golden.py holds both tf_cnn modes against stored TensorFlow outputs (for
    # the YIQ mode a rebuild, in TensorFlow ops, of the removed contrib kernel: tools/make_golden_fixtures.py).
    color: Literal["none", "tf_cnn", "tf_cnn_hsv", "jitter"] = "none"
    lighting: float = 0.0  # PCA lighting noise alphastd (AlexNet / fb.resnet.torch: 0.1); 0 = off
    # Pixel normalization on the device: "scale" (x/255 -> [0,1], the reference recipe's "no mean
    # subtraction"; "none" is the same), "scale_pm1" ([-1,1]), or "meanstd" with `mean`/`std` in [0,1] units.
    normalize: Literal["none", "scale", "scale_pm1", "meanstd"] = "meanstd"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    RANGES: ClassVar[dict] = {"batch_size": COUNT, "eval_batch_size": COUNT, "resize_multiple": COUNT,
                              "random_erasing": FRACTION, "mean": FRACTION, "std": POSITIVE,
                              "gpu_decode_share": Range(0, 1, lo_open=True)}


@dataclass
class ModelConfig:
    name: Annotated[str, OneOf(_model_names)] = "resnet50"  # a net of models/resnet.py (SPECS)
    num_classes: int = 0  # 0 = taken from the data set's manifest
    in_channels: int = 0  # 0 = taken from the data set's manifest
    zero_init_residual: bool = False  # zero gamma of each residual branch's last BN (Goyal et al. 2017)
    stride_in_3x3: bool = False  # False = original v1 (stride in the bottleneck's first 1x1); True = "v1.5"
    # BatchNorm epsilon: 1e-5 = PyTorch's default and tf_cnn_benchmarks' ResNet; tf.nn.fused_batch_norm and
    # tf.layers' batch norm default to 1e-3.
    bn_eps: float = 1e-5
    # Weight init. "he": conv He et al. 2015 normal, fan_out, gain sqrt(2) (torchvision; Caffe's "msra"); fc
    # PyTorch's default. "tf_cnn": as tf_cnn_benchmarks' convnet_builder: conv tf.variance_scaling_initializer()
    # (truncated normal, fan_in, scale 1), fc truncated normal std sqrt(1 / fan_in) and zero bias. BN: 1 and 0.
    init: Literal["he", "tf_cnn"] = "he"
    # CIFAR nets only: every width (stem and the three stages, 16 / 32 / 64 channels) times this factor, the k of
    # Zagoruyko & Komodakis 2016's wide ResNets (WRN-n-k, which keep the stem at 16): capacity from width at the
    # same depth, about k^2 the multiply-adds. 1 = the paper's nets.
    width: int = 1

    RANGES: ClassVar[dict] = {"bn_eps": POSITIVE, "width": COUNT}


@dataclass
class OptimConfig:
    lr: float = 0.1  # learning rate at global batch `lr_batch` (scaled linearly with the real global batch)
    lr_batch: int = 256  # the global batch `lr` is quoted at (Goyal et al. 2017 linear rule, as the seed)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_wd_bn_bias: bool = False  # exclude BN parameters and biases from weight decay
    label_smoothing: float = 0.0

    RANGES: ClassVar[dict] = {"lr": POSITIVE, "lr_batch": COUNT, "momentum": DECAY, "label_smoothing": DECAY}


@dataclass
class ScheduleConfig:
    # step / multistep (the same): multiply by `gamma` at each of `milestones`; cosine: half cosine to
    # `final_factor`; linear: straight line from the peak to `final_factor`; onecycle: linear up to the peak at
    # `peak_epoch`, linear down to `final_factor` at the end (FFCV's "cyclic"). See schedule.py.
    kind: Literal["step", "multistep", "cosine", "linear", "onecycle"] = "step"
    # Unit of milestones, warmup_epochs and peak_epoch: "epoch", or "step" (optimizer steps; the paper's CIFAR
    # recipe is quoted in iterations: /10 at 32k and 48k). The field names say "epoch" for the common case.
    unit: Literal["epoch", "step"] = "epoch"
    milestones: list[float] = field(default_factory=lambda: [30, 60, 90])  # in `unit`
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # in `unit`; warm-up before the main schedule
    # linear: from `warmup_start_factor` x lr up to the schedule's value (Goyal et al. 2017); constant: hold
    # `warmup_start_factor` x lr, then jump (the paper's ResNet-110 on CIFAR: 0.01 until ~400 iterations).
    warmup_mode: Literal["linear", "constant"] = "linear"
    warmup_start_factor: float = 0.1
    peak_epoch: float = 0.0  # in `unit`; onecycle only
    final_factor: float = 0.0  # cosine / onecycle: lr at the last step as a fraction of the peak

    RANGES: ClassVar[dict] = {"gamma": Range(0, 1, lo_open=True), "warmup_start_factor": FRACTION,
                              "final_factor": FRACTION}


@dataclass
class TrainConfig:
    epochs: int = 120
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    # auto = from the hardware (runtime.py): bf16 on CUDA >= 8.0 and on CPUs with AVX-512 BF16 / AMX, fp16 with a
    # GradScaler on CUDA 7.x, fp32 elsewhere (CPU bf16 without those units is emulated, ~17x slower); or pin
    # fp32 | bf16 | fp16. The first log line says what was chosen and why.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile the training forward/backward (ResNet-50: ~1-2 min once, then faster steps)
    channels_last: Literal["auto", "true", "false"] = "auto"  # auto: NHWC on GPUs and bf16 CPUs, else NCHW (runtime.py)
    # Which of the recipe's `profiles:` (machine-dependent parts, e.g. the epoch budget) applies: auto = from the
    # hardware (runtime.profile_for: cuda, cpu_bf16 or cpu); config.yaml records the one chosen. Pin it to run
    # another machine class's recipe.
    profile: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    log_interval: int = 50  # steps between progress lines
    eval_every: int = 1  # epochs between val evaluations (the last epoch is always evaluated)
    precise_bn_batches: int = 25  # training batches averaged for BN statistics after training; 0 = off
    # The views each evaluation during and after training scores: "single" = the image as stored (or centre
    # crop); "flip" = it and its mirror image, softmax-averaged (evaluate's `flip` protocol, twice the eval cost).
    # With flip, metrics.jsonl keeps the single view's val errors too (val_*_single), and results.json's val and
    # test hold both; the headline (results.json top1_err) is always the single centre view.
    eval_protocol: Literal["single", "flip"] = "single"
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

    RANGES: ClassVar[dict] = {"epochs": COUNT, "log_interval": COUNT, "eval_every": COUNT, "ema": DECAY}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@functools.cache  # get_type_hints evaluates every annotation again on each call: called per key, it was most of a load
def field_types(cls) -> dict[str, typing.Any]:
    """The fields of a config dataclass (a section, or Config itself) with their declared types: one dict per
    class, shared by every caller (read it, never change it)."""
    hints = typing.get_type_hints(cls, include_extras=True)  # extras: Annotated[str, OneOf(...)] keeps its choices
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _choices(typ) -> OneOf | None:
    """What a choice field's type allows (Literal[...] or Annotated[str, OneOf(...)]); None for other fields."""
    if typing.get_origin(typ) is Literal:
        return OneOf(typing.get_args(typ))
    if typing.get_origin(typ) is Annotated:
        return next((m for m in typ.__metadata__ if isinstance(m, OneOf)), None)
    return None


def choices(section: str, key: str) -> tuple[str, ...]:
    """The values a choice field allows, e.g. choices("data", "crop")."""
    allowed = _choices(field_types(field_types(Config)[section])[key])
    return allowed._all() if allowed else ()


ZERO_OR_MORE = Range(0)  # what a number without a RANGES entry must be: every count, size and rate here is


def validate(cfg: Config, origins: dict[str, str] | None = None) -> None:
    """One pass over every field, driven by its declared type: a choice field's value (Literal, or Annotated
    with a OneOf) must be one of its choices; a number (or each number of a list) must lie in its section's
    RANGES entry, else be >= 0. Then the few rules that relate two fields.
    ``origins`` maps "section.key" to where its value came from (file, --set), for the message."""
    origins = origins or {}

    def fail(key: str, message: str) -> typing.NoReturn:
        where = f"{origins[key]}: " if key in origins else ""
        raise ConfigError(f"{where}config key {key!r}: {message}")

    for section, section_type in field_types(Config).items():
        sub = getattr(cfg, section)
        ranges = getattr(section_type, "RANGES", {})
        for name, typ in field_types(section_type).items():
            key, value = f"{section}.{name}", getattr(sub, name)
            allowed = _choices(typ) or ranges.get(name)
            if allowed is None and (typ in (int, float) or typing.get_args(typ) in ((int,), (float,))):
                allowed = ZERO_OR_MORE
            if allowed is None:
                continue  # free text (paths, split names, device) and switches
            if isinstance(allowed, OneOf) and value not in allowed:
                fail(key, f"{value!r} is not {allowed}")
            for v in value if isinstance(value, list) else [value]:
                if isinstance(allowed, Range) and v not in allowed:
                    finite = "" if math.isfinite(v) else "finite and "
                    fail(key, f"{v!r}{f' (in {value!r})' if isinstance(value, list) else ''} is not allowed; "
                              f"it must be {finite}{allowed}")
    # a count or "auto" (data/loading/cores.py): an int | Literal, which the loop passes over
    workers = cfg.data.workers
    if workers != "auto" and (isinstance(workers, str) or not 0 <= workers <= MAX_WORKERS):
        fail("data.workers", f"{workers!r} is not a count from 0 to {MAX_WORKERS} or auto")
    splits = cfg.data.train_splits
    if not splits or len(set(splits)) != len(splits):
        fail("data.train_splits", f"{splits!r}: name each training split once, at least one")
    if "test" in splits:
        fail("data.train_splits", f"{splits!r} includes 'test': the test split is scored once when training ends "
                                  "and never trained on; train on [train] or [train, val]")
    if cfg.data.val_split == "test":
        fail("data.val_split", "'test': evaluations during training use the held-out val split; the test split is "
                               "scored once when training ends (results.json \"test\"); use val_split: val")
    if cfg.model.width != 1 and cfg.model.name not in _wide_names():
        fail("model.width", f"{cfg.model.width} widens the CIFAR nets ({', '.join(_wide_names())}); "
                            f"{cfg.model.name} has no width factor: keep model.width=1")
    if len(cfg.data.mean) != len(cfg.data.std):
        raise ConfigError("config keys 'data.mean' and 'data.std' must have the same length")
    if cfg.data.image_size_start:
        if not 0 < cfg.data.image_size_start <= cfg.data.image_size:
            raise ConfigError("progressive resizing: 'data.image_size_start' must be positive and at most "
                              f"'data.image_size' (got {cfg.data.image_size_start} and {cfg.data.image_size})")
        if cfg.data.resize_end_epoch < cfg.data.resize_start_epoch:
            raise ConfigError("progressive resizing: need 'data.resize_start_epoch' <= 'data.resize_end_epoch'")
