"""Encoded image bytes -> HWC uint8 pixels on the CPU (OpenCV; libjpeg-turbo for a crop's region).

ImageNet crops decode only what they need: the crop box is drawn in full-resolution coordinates from the JPEG
header's size (no decode); libjpeg-turbo then decodes only the box's rows and columns (decode/jpeg_region.py: same
pixels, 1.37x a whole decode for tf_cnn boxes), and when the box will be shrunk by 2x or more, it decodes at
1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scale_denom; OpenCV's IMREAD_REDUCED_*), which skips most
of the inverse DCT and upsampling work; the box is mapped into the reduced image, its edges snapped to the
reduced pixel grid (they move by at most factor / 2 full-resolution pixels, under 1 % of a box that is shrunk
>= 2x). The remaining resize is then always a shrink below 2x or an enlargement, where bilinear interpolation
(as TensorFlow's resize_images in the reference recipe) hardly aliases and costs a seventh of OpenCV's area
filter (0.08 vs 0.6 ms for a ~316-pixel crop to 224, one core), which alone would eat 30 % of a 500x375 decode.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import jpeg_region

cv2.setNumThreads(1)  # one thread per worker process; parallelism comes from the processes
# An image OpenCV cannot decode is reported by its caller, naming the file or the shard and key (DecodeError);
# OpenCV's own "[ERROR] imdecode_(''): can't read header" line, once per worker, would repeat it without the name.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)


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


def decode_box(data: bytes, channels: int, box, full_hw: tuple[int, int] | None, out_hw: tuple[int, int],
               reduce: bool = True, region: bool = True) -> np.ndarray:
    """Decode only what the crop needs and return the box resized to out_hw (HWC uint8, RGB for 3 channels).

    `box` = (y, x, h, w) in the coordinates of the full-resolution image of size `full_hw` (from the header).
    With `reduce`, a JPEG whose box will shrink by >= 2x is decoded at 1/2, 1/4 or 1/8 scale (the largest
    factor not exceeding the shrink), so the remaining resize is a shrink < 2x or an enlargement. With
    `region` (and the native helper built, decode/jpeg_region.py), libjpeg decodes only the box's rows and
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
