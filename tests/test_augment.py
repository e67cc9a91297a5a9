"""ImageNet train geometry (data/augment/geometry.py): header sizes, the three crop samplers, DCT-reduced decoding,
determinism per (seed, epoch, index), colour parameters in the batch, and bad JPEGs at train time."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from resnet_repro.config import DataConfig
from resnet_repro.data.augment.boxes import inception_box, paper_box, tf_cnn_box
from resnet_repro.data.augment.geometry import EvalGeometry, TrainGeometry
from resnet_repro.data.augment.rng import sample_rng
from resnet_repro.data.decode import cpu, jpeg_region
from resnet_repro.data.decode.cpu import DecodeError, decode, decode_box
from resnet_repro.data.decode.header import image_size
from resnet_repro.data.loading.loader import BatchDataset, Job
from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.sources.synthetic import encode_jpeg, photo_like_image


def jpeg(w: int, h: int, seed: int = 0, **kw) -> bytes:
    return encode_jpeg(photo_like_image(np.random.default_rng(seed), w, h), **kw)


# --- header ------------------------------------------------------------------------------------------------

def test_image_size_reads_jpeg_and_png_headers():
    img = photo_like_image(np.random.default_rng(1), 61, 47)
    assert image_size(encode_jpeg(img)) == (47, 61)
    ok, prog = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_size(prog.tobytes()) == (47, 61)
    ok, gray = cv2.imencode(".jpg", img[:, :, 0])
    assert image_size(gray.tobytes()) == (47, 61)
    ok, png = cv2.imencode(".png", img)
    assert image_size(png.tobytes()) == (47, 61)
    assert image_size(b"not an image at all") is None
    assert image_size(encode_jpeg(img)[:20]) is None  # cut before the frame header


# --- crop samplers -----------------------------------------------------------------------------------------

def test_inception_box_ranges_and_fallback():
    rng = np.random.default_rng(0)
    h, w = 375, 500
    areas, aspects = [], []
    for _ in range(2000):
        y, x, ch, cw = inception_box(h, w, rng)
        assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w
        areas.append(ch * cw / (h * w))
        aspects.append(cw / ch)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert 0.74 <= aspects.min() and aspects.max() <= 1.34 + 0.01
    # log-uniform aspect: on a square image (no side favoured) the log ratios centre on 0
    square = np.array([(lambda b: b[3] / b[2])(inception_box(400, 400, rng)) for _ in range(2000)])
    assert abs(np.log(square).mean()) < 0.02
    # An image far outside the aspect range: every try fails -> centre crop clamped to aspect 4/3.
    y, x, ch, cw = inception_box(10, 1000, np.random.default_rng(0))
    assert (ch, cw) == (10, 13) and x == (1000 - 13) // 2 and y == 0


def test_tf_cnn_box_follows_tensorflow_sample_distorted_bounding_box():
    rng = np.random.default_rng(0)
    h, w = 375, 500
    boxes = np.array([tf_cnn_box(h, w, rng) for _ in range(3000)])
    y, x, ch, cw = boxes.T
    area = ch * cw / (h * w)
    assert area.min() >= 0.1  # min_object_covered of the whole-image box dominates area_range's 0.05
    assert area.max() <= 1.0
    assert np.all(y + ch <= h) and np.all(x + cw <= w)
    # TF draws offsets in [0, H - h) (never flush with the far edge) unless the crop spans the image.
    assert np.all((y < h - ch) | (ch == h)) and np.all((x < w - cw) | (cw == w))
    aspect = cw / ch
    assert aspect.min() > 0.74 and aspect.max() < 1.34
    # Aspect is uniform (not log-uniform) in [0.75, 1.33]: its mean sits near the middle, 1.04.
    assert abs(aspect.mean() - 1.04) < 0.03
    # Height uniform between the min- and max-area heights at each aspect: many crops are large.
    assert 0.35 < area.mean() < 0.65


def test_tf_cnn_box_single_attempt_matches_a_hand_computed_case():
    # aspect 1.0 on a 100x100 image: height uniform in [round(sqrt(0.05e4)), 100] = [22, 100], width = height.
    class Fixed:
        def __init__(self):
            self.calls = []

        def uniform(self, lo, hi):
            return 1.0  # aspect = 1.0

        def integers(self, lo, hi):
            self.calls.append((lo, hi))
            return hi - 1

    rng = Fixed()
    y, x, ch, cw = tf_cnn_box(100, 100, rng)
    assert rng.calls[0] == (0, 100 - 22 + 1)  # height increment over the closed range [0, 78]
    assert (ch, cw) == (100, 100) and (y, x) == (0, 0)  # full size: no offset draws


def test_paper_box_is_a_224_crop_of_the_image_resized_to_short_side_256_to_480():
    rng = np.random.default_rng(0)
    for _ in range(500):
        y, x, ch, cw = paper_box(375, 500, rng, 224)
        s = 224 * 375 / ch  # the shorter side the crop implies
        assert 256 - 1e-6 <= s <= 480 + 1e-6 and ch == cw
        assert 0 <= y and y + ch <= 375 + 1e-6 and 0 <= x and x + cw <= 500 + 1e-6


# --- DCT-domain reduced decoding ---------------------------------------------------------------------------

# Pixel difference bounds, levels of 255, on a 1600x1200 photo-like image with per-pixel grain (harsher than a
# camera image, which is smooth at the pixel scale): DCT-domain 1/f decode + bilinear vs full decode + area.
MEAN_BOUND, P99_BOUND = 4.5, 20  # measured: mean 2.7-3.4, p99 11-14 (bilinear alone, no reduction: 1.2, 7)

@pytest.mark.parametrize("region", [False, True])
def test_dct_reduced_decode_is_close_to_full_decode_and_resize(monkeypatch, region):
    """The reduced decode cuts the box on the reduced pixel grid: each edge moves by at most factor / 2
    full-resolution pixels (< 1 % of a box that is shrunk >= 2x, immaterial for a random crop). Against a full
    decode + area resize of that same box, the pixels differ by about a level or two. The same with the whole
    image decoded (OpenCV) and with only the box decoded (region=True, the native helper)."""
    if region and not jpeg_region.available():
        pytest.skip(jpeg_region.unavailable_reason())
    data = jpeg(1600, 1200, seed=2)
    used = []
    real, real_region = cpu._imdecode, jpeg_region.decode_region
    monkeypatch.setattr(cpu, "_imdecode", lambda d, c, f=1: used.append(f) or real(d, c, f))
    monkeypatch.setattr(jpeg_region, "decode_region", lambda d, c, f, *a: used.append(f) or real_region(d, c, f, *a))
    full = decode(data, 3)
    for box, factor in [((100, 150, 1000, 1000), 4), ((0, 0, 1200, 1600), 4), ((300, 200, 500, 700), 2),
                        ((10, 20, 300, 300), 1), ((0, 0, 1200, 1200), 4), ((50, 60, 1190, 1500), 4),
                        ((3, 5, 1197, 1590), 4)]:
        used.clear()
        got = decode_box(data, 3, box, (1200, 1600), (224, 224), region=region)
        assert used == [factor]
        y, x, bh, bw = box
        y0, x0, y1, x1 = (int(round(v / factor)) * factor for v in (y, x, y + bh, x + bw))
        assert max(abs(y0 - y), abs(x0 - x), abs(y1 - y - bh), abs(x1 - x - bw)) <= factor / 2
        want = cv2.resize(full[y0:y1, x0:x1], (224, 224), interpolation=cv2.INTER_AREA)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert got.shape == (224, 224, 3)
        assert diff.mean() < MEAN_BOUND, (box, diff.mean())
        assert np.percentile(diff, 99) < P99_BOUND, (box, np.percentile(diff, 99))
    used.clear()
    decode_box(data, 3, (100, 150, 1000, 1000), (1200, 1600), (224, 224), reduce=False, region=region)
    assert used == [1]


def test_reduced_decode_maps_the_box_into_the_reduced_image():
    # A white square on black: the crop of exactly that square must come out white at every reduction.
    img = np.zeros((800, 1000, 3), np.uint8)
    img[200:600, 400:800] = 255
    data = encode_jpeg(img, quality=95)
    for box in [(200, 400, 400, 400), (216, 416, 368, 368)]:
        out = decode_box(data, 3, box, (800, 1000), (64, 64))
        assert out[4:-4, 4:-4].min() > 200, box


# --- TrainGeometry -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop", ["inception", "tf_cnn", "paper"])
def test_train_geometry_from_bytes_matches_geometry_of_the_decoded_image(crop):
    """Without DCT reduction, cropping from the header size is exactly the crop of the full decode."""
    cfg = DataConfig(crop=crop, image_size=96, dct_reduce=False)
    geo = TrainGeometry(cfg, 0)
    data = jpeg(220, 160, seed=3)
    for i in range(8):
        a = geo.load(data, 3, sample_rng(0, 1, i))
        b = geo(decode(data, 3), sample_rng(0, 1, i))
        assert a.shape == (96, 96, 3) and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)


def test_train_geometry_is_a_pure_function_of_seed_epoch_index():
    geo = TrainGeometry(DataConfig(crop="inception", image_size=64), 0)
    data = jpeg(200, 150, seed=4)
    a = geo.load(data, 3, sample_rng(7, 2, 5))
    geo.load(data, 3, sample_rng(7, 2, 6))  # another sample in between changes nothing
    np.testing.assert_array_equal(a, geo.load(data, 3, sample_rng(7, 2, 5)))
    others = {geo.load(data, 3, sample_rng(7, e, 5)).tobytes() for e in range(6)}
    assert len(others) == 6


def test_alternating_flip_schedule_mirrors_each_sample_every_other_epoch():
    """data.flip_schedule=alternate: a fair coin per sample in epoch 0, then the opposite each epoch; every other
    draw of the sample (crop, erasing) is the same as under the random schedule, and flip=false still never flips."""
    from resnet_repro.data.augment.geometry import alternating_flip

    first = [alternating_flip(5, 0, i) for i in range(2000)]
    assert 900 < sum(first) < 1100  # a fair coin per sample (seeded: the same 2000 coins every run)
    for i in range(50):
        assert [alternating_flip(5, e, i) for e in range(6)] == [first[i], not first[i]] * 3
    assert [alternating_flip(6, 0, i) for i in range(2000)] != first  # the run's seed chooses the coins

    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    geo = {s: TrainGeometry(DataConfig(crop="inception", image_size=24, random_erasing=0.5, flip_schedule=s), 0)
           for s in ("random", "alternate")}
    assert geo["random"].flip_of(5, 1, 0) is None
    for epoch in range(3):
        for i in range(20):
            fixed = geo["alternate"].flip_of(5, epoch, i)
            assert fixed == alternating_flip(5, epoch, i)
            rng = sample_rng(5, epoch, i)
            alt, after_alt = geo["alternate"](img, rng, fixed), rng.random()
            rng = sample_rng(5, epoch, i)
            _, after_rnd = geo["random"](img, rng), rng.random()
            assert after_alt == after_rnd  # the same number of draws: crops and erasing line up
            # Re-run the random schedule with the alternate one's flip forced: the same image, pixel for pixel.
            rng = sample_rng(5, epoch, i)
            assert np.array_equal(alt, geo["random"](img, rng, fixed))
    plain = TrainGeometry(DataConfig(crop="none", image_size=40, flip_schedule="alternate"), 0)  # flip alone
    for epoch in range(4):
        fixed = plain.flip_of(5, epoch, 3)
        assert np.array_equal(plain(img, sample_rng(5, epoch, 3), fixed), img[:, ::-1] if fixed else img)
    off = TrainGeometry(DataConfig(crop="none", image_size=40, flip=False, flip_schedule="alternate"), 0)
    assert off.flip_of(5, 1, 0) is None and np.array_equal(off(img, sample_rng(5, 1, 0)), img)


def test_sample_rng_reuse_gives_fresh_philox_streams():
    for seed, epoch, index, stream in [(0, 0, 0, 0), (3, 2, 1, 0), (3, 2, 1, 1), (2**40, 7, 2**31, 1)]:
        s = (seed ^ (stream * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
        key = np.array([s, (epoch << 32) | index], np.uint64)
        want = np.random.Generator(np.random.Philox(key=key)).random(9)
        sample_rng(1, 1, 1, stream).random(3)  # leave the cached generator mid-stream
        np.testing.assert_array_equal(sample_rng(seed, epoch, index, stream).random(9), want)
    assert sample_rng(0, 0, 5, 0).random() != sample_rng(0, 0, 5, 1).random()


def test_odd_images_come_out_at_the_train_size():
    geo = TrainGeometry(DataConfig(crop="inception", image_size=64), 0)
    img = photo_like_image(np.random.default_rng(5), 90, 40)
    gray = cv2.imencode(".jpg", img[:, :, 0])[1].tobytes()
    png = cv2.imencode(".png", img)[1].tobytes()
    tiny = jpeg(20, 12, seed=6)
    portrait = jpeg(50, 300, seed=7)
    for data in (gray, png, tiny, portrait):
        for i in range(4):
            assert geo.load(data, 3, sample_rng(0, 0, i)).shape == (64, 64, 3)
    with pytest.raises(DecodeError):
        geo.load(b"\xff\xd8\xff\xe0 garbage", 3, sample_rng(0, 0, 0))


def test_an_undecodable_image_is_one_error_and_no_opencv_log_line(capfd):
    """The caller names the file or shard and key; OpenCV's own "[ERROR] imdecode_" line, printed by every
    worker that meets the file, said the same without the name."""
    for data in (b"GIF89a" + bytes(20), b"\xff\xd8\xff\xe0" + bytes(100), b"BM" + bytes(60)):
        with pytest.raises(DecodeError, match="cannot decode image"):
            decode(data, 3)
    assert capfd.readouterr().err == ""


def test_eval_geometry_defaults_to_256_then_224_for_variable_size_images():
    geo = EvalGeometry(DataConfig(), 0)
    assert (geo.resize, geo.size) == (256, 224)
    out = geo.load(jpeg(300, 260, seed=8), 3)
    assert out.shape == (224, 224, 3)
    geo = EvalGeometry(DataConfig(val_resize=292, val_size=256), 0)
    assert geo.load(jpeg(300, 260, seed=8), 3).shape == (256, 256, 3)


# --- batches: colour parameters, bad samples ---------------------------------------------------------------

@pytest.fixture
def jpeg_shards(tmp_path):
    samples = [records.Sample(f"s{i:03d}", jpeg(120 + 4 * i, 90, seed=i), "jpg", i % 3) for i in range(12)]
    samples[5] = records.Sample("s005", b"\xff\xd8\xff\xdb" + bytes(300), "jpg", 2)  # broken after "prepare"
    entry = records.write_split(tmp_path, "train", samples, 2, 0)
    records.write_manifest(tmp_path, {"format": records.FORMAT, "dataset": "t", "classes": ["a", "b", "c"],
                                      "image": {"height": 0, "width": 0, "channels": 3}, "splits": {"train": entry}})
    return RecordReader(tmp_path, "train")


def test_batches_carry_colour_params_and_replace_bad_jpegs_deterministically(jpeg_shards, capsys):
    reader = jpeg_shards
    bad_index = int(np.flatnonzero(reader.keys == "s005")[0])
    cfg = DataConfig(crop="tf_cnn", color="tf_cnn", image_size=48)
    ds = BatchDataset(reader, TrainGeometry(cfg, 0), 3, seed=1, train=True)
    idx = np.arange(len(reader))
    x, y, bad, params = ds[Job(0, 0, idx)]
    assert x.shape == (12, 48, 48, 3) and params.shape == (12, 5) and bad == 1
    assert "s005" in capsys.readouterr().err
    x2, y2, bad2, params2 = ds[Job(0, 0, idx)]
    assert bad2 == 1 and (x2 == x).all() and (y2 == y).all() and (params2 == params).all()
    # Colour draws come from their own stream: switching colour off leaves the images as they were.
    plain = BatchDataset(reader, TrainGeometry(DataConfig(crop="tf_cnn", image_size=48), 0), 3, seed=1, train=True)
    x3, _, _, p3 = plain[Job(0, 0, idx)]
    assert (x3 == x).all() and p3.shape == (12, 0)
    # Other epochs draw other parameters.
    assert not (ds[Job(1, 0, idx)][3] == params).all()
    good = [i for i in range(len(reader)) if i != bad_index]
    assert len(set(map(tuple, params[good].tolist()))) == len(good)


HEAP_PROBE = """
import sys
import numpy as np
from resnet_repro.data.loading.memory import keep_freed_memory
if sys.argv[1] == "transform":  # building a CPU device transform alone (evaluate, predict, a user's script)
    import torch
    from resnet_repro.config import DataConfig
    from resnet_repro.data.augment.device import DeviceTransform
    DeviceTransform(DataConfig(), 3, torch.device("cpu"))
elif sys.argv[1] == "batches":  # a process that transforms every batch on the CPU (train, bench)
    import torch
    from resnet_repro.data.loading.memory import keep_batch_memory
    keep_batch_memory(torch.device("cpu"))
elif sys.argv[1] != "default":
    keep_freed_memory(large=sys.argv[1] == "large")
a = np.empty(40 << 20, np.uint8)  # above glibc's 32 MB ceiling for the mmap threshold
a[::4096] = 1
lo, hi = next(tuple(int(v, 16) for v in line.split()[0].split("-")) for line in open("/proc/self/maps")
              if line.rstrip().endswith("[heap]"))
print(lo <= a.ctypes.data < hi)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc/self/maps")
def test_keep_freed_memory_large_serves_big_blocks_from_the_heap():
    """A CPU device transform's 38.5 MB output batch is heap memory with large=True (which keep_batch_memory sets
    in training's process on a CPU device), fresh pages otherwise (and where a DeviceTransform is only built)."""
    def in_heap(mode):
        r = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert in_heap("default") == "False"
    assert in_heap("small") == "False"  # the 32 MB threshold alone still mmaps a 40 MB block
    assert in_heap("large") == "True"
    assert in_heap("transform") == "False"
    assert in_heap("batches") == "True"
