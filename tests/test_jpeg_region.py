"""Region-of-interest JPEG decoding (data/decode/jpeg_region.py + _jpeg_region.c): the rows and columns it returns are
the pixels of a whole decode, at every DCT scale and chroma layout; train crops come out bit-identical with and
without it; CMYK falls back; broken data is a DecodeError."""
from __future__ import annotations

import io
import shutil
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet_repro.config import DataConfig
from resnet_repro.data.augment.geometry import TrainGeometry
from resnet_repro.data.augment.rng import sample_rng
from resnet_repro.data.decode import cpu, jpeg_region
from resnet_repro.data.decode.cpu import DecodeError, decode_box
from resnet_repro.data.decode.header import image_size
from resnet_repro.data.sources.synthetic import photo_like_image

needs_helper = pytest.mark.skipif(not jpeg_region.available(), reason=jpeg_region.unavailable_reason())

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
_REDUCED_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def encode(img: np.ndarray, sampling: int | None = None, progressive: bool = False, quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    if sampling is not None:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    ok, buf = cv2.imencode(".jpg", img, params)
    assert ok
    return buf.tobytes()


def whole(data: bytes, channels: int, factor: int) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), (_REDUCED_GRAY if channels == 1 else _REDUCED)[factor])
    return img[:, :, None] if channels == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def test_the_native_helper_is_built_where_a_compiler_and_libjpeg_headers_exist():
    """`pip install` builds it when it can; where it could, a missing helper is a build regression, not a
    reason to skip every test below."""
    include = Path(sysconfig.get_config_var("INCLUDEDIR") or "/usr/include")
    headers = any((d / "jpeglib.h").exists() for d in (Path("/usr/include"), Path("/usr/local/include"), include))
    if not (headers and (shutil.which("cc") or shutil.which("gcc"))):
        pytest.skip("no C compiler or no jpeglib.h here: the install falls back to OpenCV decoding")
    assert jpeg_region.available(), jpeg_region.unavailable_reason()


@needs_helper
@pytest.mark.parametrize("layout", ["420", "422", "444", "gray", "progressive"])
def test_a_region_is_the_same_pixels_as_the_whole_decode_at_every_scale(layout):
    rng = np.random.default_rng(0)
    img = photo_like_image(rng, 531, 397)  # sizes that are not multiples of an iMCU
    sampling = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}.get(layout)
    data = encode(img[:, :, 0] if layout == "gray" else img, sampling, progressive=layout == "progressive")
    full_hw = image_size(data)
    for channels in (3, 1):
        for factor in (1, 2, 4, 8):
            ref = whole(data, channels, factor)
            dh, dw = ref.shape[:2]
            # random rectangles, plus the whole image and rectangles touching every edge
            rects = [(0, 0, dh, dw), (0, dw - 1, 1, dw), (dh - 1, 0, dh, 1), (dh // 3, dw // 3, dh, dw)]
            for _ in range(25):
                y0, x0 = int(rng.integers(0, dh)), int(rng.integers(0, dw))
                rects.append((y0, x0, int(rng.integers(y0 + 1, dh + 1)), int(rng.integers(x0 + 1, dw + 1))))
            for y0, x0, y1, x1 in rects:
                got = jpeg_region.decode_region(data, channels, factor, y0, x0, y1, x1, full_hw)
                assert got.shape == (y1 - y0, x1 - x0, channels)
                np.testing.assert_array_equal(got, ref[y0:y1, x0:x1], err_msg=f"{layout} c={channels} "
                                              f"1/{factor} rows {y0}:{y1} cols {x0}:{x1}")


@needs_helper
@pytest.mark.parametrize("crop", ["inception", "tf_cnn", "paper"])
def test_train_crops_are_bit_identical_with_and_without_region_decoding(crop):
    """The loader's crops (DCT reduction on, random boxes of every size) do not depend on which decoder ran."""
    imgs = [encode(photo_like_image(np.random.default_rng(s), w, h)) for s, (w, h) in
            enumerate([(500, 375), (375, 500), (1600, 1200), (333, 250)])]
    on = TrainGeometry(DataConfig(crop=crop, image_size=224, region_decode=True), 0)
    off = TrainGeometry(DataConfig(crop=crop, image_size=224, region_decode=False), 0)
    for i in range(40):
        data = imgs[i % len(imgs)]
        a, b = on.load(data, 3, sample_rng(3, 0, i)), off.load(data, 3, sample_rng(3, 0, i))
        assert a.shape == (224, 224, 3) and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b, err_msg=f"{crop} sample {i}")


@needs_helper
def test_region_decoding_is_used_for_jpeg_crops(monkeypatch):
    """Guards the fast path itself: a JPEG crop goes through the region decoder, not the whole-image one."""
    calls = []
    monkeypatch.setattr(cpu, "_imdecode", lambda *a: calls.append("whole"))
    data = encode(photo_like_image(np.random.default_rng(1), 300, 200))
    out = decode_box(data, 3, (10, 20, 150, 180), (200, 300), (64, 64))
    assert out.shape == (64, 64, 3) and calls == []


@needs_helper
def test_cmyk_jpegs_fall_back_to_the_whole_image_decoder():
    pil = pytest.importorskip("PIL.Image")
    rgb = photo_like_image(np.random.default_rng(2), 120, 90)
    buf = io.BytesIO()
    pil.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    assert jpeg_region.decode_region(data, 3, 1, 0, 0, 90, 120, (90, 120)) is None
    box = (5, 7, 60, 80)
    a = decode_box(data, 3, box, (90, 120), (32, 32), region=True)
    np.testing.assert_array_equal(a, decode_box(data, 3, box, (90, 120), (32, 32), region=False))


@needs_helper
def test_broken_jpegs_are_decode_errors_and_bad_rectangles_are_refused():
    data = encode(photo_like_image(np.random.default_rng(3), 200, 150))
    broken = data[:200] + b"\xff\xd8" + bytes(300)  # a second SOI inside the headers
    with pytest.raises(DecodeError, match="cannot decode"):
        decode_box(broken, 3, (0, 0, 100, 100), (150, 200), (32, 32))
    with pytest.raises(jpeg_region.RegionDecodeError, match="outside"):
        jpeg_region.decode_region(data, 3, 1, 100, 0, 151, 10, (150, 200))
