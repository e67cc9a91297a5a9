"""The JPEG frame header (SOFn) read without decoding: size, components, precision, colour model.

One walk over the markers serves both callers: prepare (data/prepare.py), which needs the colour model and
precision to decide whether a source file can be stored as it is, and the loaders (augment.image_size), which
need only the size to draw a crop box before decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic): their segment
# holds the frame's precision, height, width and components.
SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers that stand alone, without a length: TEM, SOI and the restart markers RST0-7.
_NO_LENGTH = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


class JpegHeaderError(ValueError):
    """Bytes whose frame header cannot be found; says why."""


@dataclass(frozen=True)
class Frame:
    width: int  # pixels
    height: int  # pixels; 0 when the file gives it later, in a DNL marker (augment.image_size: "unknown")
    components: int
    colour: str  # ycbcr | gray | rgb | cmyk | ycck | "<n>-component"
    precision: int  # bits per sample


def _colour(components: int, ids: bytes, jfif: bool, adobe: int | None) -> str:
    """libjpeg's rules: JFIF => YCbCr; else the Adobe APP14 transform flag; else component ids 'R','G','B'."""
    if components == 1:
        return "gray"
    if components == 3:
        rgb = adobe == 0 if adobe is not None else (not jfif and ids == b"RGB")
        return "rgb" if rgb else "ycbcr"
    if components == 4:
        return "ycck" if adobe == 2 else "cmyk"
    return f"{components}-component"


def read_frame(data: bytes) -> Frame:
    """The frame header of the JPEG in ``data`` (which starts with SOI, FF D8); JpegHeaderError if there is none
    before the image data starts (truncated, or not a JPEG)."""
    i, n = 2, len(data)
    jfif, adobe = False, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise JpegHeaderError(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header came first
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:  # a segment's length counts its own two bytes: this is not a JPEG
            break
        if marker == 0xE0 and length >= 7 and data[i + 4:i + 9] == b"JFIF\0":
            jfif = True
        elif marker == 0xEE and data[i + 4:i + 9] == b"Adobe" and length >= 14 and i + 16 <= n:
            adobe = data[i + 15]
        elif marker in SOF:
            seg = data[i + 4:i + 2 + length]
            if len(seg) < 6:
                break
            nc = seg[5]
            ids = bytes(seg[6 + 3 * k] for k in range(nc) if 6 + 3 * k < len(seg))
            return Frame(width=(seg[3] << 8) | seg[4], height=(seg[1] << 8) | seg[2], components=nc,
                         colour=_colour(nc, ids, jfif, adobe), precision=seg[0])
        i += 2 + length
    raise JpegHeaderError("JPEG without a readable frame header (truncated or not a JPEG)")
