"""A run set up, in the order `train` calls them: the processes and the run's hardware-made choices
(`start_processes`; runtime.py chooses from the hardware, with the reason logged), the data (`open_data`), and what
the steps change (`build_learner`: model, SGD, EMA)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.nn as nn

from .. import dist, run_folder, runtime
from ..config import Config, ConfigError, model_label
from ..recipe import config_from_dict
from ..data.augment.device import DeviceTransform
from ..data.augment.geometry import EvalGeometry, TrainGeometry
from ..data.loading.memory import keep_batch_memory
from ..data.loading.cores import available_cpus, plan_cores
from ..data.loading.loader import BatchDataset
from ..data.shards.records import RecordError
from ..data.shards.remote import open_reader
from ..ema import EMA
from ..evaluate import eval_transform
from ..models.resnet import build_model
from ..schedule import schedule_position, schedule_warnings
from .state import Data, Learner, Run


# --- Processes, device and precision (runtime.py: chosen from the hardware, with the reason logged) ---------

def start_processes(cfg: Config, out: Path, resume: str | None = None) -> Run:
    """Join the ranks and settle the run's hardware-made choices (device, precision, memory format, profile, loader
    workers): on a resume the run's recorded ones (config.yaml), else chosen by rank 0 from its hardware; every
    rank then runs rank 0's config, and one that cannot honour it stops them all, naming itself."""
    recorded = run_folder.recorded(out, resume) if resume else None
    setting = cfg.train.device
    if recorded and setting == "auto":
        setting = recorded["config"].get("train", {}).get("device", setting)
    hw = runtime.detect(gpus=runtime.wants_gpus(setting))
    try:
        kind = runtime.device_type(setting, hw)
    except runtime.DeviceError:
        kind = "cpu"  # a recorded CUDA run on a machine without a GPU: settling names the choice and its --set
    env = dist.init(kind)
    log = print if env.is_main else (lambda *a, **k: None)
    settled = _settle_on_rank0(cfg, hw, env, recorded)
    for key, value in settled["values"].items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    device = runtime.pick_device(cfg.train.device, env.local_rank, hw)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    autocast, precision = runtime.autocast_for(cfg.train.precision, device)
    reasons = settled["reasons"]
    log(f"precision {precision} ({reasons['train.precision']}); memory format "
        f"{'channels_last' if cfg.train.channels_last == 'true' else 'NCHW'} ({reasons['train.channels_last']}); "
        f"recipe profile {cfg.train.profile} ({reasons['train.profile']})", flush=True)
    for key, o in settled["overrides"].items():
        log(f"override: {key} {o['now']} instead of the recorded {o['recorded']} (recorded in metrics.jsonl)",
            flush=True)
    for warning in settled["warnings"]:
        log(f"warning: {warning}", flush=True)
    return Run(cfg, out, env, device, autocast, precision, cfg.train.channels_last == "true", log,
               overrides=settled["overrides"], chosen_on=settled["chosen_on"], facts=runtime.facts(hw))


def _settle_on_rank0(cfg: Config, hw: runtime.Hardware, env: dist.DistEnv, recorded: dict | None) -> dict:
    """Rank 0's settled choices (runtime.settle) and config, on every rank; the same one-line error on every rank
    when rank 0 cannot settle them or some rank cannot honour them."""
    answer = None
    if env.is_main:
        local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), env.local_rank + 1)
        asked = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in runtime.HARDWARE_KEYS}
        chosen_on = (recorded or {}).get("chosen_on")
        try:
            s = runtime.settle(asked, recorded and recorded["config_flat"], hw,
                               lambda kind: plan_cores(available_cpus(), "auto", kind, 0, local_world).workers,
                               chosen_on, env.local_rank)
            overridden = s.overrides or not chosen_on
            answer = {"values": s.values, "reasons": s.reasons, "overrides": s.overrides, "warnings": s.warnings,
                      "config": cfg.to_dict(), "host": socket.gethostname(),
                      # the facts that chose: the record's, unless this run chose anew or overrides it
                      "chosen_on": runtime.facts(hw) if overridden else chosen_on}
        except runtime.DeviceError as e:
            answer = {"error": str(e)}
    answer = dist.broadcast_object(answer)
    if "error" in answer:
        raise runtime.DeviceError(answer["error"])
    if not env.is_main:
        # rank 0's config (its profile's values included), so that no rank trains another recipe
        rank0 = config_from_dict(answer["config"])
        cfg.__dict__.update(rank0.__dict__)
    mine = ""
    for key, value in answer["values"].items():
        why = runtime.cannot_honour(key, value, hw, str(answer["values"]["train.device"]).split(":")[0],
                                    env.local_rank)
        if why:
            mine = (f"rank {env.rank} on {socket.gethostname()} cannot honour {key}={value} (chosen by rank 0 on "
                    f"{answer['host']}): {why}; launch every rank on the same kind of machine, or pin {key} for all")
            break
    problems = [p for p in dist.all_gather_object(mine) if p]
    if problems:
        raise runtime.DeviceError(problems[0])
    return answer


# --- Data ----------------------------------------------------------------------------------------------------

def open_data(run: Run) -> Data:
    cfg, env, device = run.cfg, run.env, run.device
    train_reader = open_reader(cfg.data.path, cfg.data.train_splits, cfg.data.cache_dir)
    val_reader = open_reader(cfg.data.path, cfg.data.val_split, cfg.data.cache_dir)
    manifest = train_reader.manifest
    if manifest.get("dataset") == "fashion-mnist" and "evaluation_split" not in manifest:
        # Prepared before the three splits: its "val" is the official test set, which training must not read.
        raise RecordError(f"{cfg.data.path}: prepared before the held-out val split (its 'val' is the official "
                          f"test set); prepare it again: resnet-repro prepare fashion-mnist --out {cfg.data.path} "
                          "--force")
    published = manifest.get("evaluation_split")
    if published in cfg.data.train_splits:
        raise ConfigError(f"config key 'data.train_splits' is {cfg.data.train_splits}, but {published!r} is the split "
                          f"{cfg.data.path} reports published figures on (manifest.json evaluation_split); never "
                          "train on it")
    # The test split: scored once, after precise BN (finish); the data sets with two splits have none.
    test_split = "test" if "test" in manifest["splits"] and cfg.data.val_split != "test" else None
    val_held_out = cfg.data.val_split not in cfg.data.train_splits
    if not val_held_out:
        run.log(f"data.train_splits {cfg.data.train_splits} include the val split {cfg.data.val_split!r}: its "
                "figures are training-fit figures, not held out (labelled so in metrics.jsonl and results.json)")
    channels = manifest["image"]["channels"]
    stored = manifest["image"]["height"]
    if cfg.model.num_classes and cfg.model.num_classes != len(manifest["classes"]):
        raise ConfigError(f"config key 'model.num_classes' is {cfg.model.num_classes}, but {cfg.data.path} has "
                          f"{len(manifest['classes'])} classes (manifest.json); set model.num_classes=0 to take "
                          "the data's count")
    if cfg.model.in_channels and cfg.model.in_channels != channels:
        raise ConfigError(f"config key 'model.in_channels' is {cfg.model.in_channels}, but {cfg.data.path} holds "
                          f"{channels}-channel images (manifest.json); set model.in_channels=0 to take the data's")
    train_ds = BatchDataset(train_reader, TrainGeometry(cfg.data, stored), channels, cfg.train.seed, train=True)
    val_ds = BatchDataset(val_reader, EvalGeometry(cfg.data, stored), channels, cfg.train.seed, train=False)
    keep_batch_memory(device)  # this process transforms every batch on a CPU device: reuse its memory
    to_device = DeviceTransform(cfg.data, channels, device, run.channels_last)
    train_transform = to_device
    # Val batches get normalization only: colour distortion and lighting noise are training augmentation (and
    # val workers draw no colour parameters for them).
    val_transform = eval_transform(cfg.data, channels, device, run.channels_last)
    if cfg.data.decode == "gpu":
        # Workers ship JPEG bytes and the CPU path's crop boxes; the batch is decoded (nvJPEG) and resized on the
        # GPU, then takes the same DeviceTransform (data/loading/gpu_decode.py). Val stays on the CPU path.
        from ..data.loading.gpu_decode import EncodedBatchDataset, GpuDecoder, refusals

        why = refusals(cfg.data, device.type, channels)
        if why:
            raise ConfigError(f"config key 'data.decode' is gpu, which {'; '.join(why)}; use data.decode=cpu")
        train_ds = EncodedBatchDataset(train_reader, TrainGeometry(cfg.data, stored), cfg.train.seed,
                                       cfg.data.gpu_decode_share)
        train_transform = GpuDecoder(device, to_device)
    global_batch = cfg.data.batch_size * env.world
    steps_per_epoch = len(train_reader) // global_batch
    if steps_per_epoch == 0:
        # A start-up mistake in the recipe (exit 2, as every config error), not a failure of training (exit 3).
        raise ConfigError(f"config key 'data.batch_size': {cfg.data.path} has {len(train_reader)} training samples, "
                          f"fewer than one global batch ({cfg.data.batch_size} x {env.world} processes); set "
                          f"data.batch_size to at most {len(train_reader) // env.world}")
    # Run length: `train.max_steps` optimizer steps when set (recipes quoted in iterations), else whole epochs.
    epochs = cfg.train.epochs
    total_steps = epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = cfg.train.max_steps
        epochs = -(-total_steps // steps_per_epoch)
    for warning in schedule_warnings(cfg.schedule, schedule_position(cfg.schedule, 0, 0, steps_per_epoch,
                                                                      total_steps)[1]):
        run.log(f"warning: {warning}")
    # Worker count and core layout (data/loading/cores.py): on a GPU the trainer's threads keep cores of their own.
    local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), env.local_rank + 1)  # torchrun sets it
    core_plan = plan_cores(available_cpus(), cfg.data.workers, device.type, env.local_rank, local_world)
    decode = ""
    if cfg.data.decode == "gpu":
        share = cfg.data.gpu_decode_share
        decode = "; training JPEGs decoded on the GPU (nvJPEG)" + (
            f", {100 * share:g} % of each batch, the workers decode the rest" if share < 1 else "")
    run.log(f"data loading: {core_plan.describe()}{decode}")
    return Data(cfg.data, cfg.train.seed, env, device, train_reader, val_reader,
                cfg.model.num_classes or len(manifest["classes"]), train_ds, val_ds, train_transform, val_transform,
                core_plan, global_batch, steps_per_epoch, epochs, total_steps, val_held_out, test_split)


# --- Model and optimizer -------------------------------------------------------------------------------------

def build_learner(run: Run) -> Learner:
    cfg, env, device, data, precision = run.cfg, run.env, run.device, run.data, run.precision
    global_batch = data.global_batch
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    model = build_model(cfg.model.name, data.num_classes, cfg.model.in_channels or data.channels,
                        cfg.model.zero_init_residual, cfg.model.stride_in_3x3, bn_eps=cfg.model.bn_eps,
                        init=cfg.model.init, width=cfg.model.width).to(device, memory_format=memory_format)
    bn_mode = f"per device ({cfg.data.batch_size} images)"
    if cfg.train.sync_bn and env.world > 1:
        if device.type != "cuda":
            raise ConfigError("config key 'train.sync_bn': torch's SyncBatchNorm runs on GPUs only; on CPU keep "
                              "per-device BN (train.sync_bn=false)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys: checkpoints interchange
        bn_mode = f"synchronized over the global batch ({global_batch} images)"
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.world > 1 else model
    # Linear scaling rule: the recipe's LR is quoted at global batch `lr_batch` (256 in the reference).
    peak_lr = cfg.optim.lr * global_batch / cfg.optim.lr_batch
    optimizer = make_optimizer(model, cfg.optim, peak_lr, device)
    # torch.compile traces the training forward/backward once (a minute or two for ResNet-50) and then runs fused
    # kernels; evaluation and precise BN keep the eager module (eval mode would be a second compilation).
    step_net = torch.compile(net) if cfg.train.compile else net
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    ema = EMA(model, cfg.train.ema, cfg.train.ema_warmup) if cfg.train.ema else None
    run.log(f"model {model_label(cfg.model.name, cfg.model.width)}: {sum(p.numel() for p in model.parameters()):,} "
            f"parameters; device {device}, "
            f"precision {precision}, {env.world} process(es); global batch {global_batch} = {cfg.data.batch_size} "
            f"x {env.world}; peak lr {peak_lr:g} = {cfg.optim.lr:g} x {global_batch}/{cfg.optim.lr_batch} (linear "
            f"scaling rule); BN statistics {bn_mode}")
    return Learner(model, step_net, optimizer, scaler, criterion, ema, peak_lr)


def make_optimizer(model: nn.Module, cfg, lr: float, device: torch.device) -> torch.optim.SGD:
    """SGD over `param_groups`. On CUDA the fused kernel: one launch for all parameters, and it applies
    GradScaler's unscale/inf-check on the device, so an fp16 step never waits for the GPU either."""
    fast = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.no_wd_bn_bias), lr=lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, **fast)


def param_groups(model: nn.Module, weight_decay: float, no_wd_bn_bias: bool) -> list[dict]:
    if not no_wd_bn_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # BN gamma/beta and biases are the 1-d parameters
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
