"""Write the golden fixtures of tests/test_golden.py from TensorFlow itself. Not run by CI; TensorFlow is a
reference here, not a dependency of the project. Run it in a separate environment:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy opencv-python-headless matplotlib
    /tmp/tfvenv/bin/pip install --no-deps -e .    # the package, for its photo-like images (no torch needed)
    /tmp/tfvenv/bin/python tools/make_golden_fixtures.py [--photo PATH]

It writes tests/golden/ (about 1.3 MB; TensorFlow 2.21.0 wrote the committed files):

* boxes.npz — tf.image.sample_distorted_bounding_box with tf_cnn_benchmarks' training arguments
  (min_object_covered 0.1, aspect_ratio_range [0.75, 1.33], area_range [0.05, 1.0], max_attempts 100,
  use_image_if_no_bounding_boxes, no boxes), 20,000 draws for each of two image sizes: (y, x, h, w) per draw.
* color.npz — on a few photos (uint8 inputs stored): TensorFlow's adjust_brightness, adjust_contrast,
  adjust_saturation and adjust_hue, one at a time, and tf_cnn_benchmarks' distort_color in both of its paths and
  both orders, for stored parameters, each followed by distort_color's clip to [0, 1]; outputs float16.
  The default path (distort_color_in_yiq=True) called tf.contrib.image.random_hsv_in_yiq, whose op left
  TensorFlow with contrib (TF 2.0). It is REBUILT here from its kernel's maths
  (tensorflow/contrib/image/kernels/adjust_hsv_in_yiq_op.h at TF 1.12): the RGB->YIQ matrix and the rounded
  YIQ->RGB matrix printed there, the rotation [[v, 0, 0], [0, v s cos h, -v s sin h], [0, v s sin h, v s cos h]]
  with h in radians and scale_value v = 1, composed as yiq_inverse * hsv_transform * yiq and applied per pixel
  in float32, by TensorFlow ops. So that part checks our arithmetic against the kernel's definition, not against
  a run of the removed binary.
* eval.npz — tf_cnn_benchmarks' eval_image (aspect-preserving resize so that both sides are at least
  1.145 x the crop, int-truncated, then the central crop) at crop 112 (resize 128) on one photo and its transpose,
  with tf.image.resize bilinear (half-pixel centres: what OpenCV and Caffe do) and with TF 1.x's legacy
  bilinear (tf.compat.v1.image.resize_bilinear, half_pixel_centers=False: what TF 1.12's resize_images did),
  outputs rounded to uint8. The input is stored as PNG bytes (lossless).

The photos: matplotlib's sample photo grace_hopper.jpg (shipped with matplotlib, or --photo PATH), plus two
photo-like images from resnet_repro.data.sources.synthetic (deterministic, numpy + OpenCV). No downloads.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "golden"

# tf_cnn_benchmarks preprocessing.py, train_image and distort_color
MIN_OBJECT_COVERED, ASPECT, AREA, ATTEMPTS = 0.1, [0.75, 1.33], [0.05, 1.0], 100
BOX_SIZES = ((375, 500), (500, 333))  # (height, width): ImageNet's most common landscape and a portrait
BOX_DRAWS = 20000
EVAL_CROP, EVAL_SCALE = 112, 1.145

RGB_TO_YIQ = [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
YIQ_TO_RGB = [[1, 0.95617069, 0.62143257], [1, -0.2726886, -0.64681324], [1, -1.103744, 1.70062309]]


def find_photo(path: str | None) -> np.ndarray:
    if path is None:
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        if spec is None:
            sys.exit("need a photo: install matplotlib (it ships grace_hopper.jpg) or pass --photo PATH")
        path = str(Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"cannot read photo {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def make_boxes(tf) -> dict:
    out = {}
    tf.random.set_seed(12)
    for h, w in BOX_SIZES:
        boxes = np.empty((BOX_DRAWS, 4), np.int16)
        for i in range(BOX_DRAWS):
            begin, size, _ = tf.image.sample_distorted_bounding_box(
                [h, w, 3], tf.zeros([1, 0, 4]), min_object_covered=MIN_OBJECT_COVERED, aspect_ratio_range=ASPECT,
                area_range=AREA, max_attempts=ATTEMPTS, use_image_if_no_bounding_boxes=True, seed=7)
            b, s = begin.numpy(), size.numpy()
            boxes[i] = (b[0], b[1], s[0], s[1])
        assert len(np.unique(boxes, axis=0)) > BOX_DRAWS // 4, "the sampler repeated itself: seeding went wrong"
        out[f"boxes_{h}x{w}"] = boxes
    return out


def yiq_twist(tf, img, hue, sat):
    """tf.contrib.image.adjust_hsv_in_yiq(img, delta_hue=hue, scale_saturation=sat, scale_value=1), rebuilt
    from its kernel (see the module docstring)."""
    c, s = math.cos(hue) * sat, math.sin(hue) * sat
    m = tf.constant(YIQ_TO_RGB, tf.float32) @ tf.constant([[1, 0, 0], [0, c, -s], [0, s, c]], tf.float32) @ \
        tf.constant(RGB_TO_YIQ, tf.float32)
    return tf.tensordot(img, tf.transpose(m), 1)  # out[..., i] = sum_j m[i, j] img[..., j]


def distort_color(tf, img, p, yiq: bool):
    """tf_cnn_benchmarks' distort_color with its random draws replaced by p = (order, brightness delta,
    saturation factor, hue delta, contrast factor); hue in radians for the YIQ path, turns for HSV."""
    order, delta, sat, hue, con = (float(v) for v in p)

    def sat_hue(x):
        if yiq:
            return yiq_twist(tf, x, hue, sat)
        return tf.image.adjust_hue(tf.image.adjust_saturation(x, sat), hue)

    x = tf.image.adjust_brightness(img, delta)
    if order < 0.5:
        x = tf.image.adjust_contrast(sat_hue(x), con)
    else:
        x = sat_hue(tf.image.adjust_contrast(x, con))
    return tf.clip_by_value(x, 0.0, 1.0)


def make_color(tf, photo: np.ndarray) -> dict:
    from resnet_repro.data.sources.synthetic import photo_like_image

    h, w = photo.shape[:2]
    face = photo[h // 10:h // 10 + 96, w // 2 - 64:w // 2 + 48]  # face and uniform, greys and skin
    whole = cv2.resize(photo, (64, 75), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(2024)
    images = [face, whole, photo_like_image(rng, 80, 64), photo_like_image(rng, 80, 64)]
    out = {}
    for i, img in enumerate(images):
        img = np.ascontiguousarray(img)
        out[f"img{i}"] = img
        x = tf.constant(img, tf.float32) / 255.0  # as train_image: cast, / 255
        single = {  # one op each (extreme-ish arguments), then distort_color's clip
            "brightness": (tf.image.adjust_brightness, rng.choice([-1, 1]) * rng.uniform(0.06, 32 / 255)),
            "contrast": (tf.image.adjust_contrast, rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.3, 1.5)])),
            "saturation": (tf.image.adjust_saturation, rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.3, 1.5)])),
            "hue": (tf.image.adjust_hue, rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)),
        }
        for name, (op, arg) in single.items():
            out[f"img{i}_{name}_arg"] = np.float32(arg)
            out[f"img{i}_{name}"] = tf.clip_by_value(op(x, float(arg)), 0.0, 1.0).numpy().astype(np.float16)
        for path, max_hue in (("yiq", 0.2 * math.pi), ("hsv", 0.2)):
            params = []
            for order in (0, 1):
                # large hue deltas (half the range or more): a wrong unit or direction cannot hide
                p = [order, rng.uniform(-32 / 255, 32 / 255), rng.uniform(0.5, 1.5),
                     rng.choice([-1, 1]) * rng.uniform(0.5, 1.0) * max_hue, rng.uniform(0.5, 1.5)]
                params.append(p)
                out[f"img{i}_{path}_{order}"] = distort_color(tf, x, p, path == "yiq").numpy().astype(np.float16)
            out[f"img{i}_{path}_params"] = np.asarray(params, np.float32)
    return out


def tf_cnn_eval_image(tf, img: np.ndarray, legacy: bool) -> np.ndarray:
    """tf_cnn_benchmarks' eval_image on one uint8 image, crop EVAL_CROP: float resize, central crop."""
    h, w = img.shape[:2]
    ratio = max(EVAL_CROP / np.float32(h), EVAL_CROP / np.float32(w))
    rh, rw = int(np.float32(h) * ratio * np.float32(EVAL_SCALE)), int(np.float32(w) * ratio * np.float32(EVAL_SCALE))
    x = tf.constant(img, tf.float32)[None]
    if legacy:
        y = tf.compat.v1.image.resize_bilinear(x, [rh, rw], align_corners=False, half_pixel_centers=False)
    else:
        y = tf.image.resize(x, [rh, rw], method="bilinear", antialias=False)
    top, left = (rh - EVAL_CROP) // 2, (rw - EVAL_CROP) // 2
    y = y[0, top:top + EVAL_CROP, left:left + EVAL_CROP].numpy()
    return np.clip(np.rint(y), 0, 255).astype(np.uint8), (rh, rw)


def make_eval(tf, photo: np.ndarray) -> dict:
    crop = np.ascontiguousarray(photo[60:300, 150:355])  # 240 x 205: shrunk by 0.64 to shorter side 128
    ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    out = {"eval_input_png": np.frombuffer(png.tobytes(), np.uint8)}
    for name, img in (("portrait", crop), ("landscape", np.ascontiguousarray(crop.transpose(1, 0, 2)))):
        for kind, legacy in (("bilinear", False), ("tf1_bilinear", True)):
            out[f"eval_{name}_{kind}"], size = tf_cnn_eval_image(tf, img, legacy)
        out[f"eval_{name}_resized_hw"] = np.asarray(size, np.int32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", help="an RGB photo at least 300 x 400 pixels (default: matplotlib's grace_hopper.jpg)")
    args = ap.parse_args()
    import tensorflow as tf

    photo = find_photo(args.photo)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"tensorflow": np.str_(tf.__version__)}
    for name, data in (("boxes", make_boxes(tf)), ("color", make_color(tf, photo)), ("eval", make_eval(tf, photo))):
        path = OUT / f"{name}.npz"
        buf = io.BytesIO()
        np.savez_compressed(buf, **data, **meta)
        path.write_bytes(buf.getvalue())
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1e3:.0f} kB, TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
