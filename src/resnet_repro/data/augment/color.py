"""Colour augmentation on the training device, applied to the whole batch.

Loader workers draw each sample's parameters (``ColorAugment.sample``, from the sample's own Philox stream, so
they are a pure function of seed, epoch and index) and ship them as a small float tensor with the batch. The
device does the pixel work, batched, together with normalization.

Every op of ``tf_cnn`` and ``jitter`` is affine in RGB once the image's per-channel mean is known, and the mean of
an affine map of an image is the same map of its mean; so a whole chain of ops folds into one 3x4 matrix per
image (``affine``), computed from the input's per-channel means (one reduction over the batch) and a few dozen
numbers per image, and ``apply`` runs it over the batch as DALI's color_twist does. ``tf_cnn_hsv`` is not
linear (HSV's value is the channel maximum) and runs per pixel (``_apply_hsv``).

``tf_cnn`` — tf_cnn_benchmarks' distort_color with its default distort_color_in_yiq=True (the seed recipe), per
  sample in one of its two orders:
    0: brightness, saturation+hue, contrast    1: brightness, contrast, saturation+hue;    then clip to [0, 1]
    brightness: x + d, d ~ U[-32/255, 32/255]                                        (tf.image.random_brightness)
    contrast:   (x - mean_c) * f + mean_c, per-channel image mean, f ~ U[0.5, 1.5]     (tf.image.random_contrast)
    saturation+hue: random_hsv_in_yiq(lower_saturation 0.5, upper_saturation 1.5, max_delta_hue 0.2*pi): to YIQ,
      rotate the (I, Q) plane by d radians, d ~ U[-0.2*pi, 0.2*pi] (+-36 degrees), scale I and Q by
      s ~ U[0.5, 1.5], back to RGB, with the matrices of TensorFlow's kernel (contrib/image
      adjust_hsv_in_yiq_op.h; its YIQ inverse is the rounded one printed there). Exact: every op is linear.
  tf_cnn_benchmarks picks the order by the image's position in the batch (even/odd); here each sample draws it,
  which gives the same 50/50 split without tying augmentation to batch layout.
``tf_cnn_hsv`` — the same distort_color with distort_color_in_yiq=False: saturation by tf.image.adjust_saturation
  (HSV, s * f clipped to [0, 1], f ~ U[0.5, 1.5]) and hue by tf.image.adjust_hue (HSV hue + d turns,
  d ~ U[-0.2, 0.2], i.e. +-72 degrees: random_hue(0.2)), per pixel as TensorFlow's CPU kernels compute them,
  including their treatment of the out-of-range values brightness and contrast can leave before the final clip.
  tests/test_golden.py compares both modes with TensorFlow's own outputs.

``jitter`` — fb.resnet.torch's ColorJitter(brightness 0.4, contrast 0.4, saturation 0.4), in random order:
    brightness: a x;   contrast: a x + (1 - a) mean(grey(x));   saturation: a x + (1 - a) grey(x);
    a = 1 + U[-0.4, 0.4] each, grey = 0.299 R + 0.587 G + 0.114 B — all linear, so this is exact.
``lighting`` (alphastd > 0) — AlexNet's PCA lighting noise as fb.resnet.torch: x + V (alpha * lambda),
    alpha ~ N(0, alphastd^2) per image, ImageNet eigenvalues lambda / eigenvectors V (below). Exact.
No clipping after jitter/lighting, as fb.resnet.torch.
"""
from __future__ import annotations

import numpy as np
import torch

# tf_cnn_benchmarks distort_color ranges (preprocessing.py).
TF_BRIGHTNESS = 32.0 / 255.0  # max |delta|, [0, 1] pixel units
TF_SATURATION = (0.5, 1.5)  # factor
# Hue: the YIQ path (distort_color_in_yiq=True, tf_cnn_benchmarks' default since December 2017) rotates by at most
# 0.2*pi radians; the HSV path (random_hue(0.2)) shifts HSV hue by at most 0.2 of a full turn, twice as far.
TF_HUE_YIQ = 0.2 * np.pi  # max |delta|, radians
TF_HUE_HSV = 0.2  # max |delta|, fraction of a full turn of hue
TF_CONTRAST = (0.5, 1.5)  # factor
# fb.resnet.torch imagenet.lua: ColorJitter{brightness = 0.4, contrast = 0.4, saturation = 0.4}.
JITTER = 0.4  # factor = 1 + U[-0.4, 0.4]
# fb.resnet.torch imagenet.lua `pca` (from the ImageNet training set, RGB in [0, 1]); V's columns are eigenvectors.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))

# Rec. 601 luma weights: fb.resnet.torch's grayscale() and the Y row of YIQ.
LUMA = (0.299, 0.587, 0.114)
# NTSC RGB -> YIQ and back, the two matrices of TensorFlow's adjust_hsv_in_yiq kernel (random_hsv_in_yiq). The
# kernel's inverse is rounded (its product with RGB_TO_YIQ is the identity to ~1e-4); we use it as printed, so
# that the colour map is the kernel's.
RGB_TO_YIQ = ((0.299, 0.587, 0.114),
              (0.596, -0.274, -0.322),
              (0.211, -0.523, 0.312))
YIQ_TO_RGB = ((1.0, 0.95617069, 0.62143257),
              (1.0, -0.2726886, -0.64681324),
              (1.0, -1.103744, 1.70062309))

KINDS = ("none", "tf_cnn", "tf_cnn_hsv", "jitter")
# All 3! orders of fb.resnet.torch's RandomOrder over (brightness, contrast, saturation).
_JITTER_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class ColorAugment:
    """Per-sample parameter draws (worker side) and the batched affine colour transform (device side)."""

    def __init__(self, kind: str = "none", lighting: float = 0.0):
        if kind not in KINDS:
            raise ValueError(f"data.color={kind!r} is not one of {', '.join(KINDS)}")
        self.kind, self.lighting = kind, float(lighting)
        self.base_params = {"none": 0, "tf_cnn": 5, "tf_cnn_hsv": 5, "jitter": 4}[kind]
        self.num_params = self.base_params + (3 if self.lighting > 0 else 0)
        # distort_color ends in clip_by_value(0, 1); fb.resnet.torch never clips
        self.clip = kind in ("tf_cnn", "tf_cnn_hsv")

    @classmethod
    def from_config(cls, cfg) -> "ColorAugment":
        return cls(cfg.color, cfg.lighting)

    # --- worker side -----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """This sample's parameters, float32 [num_params]."""
        p = []
        if self.kind in ("tf_cnn", "tf_cnn_hsv"):
            # hue: radians in the YIQ path, turns in the HSV path (each as TensorFlow's op takes it)
            hue = TF_HUE_YIQ if self.kind == "tf_cnn" else TF_HUE_HSV
            p = [float(rng.integers(0, 2)), rng.uniform(-TF_BRIGHTNESS, TF_BRIGHTNESS), rng.uniform(*TF_SATURATION),
                 rng.uniform(-hue, hue), rng.uniform(*TF_CONTRAST)]
        elif self.kind == "jitter":
            p = [float(rng.integers(0, 6)), *(1.0 + rng.uniform(-JITTER, JITTER, 3))]  # order, b, c, s
        if self.lighting > 0:
            p += list(rng.normal(0.0, self.lighting, 3))
        return np.asarray(p, np.float32)

    # --- device side -----------------------------------------------------------------------------------
    def affine(self, params: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image colour map before clipping and lighting: (A [B,3,3], t [B,3]) with x' = A x + t in [0, 1]
        units; `means` [B,3] are the input images' per-channel means in [0, 1]."""
        b = params.shape[0]
        dev = params.device
        eye = torch.eye(3, device=dev).expand(b, 3, 3)
        a, t = eye.clone(), torch.zeros(b, 3, device=dev)
        if self.kind == "tf_cnn":
            order, delta, sat, hue, con = params[:, :5].unbind(1)
            a, t = a, t + delta[:, None]  # brightness
            twist = _yiq_twist(sat, hue)
            a0, t0 = _contrast_per_channel(*_matmul(twist, a, t), means, con)  # order 0: sat+hue, contrast
            a1, t1 = _matmul(twist, *_contrast_per_channel(a, t, means, con))  # order 1: contrast, sat+hue
            first = (order < 0.5)
            a = torch.where(first[:, None, None], a0, a1)
            t = torch.where(first[:, None], t0, t1)
        elif self.kind == "jitter":
            orders = torch.tensor(_JITTER_ORDERS, device=dev)[params[:, 0].long()]  # [B, 3] op ids by position
            alpha = params[:, 1:4]  # brightness, contrast, saturation factors
            luma = torch.tensor(LUMA, device=dev)
            sat_blend = luma.expand(3, 3)  # rows: grey(x) for every channel
            for pos in range(3):
                op = orders[:, pos]
                cand = []
                for k in range(3):
                    f = alpha[:, k][:, None]
                    if k == 0:  # brightness: blend with black
                        cand.append((a * f[:, :, None], t * f))
                    elif k == 1:  # contrast: blend with the mean grey level of the current image
                        grey_mean = ((torch.einsum("bij,bj->bi", a, means) + t) * luma).sum(1, keepdim=True)
                        cand.append((a * f[:, :, None], t * f + (1 - f) * grey_mean))
                    else:  # saturation: blend with the image's own grey
                        s = f[:, :, None] * eye + (1 - f[:, :, None]) * sat_blend
                        cand.append(_matmul(s, a, t))
                a = torch.stack([c[0] for c in cand])[op, torch.arange(b, device=dev)]
                t = torch.stack([c[1] for c in cand])[op, torch.arange(b, device=dev)]
        return a, t

    def lighting_offset(self, params: torch.Tensor) -> torch.Tensor | None:
        """AlexNet PCA lighting: per-image RGB offset V (alpha * lambda), [B, 3], in [0, 1] units."""
        if self.lighting <= 0:
            return None
        alpha = params[:, self.base_params:self.base_params + 3]
        vec = torch.tensor(IMAGENET_EIGVEC, device=params.device)
        val = torch.tensor(IMAGENET_EIGVAL, device=params.device)
        return (alpha * val) @ vec.T

    def apply(self, x: torch.Tensor, params: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC [B,H,W,3] -> colour-distorted, normalized float NHWC: ((colour(x / 255)) - mean) / std."""
        params = params.to(device=x.device, dtype=torch.float32)
        if self.kind == "tf_cnn_hsv":
            return self._apply_hsv(x, params, mean, std)
        a, t = self.affine(params, channel_means(x))
        a = a / 255.0  # act on 0..255 input directly
        light = self.lighting_offset(params)
        if self.clip:
            offset = (-mean if light is None else light - mean) / std
            return affine_pixels(x, a, t, clip_then=(std, offset.expand(x.shape[0], -1)))
        if light is not None:  # fold lighting and normalization into the one map
            t = t + light
        return affine_pixels(x, a / std[:, None], (t - mean) / std)

    def _apply_hsv(self, x: torch.Tensor, params: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """tf_cnn_hsv: distort_color with TensorFlow's HSV saturation and hue, per pixel, in float32 as TF's kernels.
        Brightness and contrast are applied as TF does (no clipping in between); clip once at the end."""
        order, delta, sat, hue, con = (p[:, None, None, None] for p in params[:, :5].unbind(1))
        y = x.float().div_(255.0).add_(delta)  # random_brightness
        contrast_first = order >= 0.5  # order 1: brightness, contrast, saturation, hue
        y = torch.where(contrast_first, _contrast(y, con), y)
        y = hsv_saturation_hue(y, sat[..., 0], hue[..., 0])
        y = torch.where(contrast_first, y, _contrast(y, con))
        y = y.clamp_(0.0, 1.0)
        light = self.lighting_offset(params)
        if light is not None:  # after the clip, as the affine path
            y = y + light[:, None, None, :]
        return (y - mean) / std


def _contrast(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """tf.image.adjust_contrast on float NHWC: (x - mean) * f + mean with each image's per-channel mean."""
    m = y.mean((1, 2), keepdim=True)
    return (y - m) * factor + m


def hsv_saturation_hue(y: torch.Tensor, sat: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """tf.image.adjust_saturation(y, sat) then tf.image.adjust_hue(y, hue) on float NHWC RGB, per pixel.

    TensorFlow's kernels (core/kernels/adjust_saturation_op.cc, adjust_hue_op.cc): saturation converts to HSV with
    V = max, S = (max - min) / max (0 where max <= 0), scales S and clips it to [0, 1], converts back; hue keeps
    max and min and turns the hue angle, wrapping at a full turn. Both keep the hue angle of the other, so the
    pair is one pass here: the result keeps max, has chroma clip(S * sat, 0, 1) * max, and the hue angle plus
    `hue` turns. `sat`, `hue`: [B, 1, 1] (one per image). Values outside [0, 1] are handled as TF does (a
    negative minimum gives S > 1, which the clip brings back to 1; a pixel with max <= 0 becomes grey)."""
    r, g, b = y.unbind(-1)
    vmax, vmin = y.amax(-1), y.amin(-1)
    chroma = vmax - vmin
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(vmax == r, (g - b) / safe, torch.where(vmax == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h6 = torch.where(chroma > 0, h6, torch.zeros_like(h6))  # hue angle in sixths of a turn
    s = torch.where(vmax > 0, chroma / torch.where(vmax > 0, vmax, torch.ones_like(vmax)), torch.zeros_like(vmax))
    new_chroma = (s * sat).clamp_(0.0, 1.0) * vmax
    h6 = torch.remainder(h6 + 6.0 * hue, 6.0)
    # HSV -> RGB: channel n (R 5, G 3, B 1) = max - chroma * clip(min(k, 4 - k), 0, 1), k = (n + h6) mod 6
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], device=y.device) + h6[..., None], 6.0)
    return vmax[..., None] - new_chroma[..., None] * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """Per-image channel means of uint8 NHWC [B,H,W,C], in [0, 1] units: [B, C] float32."""
    b, h, w, c = x.shape
    if x.device.type == "cpu" and c <= 4:
        return _channel_means_cv2(x)
    return x.reshape(b, h * w, c).float().mean(1) / 255.0


def _channel_means_cv2(x: torch.Tensor) -> torch.Tensor:
    import cv2  # sums in double with SIMD; on the CPU torch's float conversion alone takes longer

    return torch.tensor([cv2.mean(img)[:x.shape[-1]] for img in x.contiguous().numpy()], dtype=torch.float32) / 255.0


def affine_pixels(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, clip_then=None) -> torch.Tensor:
    """y = a[b] @ x[b, h, w, :] + t[b] for every pixel of uint8 NHWC `x` -> float32 NHWC. With
    ``clip_then=(std, offset)``: y = clamp(y, 0, 1) / std + offset[b] (tf_cnn's clip, then normalization).

    On CUDA (any device but the CPU): three multiply-adds over the batch, exact float32 (a batched matmul would
    run in TF32 on GPUs that allow it). On the CPU those broadcast multiply-adds and torch's uint8 -> float
    conversion of a fresh 38 MB batch crawl (65 ms for 64 images of 224 x 224 on one core, about what a loader
    worker needs to decode them), so the same map runs image by image through OpenCV's cv2.transform (SIMD,
    buffers reused in cache). Same numbers within float32 rounding (tests/test_color.py)."""
    if x.device.type == "cpu" and x.shape[-1] == 3:
        return _affine_pixels_cv2(x, a, t, clip_then)
    return _affine_pixels_torch(x, a, t, clip_then)


def _affine_pixels_torch(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, clip_then) -> torch.Tensor:
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c).float()
    y = torch.addcmul(t[:, None, :], flat[:, :, 0:1], a[:, None, :, 0])
    for k in range(1, c):
        y.addcmul_(flat[:, :, k:k + 1], a[:, None, :, k])
    if clip_then is not None:
        std, offset = clip_then
        y = y.clamp_(0.0, 1.0).div_(std).add_(offset[:, None, :])
    return y.view(b, h, w, c)


def _affine_pixels_cv2(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, clip_then) -> torch.Tensor:
    import cv2

    b, h, w, c = x.shape
    out = torch.empty(b, h, w, c, dtype=torch.float32)
    src, dst = x.contiguous().numpy(), out.numpy()
    m = torch.cat([a, t[:, :, None]], 2).double().numpy()  # [B, 3, 4]: cv2.transform's affine form
    if clip_then is not None:
        std, offset = clip_then
        post = torch.cat([torch.diag_embed((1.0 / std).expand(b, c)), offset[:, :, None]], 2).double().numpy()
    pixels, mapped = np.empty((h, w, c), np.float32), np.empty((h, w, c), np.float32)
    for i in range(b):
        np.copyto(pixels, src[i], casting="unsafe")  # uint8 -> float32, exact
        if clip_then is None:
            cv2.transform(pixels, m[i], dst=dst[i])
        else:
            cv2.transform(pixels, m[i], dst=mapped)
            np.clip(mapped, 0.0, 1.0, out=mapped)
            cv2.transform(mapped, post[i], dst=dst[i])
    return out


def _matmul(m: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose the linear map m after the affine map (a, t)."""
    return m @ a, (m @ t[:, :, None])[:, :, 0]


def _contrast_per_channel(a, t, means, factor):
    """tf.image.adjust_contrast after (a, t): the current per-channel mean is a m + t."""
    cur = (a @ means[:, :, None])[:, :, 0] + t
    f = factor[:, None]
    return a * f[:, :, None], t * f + (1 - f) * cur


def _yiq_twist(sat: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """[B,3,3] RGB map of TensorFlow's adjust_hsv_in_yiq(delta_hue=hue radians, scale_saturation=sat, scale_value=1):
    YIQ_TO_RGB @ [[1, 0, 0], [0, s cos, -s sin], [0, s sin, s cos]] @ RGB_TO_YIQ, as its kernel builds it (the
    rotation is counter-clockwise in the (I, Q) plane for a positive delta)."""
    dev = sat.device
    to_yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float32, device=dev)
    from_yiq = torch.tensor(YIQ_TO_RGB, dtype=torch.float32, device=dev)
    cos, sin = torch.cos(hue) * sat, torch.sin(hue) * sat
    m = torch.zeros(sat.shape[0], 3, 3, device=dev)
    m[:, 0, 0] = 1.0
    m[:, 1, 1], m[:, 1, 2] = cos, -sin
    m[:, 2, 1], m[:, 2, 2] = sin, cos
    return from_yiq @ m @ to_yiq
