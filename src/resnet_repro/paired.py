"""Two trained models on the same images: which images each got right, and whether the difference is chance.

A recipe choice compares two error rates on one split (val). The images are the same for both, so the two figures
are not independent draws: what tells them apart is only the images one model gets right and the other does not.
McNemar's exact test asks how likely a split of those discordant images at least as uneven would be if each were
equally likely to go either way (a fair coin): b images only the first model gets right, c only the second,
p = P(|heads - tails| >= |b - c|) for b + c tosses. It is far tighter than comparing two binomial intervals
(on 5,000 val images at 5 % error a figure's own sampling error is about 0.3 points, yet two runs of one recipe
usually share most of their mistakes). It judges the two trained models, not the recipes: a recipe difference
also has to outlast the spread between seeds (compare.py's seed groups).

`resnet-repro evaluate --out RUN/evaluation.json` records, per protocol, which images the model got right
(``top1_hits``: one bit per image in the split's order, packed, base64) and the split's identity
(``labels_sha256``: the digest of its labels in that order); `resnet-repro report RUN_A RUN_B ...` pairs the runs
whose evaluations share both.
"""
from __future__ import annotations

import base64
import hashlib
import math

import numpy as np


def pack_hits(hits) -> str:
    """A bool per image (in the split's order) -> base64 of the packed bits (one byte per 8 images)."""
    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool)).tobytes()).decode("ascii")


def unpack_hits(text: str, count: int) -> np.ndarray:
    """pack_hits' string back to `count` bools; ValueError when it does not hold exactly `count` images."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("not base64") from None
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"{len(raw)} bytes of hits for {count} images (expected {(count + 7) // 8})")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count).astype(bool)


def labels_digest(labels) -> str:
    """The identity of a split's images as evaluated: SHA-256 of its labels, in order, as little-endian int64."""
    return hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: b images only model A got right, c only model B. 1.0 when b + c == 0."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # P(X <= k) for X ~ Binomial(n, 1/2), summed exactly in integers, then doubled (two-sided), capped at 1.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(images only `a` got right, images only `b` got right)."""
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} against {b.shape[0]} images: not the same images")
    return int((a & ~b).sum()), int((b & ~a).sum())
