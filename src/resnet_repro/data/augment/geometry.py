"""Per-sample geometry on the CPU workers: decode, crop, resize, flip, erase; and the draw of colour parameters.

Per sample, numpy/OpenCV, one thread per process: training crops (TrainGeometry; the boxes in augment/boxes.py,
the decode of only what a box needs in decode/cpu.py) and the validation resize + centre crop (EvalGeometry).
Every random choice comes from the `rng` the loader passes, ``sample_rng(seed, epoch, index, stream)``
(augment/rng.py), so what a sample becomes is a pure function of those numbers, whichever worker or rank
handles it.
"""
from __future__ import annotations

import cv2
import numpy as np

from ...config import ConfigError, DataConfig
from ..decode import jpeg_region
from ..decode.cpu import cut_resize, decode, decode_box
from ..decode.header import image_size
from .boxes import inception_box, paper_box, tf_cnn_box
from .rng import FLIP_STREAM, sample_rng


IMAGENET_CROPS = ("inception", "tf_cnn", "paper")


def whole_image_reason(cfg: DataConfig) -> str:
    """Why training crops decode whole images (OpenCV) rather than only the crop's rows and columns
    (libjpeg-turbo, the native helper), or "" when they decode the crop alone: `TrainGeometry.load`'s and
    `decode_box`'s conditions, for the lines `env` and `bench loader` print."""
    if not cfg.region_decode:
        return "data.region_decode is off"
    if not jpeg_region.available():
        return jpeg_region.unavailable_reason()
    if cfg.crop not in IMAGENET_CROPS:
        return f"data.crop={cfg.crop} crops after decoding"
    return ""


class TrainGeometry:
    """Random geometry for training samples, and the draw of each sample's colour parameters.

    ``load(data, channels, rng) -> HWC uint8 of size x size``: decode + crop + resize + flip (+ erase).
    ``__call__(img, rng)``: the same for an already decoded image (small-image crops only).
    ``color_params(rng) -> float32 [P]``: the sample's colour distortion parameters (augment/color.py), shipped
    with the batch to the device; P = 0 when colour augmentation is off.
    """

    def __init__(self, cfg: DataConfig, stored_size: int):
        from .color import ColorAugment

        self.cfg = cfg
        # Train crop side: ImageNet crops default to 224 (every reference recipe); small images keep their size.
        self.size = cfg.image_size or (224 if cfg.crop in IMAGENET_CROPS and not stored_size else stored_size)
        if not self.size:
            raise ValueError("data.image_size must be set: the data set has no fixed stored image size")
        if cfg.crop not in ("pad_crop", "none", *IMAGENET_CROPS):
            raise ValueError(f"data.crop={cfg.crop!r} is not a known crop")
        self.color = ColorAugment.from_config(cfg)

    def color_params(self, rng: np.random.Generator) -> np.ndarray:
        return self.color.sample(rng)

    def crop_box(self, h: int, w: int, rng: np.random.Generator):
        """The crop box (y, x, h, w) of an h x w image, in its full-resolution pixels."""
        crop = self.cfg.crop
        if crop == "inception":
            return inception_box(h, w, rng)
        if crop == "tf_cnn":
            return tf_cnn_box(h, w, rng)
        if crop == "paper":
            return paper_box(h, w, rng, self.size)
        raise ValueError(f"data.crop={crop!r} has no crop box")

    def flip_of(self, seed: int, epoch: int, index: int) -> bool | None:
        """The flip a schedule fixes for this sample and epoch (``data.flip_schedule: alternate``), or None: the
        sample's own random draw decides (the `flip` argument of load and __call__)."""
        if not self.cfg.flip or self.cfg.flip_schedule == "random":
            return None
        return alternating_flip(seed, epoch, index)

    def draw_flip(self, rng: np.random.Generator, fixed: bool | None = None) -> bool:
        """Whether to mirror the sample: its coin from `rng`, or `fixed` where a schedule sets it (flip_of). The coin
        is drawn all the same while data.flip is on, so the draws after it (erasing) match under every schedule.
        The CPU path (_flip_erase) and the GPU path's workers (loading/gpu_decode.crop_params) both ask here."""
        coin = bool(self.cfg.flip and rng.random() < 0.5)
        return coin if fixed is None else fixed

    def load(self, data: bytes, channels: int, rng: np.random.Generator, flip: bool | None = None) -> np.ndarray:
        if self.cfg.crop not in IMAGENET_CROPS:
            return self(decode(data, channels), rng, flip)
        hw = image_size(data)
        if hw is None:  # not a JPEG/PNG header we can read: decode fully (a broken file fails here)
            return self(decode(data, channels), rng, flip)
        img = decode_box(data, channels, self.crop_box(*hw, rng), hw, (self.size, self.size), self.cfg.dct_reduce,
                         self.cfg.region_decode)
        return self._flip_erase(img, rng, flip)

    def __call__(self, img: np.ndarray, rng: np.random.Generator, flip: bool | None = None) -> np.ndarray:
        cfg = self.cfg
        if cfg.crop == "pad_crop":
            # The paper's CIFAR recipe: zero-pad `pad` pixels per side, take a random crop of the original size.
            p = cfg.pad
            h, w = img.shape[:2]
            if self.size != h or self.size != w:
                # Progressive resizing (or image_size below the stored size): shrink the whole image to the
                # epoch's side first (area filter: no aliasing) and scale the pad with it, so an early epoch sees
                # the same content and the same relative shifts at lower resolution, not a smaller window of it.
                shrunk = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
                img = shrunk.reshape(self.size, self.size, img.shape[2])  # cv2 drops a single channel's axis
                p = int(round(p * self.size / max(h, w)))
                h, w = self.size, self.size
            y, x = rng.integers(0, 2 * p + 1, size=2)
            out = np.zeros((self.size, self.size, img.shape[2]), np.uint8)
            # Copy the overlap of the crop window [y-p, y-p+size) x [x-p, x-p+size) with the image.
            y0, x0 = y - p, x - p
            sy, sx = max(0, y0), max(0, x0)
            ey, ex = min(h, y0 + self.size), min(w, x0 + self.size)
            out[sy - y0:ey - y0, sx - x0:ex - x0] = img[sy:ey, sx:ex]
            img = out
        elif cfg.crop == "none":
            img = center_crop_resize(img, self.size, self.size)
        else:
            img = cut_resize(img, self.crop_box(*img.shape[:2], rng), None, (self.size, self.size))
        return self._flip_erase(img, rng, flip)

    def _flip_erase(self, img: np.ndarray, rng: np.random.Generator, flip: bool | None = None) -> np.ndarray:
        """Flip (draw_flip: the coin, or `flip` where a schedule fixes it), then erase."""
        cfg = self.cfg
        if self.draw_flip(rng, flip):
            # cv2.flip writes a contiguous copy in microseconds; a negative-stride view would cost ~0.5 ms per
            # 224x224 image later, when the batch is stacked.
            img = cv2.flip(img, 1).reshape(img.shape)
        if cfg.random_erasing > 0 and rng.random() < cfg.random_erasing:
            img = random_erase(np.ascontiguousarray(img), rng)
        return img


def alternating_flip(seed: int, epoch: int, index: int) -> bool:
    """``data.flip_schedule: alternate``: whether sample `index` is mirrored in `epoch`. Epoch 0 takes a fair coin of
    the sample's own (FLIP_STREAM, so no other draw moves); every later epoch the opposite of the one before."""
    first = sample_rng(seed, 0, index, FLIP_STREAM).random() < 0.5
    return bool(first) != bool(epoch % 2)


def random_erase(img: np.ndarray, rng: np.random.Generator, area=(0.02, 0.4), log_ratio=(np.log(0.3), np.log(1 / 0.3))):
    """Zhong et al. 2017 random erasing: one rectangle of random area and aspect, filled with random pixels."""
    h, w, c = img.shape
    for _ in range(10):
        a = rng.uniform(*area) * h * w
        r = np.exp(rng.uniform(*log_ratio))
        eh, ew = int(round(np.sqrt(a * r))), int(round(np.sqrt(a / r)))
        if 0 < eh < h and 0 < ew < w:
            y, x = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
            img[y:y + eh, x:x + ew] = rng.integers(0, 256, size=(eh, ew, c), dtype=np.uint8)
            return img
    return img


VAL_INTERPOLATIONS = ("bilinear", "area", "tf1_bilinear")


def check_interpolation(interpolation: str) -> None:
    if interpolation not in VAL_INTERPOLATIONS:
        raise ValueError(f"data.val_interpolation={interpolation!r} is not one of {', '.join(VAL_INTERPOLATIONS)}")


def resize_to(img: np.ndarray, nh: int, nw: int, interpolation: str) -> np.ndarray:
    """Resize HWC `img` to nh x nw with data.val_interpolation's filter:
    "bilinear": OpenCV INTER_LINEAR (half-pixel centres, no anti-aliasing): Caffe's and TF >= 1.14's resize;
    "area": INTER_AREA when shrinking (an average over each output pixel's footprint), bilinear when enlarging;
    "tf1_bilinear": TensorFlow 1.x's resize_images / resize_bilinear with align_corners=False, which sampled the
    input at out * in_size / out_size (no half-pixel offset, so the image shifts by up to half an input pixel):
    what tf_cnn_benchmarks' eval ran under TF 1.12. cv2.warpAffine with that inverse map and replicated edges is
    exactly it (tests/test_golden.py: identical to TensorFlow's output)."""
    check_interpolation(interpolation)
    h, w = img.shape[:2]
    if interpolation == "tf1_bilinear":
        m = np.array([[w / nw, 0, 0], [0, h / nh, 0]], np.float64)
        out = cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
    else:
        shrink = nh < h or nw < w
        out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if interpolation == "area" and shrink
                         else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def center_crop_resize(img: np.ndarray, resize: int, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize the shorter side to `resize` (if it differs) with `interpolation` (data.val_interpolation) and take
    the central `size` x `size` crop."""
    h, w = img.shape[:2]
    if resize and min(h, w) != resize:
        scale = resize / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        img = resize_to(img, nh, nw, interpolation)
        h, w = nh, nw
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} is smaller than the crop {size}")
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


# Val crop / resize ratio when a data set of variable-size images leaves data.val_resize at 0: 224 / 256, the
# ratio of every ImageNet reference (ResNet paper, fb.resnet.torch, torchvision).
VAL_CROP_FRACTION = 0.875


class EvalGeometry:
    """Val geometry: resize the shorter side to `val_resize`, central `val_size` crop, from the full decode
    (no DCT shortcut: the reported figure uses the same pixels as ``evaluate``'s protocols)."""

    def __init__(self, cfg: DataConfig, stored_size: int):
        self.size = cfg.val_size or stored_size or 224
        self.resize = cfg.val_resize or (0 if stored_size else int(round(self.size / VAL_CROP_FRACTION)))
        self.interpolation = cfg.val_interpolation
        check_interpolation(self.interpolation)  # an unknown name fails here, naming the key
        # Refused here, at start-up, not by the first val image an epoch later.
        if stored_size and not self.resize and self.size > stored_size:
            raise ConfigError(f"config key 'data.val_size' is {cfg.val_size}, larger than the data's stored "
                              f"{stored_size}x{stored_size} images, with nothing to enlarge them (data.val_resize 0); "
                              f"set data.val_size at most {stored_size} (0: the stored size) or data.val_resize")

    def load(self, data: bytes, channels: int, rng=None) -> np.ndarray:
        return self(decode(data, channels))

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        if img.shape[0] == img.shape[1] == self.size and not self.resize:
            return img
        return center_crop_resize(img, self.resize, self.size, self.interpolation)
