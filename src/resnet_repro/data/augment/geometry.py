"""Augmentation, split where it is cheapest.

CPU worker side (per sample, numpy/OpenCV, one thread per process): decode and geometry — crop, resize,
flip, erase — and the draw of every per-sample random parameter, colour ones included. Every random choice
comes from ``sample_rng(seed, epoch, index, stream)``, so what a sample becomes is a pure function of those
numbers, whichever worker or rank handles it.

Device side (per batch, torch): uint8 NHWC -> float NCHW (channels_last), colour distortion (data/color.py,
driven by the parameters the workers drew) and normalization, where a GPU does them almost for free.

ImageNet crops decode only what they need: the crop box is drawn in full-resolution coordinates from the JPEG
header's size (no decode); libjpeg-turbo then decodes only the box's rows and columns (data/jpeg_region.py: same
pixels, 1.37x a whole decode for tf_cnn boxes), and when the box will be shrunk by 2x or more, it decodes at
1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scale_denom; OpenCV's IMREAD_REDUCED_*), which skips most
of the inverse DCT and upsampling work; the box is mapped into the reduced image, its edges snapped to the
reduced pixel grid (they move by at most factor / 2 full-resolution pixels, under 1 % of a box that is shrunk
>= 2x). The remaining resize is then always a shrink below 2x or an enlargement, where bilinear interpolation
(as TensorFlow's resize_images in the reference recipe) hardly aliases and costs a seventh of OpenCV's area
filter (0.08 vs 0.6 ms for a ~316-pixel crop to 224, one core), which alone would eat 30 % of a 500x375 decode.
"""
from __future__ import annotations

import math
import struct

import cv2
import numpy as np
import torch

from ..config import ConfigError, DataConfig
from . import jpeg_region
from .color import affine_pixels
from .jpeg_header import JpegHeaderError, read_frame

cv2.setNumThreads(1)  # one thread per worker process; parallelism comes from the processes

# Random streams per sample: geometry and colour draw from separate Philox keys, so switching colour
# augmentation on or off never changes the crops a run sees.
GEOMETRY_STREAM, COLOR_STREAM = 0, 1


_RNGS: dict[int, tuple[np.random.Philox, np.random.Generator]] = {}


def sample_rng(seed: int, epoch: int, index: int, stream: int = GEOMETRY_STREAM) -> np.random.Generator:
    """The random generator of one sample: Philox keyed by (seed, epoch, index), so every sample has its own
    independent stream and no state is carried between samples. `stream` is mixed into the key's first word
    (golden-ratio multiplier); stream 0 is the plain seed.

    The Generator object is reused per stream within a process: building a Philox costs ~40 us (2 % of a
    JPEG decode, twice per sample), resetting its state ~5 us, and the numbers are the same. So the generator
    is valid until the next ``sample_rng`` call for the same stream: draw what the sample needs, then move on.
    """
    s = (seed ^ (stream * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    key = np.array([s, ((epoch & 0xFFFFFFFF) << 32) | (index & 0xFFFFFFFF)], np.uint64)
    cached = _RNGS.get(stream)
    if cached is None:
        bits = np.random.Philox(key=key)
        cached = _RNGS[stream] = (bits, np.random.Generator(bits))
    else:
        # The state of a freshly built Philox(key=key): counter 0, empty output buffer.
        cached[0].state = {"bit_generator": "Philox", "state": {"counter": np.zeros(4, np.uint64), "key": key},
                           "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return cached[1]


def keep_freed_memory(large: bool = False) -> None:
    """Let glibc's malloc keep freed blocks for reuse instead of returning them to the kernel.

    Every decode allocates a fresh full-size image (~0.6 MB at 500x375) and every resize a fresh crop; above
    glibc's default 128 kB mmap threshold each one is new pages, and first-touch page faults then cost 5-40 %
    of a JPEG decode (measured: the most on VMs). With the thresholds raised, the same heap blocks are reused.
    Called in each loader worker (and by `bench loader` before timing the decode limit). No-op off glibc.

    `large`: serve blocks above glibc's 32 MB ceiling for the mmap threshold from the heap too (no mmap at
    all). Set by keep_batch_memory in the processes that run DeviceTransform on a CPU device for every batch: its float output for 64 images of
    224^2 is 38.5 MB, fresh pages on every batch otherwise; measured on the 2-core sandbox, 17.7 -> 5.2 ms per
    batch for the tf_cnn transform. CPU training itself neither gained nor lost (ResNet-20/50 compute img/s)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)  # bytes; glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 256 << 20)  # bytes of free heap kept before trimming
    if large:
        libc.mallopt(m_mmap_max, 0)  # no block is mmapped: large ones come from the heap and stay for reuse


def keep_batch_memory(device) -> None:
    """For a process that runs DeviceTransform on the CPU batch after batch (training, bench loader / train; not
    evaluate, predict or a user's script): ``keep_freed_memory(large=True)``, process-wide. Its float output (38.5
    MB at 64 x 224^2) is above glibc's mmap ceiling, so fresh pages on every batch otherwise: the tf_cnn transform
    took 17.7 ms per batch without, 5.2 ms with (2-core sandbox, see keep_freed_memory)."""
    if torch.device(device).type == "cpu":
        keep_freed_memory(large=True)


class DecodeError(RuntimeError):
    pass


# EXIF orientation is ignored everywhere (as PIL/torchvision and TensorFlow's decode_jpeg do): the header's
# size is then the decoded size, and train, val and the published pipelines see the same pixels.
_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_REDUCED = {  # (channels, factor) -> imdecode flag
    (3, 1): _COLOR, (3, 2): cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    (3, 4): cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    (3, 8): cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
    (1, 1): cv2.IMREAD_GRAYSCALE, (1, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2, (1, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (1, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _imdecode(data: bytes, channels: int, factor: int = 1) -> np.ndarray:
    """Decode at 1/factor scale; HWC uint8, BGR order for 3 channels (OpenCV's)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[(1 if channels == 1 else 3, factor)])
    if img is None:
        raise DecodeError("cannot decode image")
    return img[:, :, None] if img.ndim == 2 else img


def decode(data: bytes, channels: int) -> np.ndarray:
    """Encoded bytes -> HWC uint8 with `channels` channels (RGB order for 3)."""
    img = _imdecode(data, channels)
    return img if channels == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header without decoding; None if the header is not understood
    (the caller then decodes fully, and a broken file fails there with DecodeError)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return (h, w) if h and w else None
    if data[:2] != b"\xff\xd8":
        return None
    try:
        frame = read_frame(data)
    except JpegHeaderError:
        return None
    return (frame.height, frame.width) if frame.height and frame.width else None


# --- Crop boxes: (y, x, h, w) in full-resolution pixels of an H x W image, pure functions of the rng ----------

# torchvision RandomResizedCrop / Szegedy et al. 2015 ("Inception" crop), as fb.resnet.torch's RandomSizedCrop:
INCEPTION_AREA = (0.08, 1.0)  # fraction of the image area
INCEPTION_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))  # width / height, log-uniform
INCEPTION_TRIES = 10

# tf_cnn_benchmarks preprocessing.py train_image (its own training; the seed uses the paper crop, its note 1):
# tf.image.sample_distorted_bounding_box with
TF_MIN_OBJECT_COVERED = 0.1  # of the (implicit, whole-image) bounding box
TF_ASPECT = (0.75, 1.33)  # width / height, uniform
TF_AREA = (0.05, 1.0)  # fraction of the image area
TF_ATTEMPTS = 100

# He et al. 2015 s3.4: "the image is resized with its shorter side randomly sampled in [256, 480] for scale
# augmentation. A 224x224 crop is randomly sampled from an image or its horizontal flip".
PAPER_SHORT_SIDE = (256, 480)  # pixels, inclusive


def inception_box(h: int, w: int, rng: np.random.Generator, area=INCEPTION_AREA, log_aspect=INCEPTION_LOG_ASPECT,
                  tries: int = INCEPTION_TRIES) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: area and log-aspect uniform, 10 tries, then the central
    crop clamped to the aspect range."""
    for _ in range(tries):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_aspect))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ratio = w / h
    lo, hi = math.exp(log_aspect[0]), math.exp(log_aspect[1])
    if ratio < lo:
        cw, ch = w, int(round(w / lo))
    elif ratio > hi:
        ch, cw = h, int(round(h * hi))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _tf_random_crop(h: int, w: int, min_area_frac: float, max_area_frac: float, aspect: float,
                    rng: np.random.Generator):
    """TensorFlow's GenerateRandomCrop (kernels/image/sample_distorted_bounding_box_op.cc): the crop height is
    uniform between the heights giving the minimum and maximum area at this aspect; width = round(h x aspect);
    the offset is uniform in [0, H - h) (sic: TF never places the crop against the far edge). np.rint rounds
    half to even like lrintf. Returns None where TF returns false."""
    min_area, max_area = min_area_frac * w * h, max_area_frac * w * h
    ch = int(np.rint(math.sqrt(min_area / aspect)))
    max_h = int(np.rint(math.sqrt(max_area / aspect)))
    if np.rint(max_h * aspect) > w:
        max_h = int((w + 0.5 - 1e-7) / aspect)
        if np.rint(max_h * aspect) > w:
            max_h -= 1
    max_h = min(max_h, h)
    ch = min(ch, max_h)
    if ch < max_h:
        ch += int(rng.integers(0, max_h - ch + 1))
    cw = int(np.rint(ch * aspect))
    area = cw * ch
    if area < min_area:
        ch += 1
        cw = int(np.rint(ch * aspect))
        area = cw * ch
    if area > max_area:
        ch -= 1
        cw = int(np.rint(ch * aspect))
        area = cw * ch
    if area < min_area or area > max_area or cw > w or ch > h or cw <= 0 or ch <= 0:
        return None
    y = int(rng.integers(0, h - ch)) if ch < h else 0
    x = int(rng.integers(0, w - cw)) if cw < w else 0
    return y, x, ch, cw


def tf_cnn_box(h: int, w: int, rng: np.random.Generator, min_object_covered=TF_MIN_OBJECT_COVERED,
               aspect=TF_ASPECT, area=TF_AREA, attempts: int = TF_ATTEMPTS) -> tuple[int, int, int, int]:
    """tf.image.sample_distorted_bounding_box with use_image_if_no_bounding_boxes (our records carry no
    boxes, so the object is the whole image and "covered" means crop area / image area); after `attempts`
    failures, the whole image."""
    for _ in range(attempts):
        a = rng.uniform(*aspect)
        box = _tf_random_crop(h, w, area[0], area[1], a, rng)
        if box is not None and box[2] * box[3] >= 1 and box[2] * box[3] / (h * w) >= min_object_covered:
            return box
    return 0, 0, h, w


def paper_box(h: int, w: int, rng: np.random.Generator, size: int, short_side=PAPER_SHORT_SIDE):
    """The paper's scale augmentation as a box in the original image: resizing the whole image to shorter
    side S and cutting a random `size` crop is the same as cutting the matching (size x short/S) box and
    resizing only that (float box: the resized image's pixel grid does not fall on the original's)."""
    s = int(rng.integers(short_side[0], short_side[1] + 1))
    scale = s / min(h, w)
    rh, rw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    y, x = int(rng.integers(0, rh - size + 1)), int(rng.integers(0, rw - size + 1))
    side = size / scale
    # Rounding the resized size can put the last crop position a fraction of a pixel past the image: clamp.
    return min(y / scale, max(h - side, 0.0)), min(x / scale, max(w - side, 0.0)), side, side


def decode_box(data: bytes, channels: int, box, full_hw: tuple[int, int] | None, out_hw: tuple[int, int],
               reduce: bool = True, region: bool = True) -> np.ndarray:
    """Decode only what the crop needs and return the box resized to out_hw (HWC uint8, RGB for 3 channels).

    `box` = (y, x, h, w) in the coordinates of the full-resolution image of size `full_hw` (from the header).
    With `reduce`, a JPEG whose box will shrink by >= 2x is decoded at 1/2, 1/4 or 1/8 scale (the largest
    factor not exceeding the shrink), so the remaining resize is a shrink < 2x or an enlargement. With
    `region` (and the native helper built, data/jpeg_region.py), libjpeg decodes only the box's rows and
    columns; the pixels are the same as cutting them from the whole decode."""
    factor = 1
    jpeg = full_hw is not None and data[:2] == b"\xff\xd8"
    if reduce and jpeg:
        shrink = min(box[2] / out_hw[0], box[3] / out_hw[1])
        factor = 8 if shrink >= 8 else 4 if shrink >= 4 else 2 if shrink >= 2 else 1
    if region and jpeg and jpeg_region.available():
        # libjpeg's reduced size is ceil(full / factor)
        dhw = (-(-full_hw[0] // factor), -(-full_hw[1] // factor))
        y0, x0, y1, x1 = reduced_box(box, full_hw, dhw)
        try:
            cut = jpeg_region.decode_region(data, channels, factor, y0, x0, y1, x1, full_hw)
        except jpeg_region.RegionDecodeError as e:
            raise DecodeError(f"cannot decode image: {e}") from None
        if cut is not None:  # None: CMYK/YCCK, which the whole-image path below converts
            return resize_cut(cut, out_hw)  # RGB already
    img = cut_resize(_imdecode(data, channels, factor), box, full_hw, out_hw)
    if channels == 1:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # after the resize: a 224x224 swap costs microseconds


def reduced_box(box, full_hw: tuple[int, int], dhw: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` (y, x, h, w) in the pixels of a `full_hw` image -> (y0, x0, y1, x1) in a `dhw` decode of it (a
    reduced one when smaller): mapped with the actual ratio, rounded to whole pixels, at least one pixel."""
    y, x, bh, bw = box
    (fh, fw), (dh, dw) = full_hw, dhw
    sy, sx = dh / fh, dw / fw
    y0, x0 = min(int(round(y * sy)), dh - 1), min(int(round(x * sx)), dw - 1)
    y1, x1 = max(y0 + 1, min(dh, int(round((y + bh) * sy)))), max(x0 + 1, min(dw, int(round((x + bw) * sx))))
    return y0, x0, y1, x1


def cut_resize(img: np.ndarray, box, full_hw: tuple[int, int] | None, out_hw: tuple[int, int]) -> np.ndarray:
    """Cut `box` (given in the pixels of a `full_hw` image; None = img's own size) out of `img`, which may be
    a reduced decode of it, and resize the cut to out_hw."""
    dhw = img.shape[:2]
    y0, x0, y1, x1 = reduced_box(box, full_hw if full_hw is not None else dhw, dhw)
    return resize_cut(img[y0:y1, x0:x1], out_hw)


def resize_cut(crop: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize a cut (HWC uint8) to out_hw."""
    oh, ow = out_hw
    ch, cw = crop.shape[:2]
    if (ch, cw) == (oh, ow):
        return np.ascontiguousarray(crop)
    # Bilinear for shrinks < 2x and enlargements (little aliasing, a seventh of the area filter's cost); area
    # averaging only for a shrink that the 1/8 decode could not bring under 2x.
    interp = cv2.INTER_AREA if min(ch / oh, cw / ow) >= 2 else cv2.INTER_LINEAR
    out = cv2.resize(crop, (ow, oh), interpolation=interp)
    return out[:, :, None] if out.ndim == 2 else out


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
    ``color_params(rng) -> float32 [P]``: the sample's colour distortion parameters (data/color.py), shipped
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

    def load(self, data: bytes, channels: int, rng: np.random.Generator) -> np.ndarray:
        if self.cfg.crop not in IMAGENET_CROPS:
            return self(decode(data, channels), rng)
        hw = image_size(data)
        if hw is None:  # not a JPEG/PNG header we can read: decode fully (a broken file fails here)
            return self(decode(data, channels), rng)
        img = decode_box(data, channels, self.crop_box(*hw, rng), hw, (self.size, self.size), self.cfg.dct_reduce,
                         self.cfg.region_decode)
        return self._flip_erase(img, rng)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
        return self._flip_erase(img, rng)

    def _flip_erase(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        if cfg.flip and rng.random() < 0.5:
            # cv2.flip writes a contiguous copy in microseconds; a negative-stride view would cost ~0.5 ms per
            # 224x224 image later, when the batch is stacked.
            img = cv2.flip(img, 1).reshape(img.shape)
        if cfg.random_erasing > 0 and rng.random() < cfg.random_erasing:
            img = random_erase(np.ascontiguousarray(img), rng)
        return img


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

    def load(self, data: bytes, channels: int, rng=None) -> np.ndarray:
        return self(decode(data, channels))

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        if img.shape[0] == img.shape[1] == self.size and not self.resize:
            return img
        return center_crop_resize(img, self.resize, self.size, self.interpolation)


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
