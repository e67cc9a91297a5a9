"""Train crop boxes: (y, x, h, w) in full-resolution pixels of an H x W image, pure functions of the rng.

Drawn from the header's size before anything is decoded (augment/geometry.py: TrainGeometry.crop_box), so the
decode can be limited to the box (decode/cpu.py: decode_box).
"""
from __future__ import annotations

import math

import numpy as np

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
