"""Image headers read without decoding: format and pixel size, and a JPEG's frame header (SOFn): components,
precision, colour model. Every image header in the package is parsed here, by one walk per format.

Callers: prepare (shards/prepare.py: ``read_header`` and ``oddity``), which needs the colour model and precision
to decide whether a source file can be stored as it is and the size to refuse decompression bombs; predict.py
(``read_header``: the same guard); and the loaders (``image_size``: augment/geometry.py, loading/gpu_decode.py),
which need only the size to draw a crop box before decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic): their segment
# holds the frame's precision, height, width and components.
SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers that stand alone, without a length: TEM, SOI and the restart markers RST0-7.
_NO_LENGTH = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


class BadImage(ValueError):
    """A source file that cannot be used as an image (undecodable, unsupported, or refused); says why."""


class JpegHeaderError(ValueError):
    """Bytes whose frame header cannot be found; says why."""


@dataclass(frozen=True)
class Frame:
    width: int  # pixels
    height: int  # pixels; 0 when the file gives it later, in a DNL marker (image_size: "unknown")
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


@dataclass
class Header:
    fmt: str  # jpeg | png | bmp | webp
    width: int
    height: int
    components: int = 3  # JPEG: colour components in the frame
    colour: str = "ycbcr"  # JPEG: ycbcr | gray | rgb | cmyk | ycck
    precision: int = 8  # JPEG: bits per sample


def read_header(data: bytes) -> Header:
    """Format and pixel size from the first bytes of an image, without decoding it."""
    if data[:3] == b"\xff\xd8\xff":
        try:
            f = read_frame(data)  # the colour model and precision too: oddity() needs them
        except JpegHeaderError as e:
            raise BadImage(str(e)) from None
        return Header("jpeg", f.width, f.height, f.components, f.colour, f.precision)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return Header("png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = int.from_bytes(data[18:22], "little", signed=True), int.from_bytes(data[22:26], "little", signed=True)
        return Header("bmp", abs(w), abs(h))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return Header("webp", int.from_bytes(data[26:28], "little") & 0x3FFF,
                          int.from_bytes(data[28:30], "little") & 0x3FFF)
        if chunk == b"VP8L":
            b = data[21:25]
            return Header("webp", 1 + (b[0] | (b[1] & 0x3F) << 8), 1 + (b[1] >> 6 | b[2] << 2 | (b[3] & 0x0F) << 10))
        if chunk == b"VP8X":
            return Header("webp", 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"))
    raise BadImage(f"not a JPEG, PNG, BMP or WebP file (starts with {data[:8].hex() or 'nothing: empty file'})")


def tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a TIFF's first image (the one OpenCV decodes) from its first directory, without decoding;
    None when `data` is not a TIFF or its directory cannot be read. Classic TIFF and BigTIFF, either byte order.
    Only `predict` reads TIFFs (prepare stores JPEG, PNG, BMP and WebP sources), and needs the size for its
    decompression-bomb check."""
    if len(data) < 16 or data[:2] not in (b"II", b"MM"):
        return None
    order = "little" if data[:2] == b"II" else "big"

    def num(at: int, size: int) -> int:
        return int.from_bytes(data[at:at + size], order)

    big = {42: False, 43: True}.get(num(2, 2))
    if big is None:
        return None
    ifd = num(8, 8) if big else num(4, 4)
    count_size, entry_size, value_at = (8, 20, 12) if big else (2, 12, 8)
    if ifd + count_size > len(data):
        return None
    found = {}
    for i in range(min(num(ifd, count_size), (len(data) - ifd - count_size) // entry_size)):
        at = ifd + count_size + i * entry_size
        tag, kind = num(at, 2), num(at + 2, 2)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3), LONG (4) or, in BigTIFF, LONG8 (16)
            found[tag] = num(at + value_at, {3: 2, 4: 4, 16: 8}.get(kind, 4))
    return (found[256], found[257]) if len(found) == 2 else None


def oddity(h: Header) -> str | None:
    """Why a file cannot be stored as it is (None for an ordinary 8-bit YCbCr/JFIF JPEG)."""
    if h.fmt != "jpeg":
        return f"{h.fmt}_not_jpeg"
    if h.colour != "ycbcr":
        return f"{h.colour}_jpeg".replace("-", "_")
    if h.precision != 8:
        return f"{h.precision}bit_jpeg"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header without decoding; None if the header is not understood
    (the caller then decodes fully, and a broken file fails there with DecodeError)."""
    if data[:2] != b"\xff\xd8" and data[:8] != b"\x89PNG\r\n\x1a\n":
        return None  # shards hold JPEG and PNG (prepare re-encodes the rest); anything else is decoded whole
    try:
        hdr = read_header(data)
    except BadImage:
        return None
    return (hdr.height, hdr.width) if hdr.height and hdr.width else None
