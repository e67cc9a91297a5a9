"""The device side of augmentation: a uint8 batch on the training device -> the model's normalized float input.

Per batch, torch: uint8 NHWC -> float NCHW (channels_last), colour distortion (augment/color.py, driven by the
parameters the workers drew) and normalization, where a GPU does them almost for free.
"""
from __future__ import annotations

import torch

from ...config import ConfigError, DataConfig
from .color import affine_pixels


def _mean_std_fix(cfg: DataConfig, channels: int) -> str:
    """What to set when data.mean/std do not have one value per channel: their averages, repeated (ImageNet's
    RGB defaults on grayscale data: one value each)."""
    def one(values):
        avg = round(sum(values) / len(values), 3) if values else 0.5
        return "[" + ",".join([str(avg)] * channels) + "]"

    return (f"config keys 'data.mean' and 'data.std' have {len(cfg.mean)} and {len(cfg.std)} value(s), but the "
            f"images have {channels} channel(s): give one per channel, e.g. --set data.mean={one(cfg.mean)} "
            f"--set data.std={one(cfg.std)} (or the same in the recipe's data: section)")


class DeviceTransform:
    """uint8 NHWC batch on the device (+ the per-sample colour parameters the workers drew) -> normalized
    float NCHW in channels_last memory format. The same tensor ops on CPU and CUDA."""

    def __init__(self, cfg: DataConfig, channels: int, device: torch.device, channels_last: bool = True):
        from .color import ColorAugment

        if cfg.normalize == "meanstd":
            if len(cfg.mean) != channels or len(cfg.std) != channels:
                raise ConfigError(_mean_std_fix(cfg, channels))
            mean, std = cfg.mean, cfg.std
        elif cfg.normalize in ("none", "scale"):
            mean, std = [0.0] * channels, [1.0] * channels
        else:  # scale_pm1
            mean, std = [0.5] * channels, [0.5] * channels
        self.color = ColorAugment.from_config(cfg)
        if self.color.num_params and channels != 3:
            raise ValueError(f"data.color / data.lighting need RGB images; the data set has {channels} channel(s)")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        # Fold /255 into the affine map: x_norm = x_uint8 * scale + shift.
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = -self.mean / self.std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        if self.color.num_params:
            if params is None or params.shape != (x.shape[0], self.color.num_params):
                raise ValueError(f"colour augmentation needs params [{x.shape[0]}, {self.color.num_params}], got "
                                 f"{None if params is None else tuple(params.shape)}")
            x = self.color.apply(x, params, self.mean, self.std)  # NHWC float, normalized
        else:  # normalization alone: the diagonal map x * scale + shift, through the same per-pixel kernel
            b, c = x.shape[0], x.shape[-1]
            x = affine_pixels(x, torch.diag(self.scale).expand(b, c, c), self.shift.expand(b, c))
        # NHWC float -> NCHW view, channels_last in memory (a copy only when channels_last is off)
        return x.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
