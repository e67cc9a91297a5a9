"""Photo-like JPEG data sets for benchmarks and tests, made from numpy + OpenCV alone (no downloads).

Loader speed depends on what the decoder has to chew: image size, JPEG quality and how much fine detail
survives quantisation. Flat synthetic images (a few shapes on a plain ground) decode several times faster
than photos of the same size and would flatter the pipeline, so these images imitate the statistics that
matter: a 1/f amplitude spectrum (the power law of natural scenes, Field 1987), a few opaque objects with
sharp edges and their own texture, smooth illumination, and sensor-like grain, saved at quality 90 as in
FFCV's ImageNet files. At 500x375 they come out at about 0.5 bytes per pixel (~95 kB; ImageNet's training
JPEGs average ~110 kB at ~400x350), and decode at about the rate of a real photo of the same size.

``make_jpeg_shards`` writes an ImageNet-style prepared folder (record shards + manifest) that every loader,
bench and test path reads like the real thing.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ... import atomic
from ..shards import records


def _power_law_noise(rng: np.random.Generator, h: int, w: int, channels: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-std noise with amplitude spectrum ~ 1/f**exponent, shape (h, w, channels)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** -exponent
    amp[0, 0] = 0.0
    out = np.empty((h, w, channels), np.float32)
    for c in range(channels):
        spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
        field = np.fft.irfft2(spec, s=(h, w))
        out[:, :, c] = (field - field.mean()) / (field.std() + 1e-12)
    return out


def _random_colour_mix(rng: np.random.Generator) -> np.ndarray:
    """A 3x3 mixing matrix: natural colours are strongly correlated across channels (mostly luminance)."""
    lum = np.full((3, 1), 1.0 / np.sqrt(3.0))
    return 0.8 * lum @ rng.normal(1.0, 0.1, (1, 3)) + 0.35 * rng.normal(0, 1, (3, 3))


def photo_like_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
    """One RGB uint8 image (height, width, 3) with photo-like statistics (see the module docstring)."""
    h, w = height, width
    mix = _random_colour_mix(rng)
    base_colour = rng.uniform(60, 190, 3)
    img = base_colour + 45.0 * (_power_law_noise(rng, h, w, 3, 1.0) @ mix.T)
    # Object textures: one rougher field shared by all objects, each taking a shifted window and its own colours
    # (one FFT per image instead of one per object keeps data generation at a few images per core-second x 10).
    rough = _power_law_noise(rng, h, w, 3, 0.8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # A few objects: ellipses and polygons with their own colour and texture, opaque, with sharp edges.
    for _ in range(int(rng.integers(3, 8))):
        mask = np.zeros((h, w), np.uint8)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        size = rng.uniform(0.08, 0.45) * min(h, w)
        if rng.random() < 0.5:
            axes = (int(size), int(size * rng.uniform(0.4, 1.0)))
            cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        else:
            n = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = size * rng.uniform(0.5, 1.0, n)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA)
        alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
        texture = np.roll(rough, (int(rng.integers(h)), int(rng.integers(w))), (0, 1)) @ _random_colour_mix(rng).T
        colour = rng.uniform(20, 235, 3) + rng.uniform(15, 45) * texture
        img = img * (1 - alpha) + colour * alpha
    # Smooth illumination (vignetting / a light gradient), then grain as a real sensor adds.
    gx, gy = rng.normal(0, 0.3, 2)
    light = 1.0 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5) - 0.25 * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2))
    img = img * light[:, :, None] + rng.normal(0, rng.uniform(3.0, 6.0), (h, w, 3))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.35, 0.6))  # lens blur
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(img_rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _make_sample(args) -> records.Sample:
    """Sample `i` of a split: a pure function of (seed, split id, i), so any number of processes makes the same set."""
    seed, split, split_id, i, size, vary_size, num_classes, quality = args
    rng = np.random.default_rng([seed, split_id, i])
    w, h = size
    if vary_size:
        w, h = int(w * rng.uniform(0.8, 1.2)), int(h * rng.uniform(0.8, 1.2))
        if rng.random() < 0.25:
            w, h = h, w
    label = int(rng.integers(num_classes))
    return records.Sample(f"{split}_{i:07d}", encode_jpeg(photo_like_image(rng, w, h), quality), "jpg", label)


def make_jpeg_shards(out: str | Path, n_train: int, n_val: int, num_classes: int, size: tuple[int, int] = (500, 375),
                     seed: int = 0, train_shards: int = 8, val_shards: int = 2, quality: int = 90,
                     vary_size: bool = True, workers: int = 1) -> Path:
    """Write a prepared ImageNet-style data set of photo-like JPEGs to ``out`` (built in ``out.partial``, then
    renamed). ``size`` is (width, height) like ImageNet's typical landscape 500x375; with ``vary_size`` each
    image's sides are drawn within +-20 % of it, and a quarter are portrait, as in ImageNet. Labels are
    random: the data set exercises the pipeline, not learning. Images take ~50 ms each to make; `workers`
    processes make them in parallel, with the same result."""
    import shutil

    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    splits = {}
    for split_id, (split, n, n_shards) in enumerate((("train", n_train, train_shards), ("val", n_val, val_shards))):
        jobs = [(seed, split, split_id, i, tuple(size), vary_size, num_classes, quality) for i in range(n)]
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                samples = pool.map(_make_sample, jobs, chunksize=8)
        else:
            samples = [_make_sample(j) for j in jobs]
        splits[split] = records.write_split(staging, split, samples, max(1, min(n_shards, n)), seed + split_id)
    manifest = {
        "format": records.FORMAT,
        "dataset": "synthetic-photo-jpeg",
        "classes": [f"c{i:04d}" for i in range(num_classes)],
        "class_names": [f"class {i}" for i in range(num_classes)],
        # Variable-size images: height/width 0 say "no single stored size" (ImageNet layout).
        "image": {"height": 0, "width": 0, "channels": 3},
        "encoding": {"ext": "jpg", "lossless": False, "quality": quality,
                     "note": f"synthetic photo-like images about {size[0]}x{size[1]} (resnet_repro.data.synthetic)"},
        "splits": splits,
    }
    records.write_manifest(staging, manifest)
    atomic.replace_folder(staging, out)
    return out
