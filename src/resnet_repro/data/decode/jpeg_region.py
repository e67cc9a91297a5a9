"""Region-of-interest JPEG decoding: only the crop's rows and columns (libjpeg-turbo, via _jpeg_region.c).

The native helper is compiled at install time when a C compiler and libjpeg's headers are there (Debian/Ubuntu:
``libjpeg-dev``; Fedora: ``libjpeg-turbo-devel``; conda: ``libjpeg-turbo``) and loaded with ctypes. Without it
``available()`` is False and the crops decode the whole image with OpenCV instead: the same pixels, slower
(measured: 1.37 x the full decode's rate for tf_cnn crops of ~500x375 photos; tools/results/README.md).

Pixels are identical to a full decode followed by the cut, at every DCT scale: the region is widened by
``MARGIN`` columns each side before decoding, because chroma upsampling at the region's edge would otherwise
see the edge instead of the neighbouring samples (tested in tests/test_jpeg_region.py).
"""
from __future__ import annotations

import ctypes
import importlib.util

import numpy as np

MARGIN = 8  # decoded-image columns added on each side of the region, then cut off again

_lib = None
_why_not = ""


def _load():
    global _lib, _why_not
    if _lib is not None or _why_not:
        return _lib
    spec = importlib.util.find_spec("resnet_repro.data.decode._jpeg_region")
    if spec is None or not spec.origin:
        _why_not = ("the native helper is not built (reinstall with a C compiler and libjpeg's headers: "
                    "apt-get install libjpeg-dev; pip install -e .)")
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as e:
        _why_not = f"the native helper {spec.origin} does not load: {e}"
        return None
    fn = lib.rr_decode_region
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                   ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_int]
    _lib = fn
    return _lib


def available() -> bool:
    return _load() is not None


def unavailable_reason() -> str:
    """Why ``available()`` is False ('' when it is True)."""
    _load()
    return _why_not


class RegionDecodeError(RuntimeError):
    pass


def decode_region(data: bytes, channels: int, factor: int, y0: int, x0: int, y1: int, x1: int,
                  full_hw: tuple[int, int]) -> np.ndarray | None:
    """Rows [y0, y1) x columns [x0, x1) of the JPEG decoded at 1/factor scale (factor 1, 2, 4 or 8), as HWC
    uint8 (RGB for 3 channels). Coordinates are in the scaled image, whose size is ceil(full_hw / factor).

    Returns None for colour spaces libjpeg does not turn into RGB (CMYK/YCCK: decode those fully elsewhere);
    raises RegionDecodeError when libjpeg cannot decode the data."""
    fn = _load()
    if fn is None:
        raise RuntimeError(f"region decoding is unavailable: {_why_not}")
    dw = -(-full_hw[1] // factor)  # the scaled image's width, which bounds the column margin
    rx0, rx1 = max(0, x0 - MARGIN), min(dw, x1 + MARGIN)
    h = y1 - y0
    # jpeg_crop_scanline widens the columns to whole iMCUs (at most 2 x 16 pixels at full scale) on the left.
    cap = min(dw, rx1 - rx0 + 32)
    out = np.empty((h, cap, channels), np.uint8)
    start, width = ctypes.c_int(0), ctypes.c_int(0)
    msg = ctypes.create_string_buffer(256)
    status = fn(data, len(data), factor, channels, y0, rx0, h, rx1 - rx0, out.ctypes.data, cap,
                ctypes.byref(start), ctypes.byref(width), msg, len(msg))
    if status == 1:
        return None
    if status != 0:
        raise RegionDecodeError(msg.value.decode(errors="replace") or f"libjpeg status {status}")
    left = x0 - start.value
    return out[:, left:left + (x1 - x0)]
