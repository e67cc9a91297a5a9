"""The held-out validation split, one mechanism for every importer (Fashion-MNIST, CIFAR, `prepare folder`).

A data set that ships two splits (training images and an official test set) becomes three: ``train``, ``val``
(held out of the official training images) and ``test`` (the official test set, untouched). Recipe choices are
made on ``val``; ``test`` is scored once, when a run ends (training/finish.py), so that the figure a run reports was not
used to choose the recipe. ImageNet keeps its two (its ``val`` is ILSVRC-2012 val, the published protocol).

The hold-out is stratified by class and fixed by a seed: class c gives ``sizes[c]`` images, chosen by
``numpy.random.default_rng(seed).permutation(len(group))`` drawn once per class in class order, over the class's
images in source order. ``record`` returns what the manifest stores under ``"holdout"``: the seed, the rule,
the per-class counts and the indices held out (positions in the source order the manifest's ``index_order``
names), so the split can be checked, and rebuilt, from the manifest alone.
"""
from __future__ import annotations

import numpy as np

# The manifest's vocabulary (shards/records.py writes the manifest; importers fill these in):
#   "holdout": {"split": "val", "from": <the source's training images>, "index_order": ..., "seed": ...,
#               "size": ..., "counts_per_class": [...], "rule": ..., "indices": [...]}
#   "evaluation_split": the split published figures are measured on ("test"; ImageNet: "val"; None for a
#                       folder of images with no published protocol)
#   "selection_split": the split recipe choices are made on ("val")
SPLIT = "val"


def split_fields(evaluation: str | None, selection: str | None, held: dict | None, splits: dict) -> dict:
    """The manifest's split vocabulary (above), written the same way by every importer."""
    return {"evaluation_split": evaluation, "selection_split": selection, "holdout": held, "splits": splits}


class HoldoutError(ValueError):
    pass


def sizes_for_total(counts: list[int] | np.ndarray, size: int) -> list[int]:
    """Per-class hold-out sizes summing to exactly `size`, proportional to the class counts (largest remainder;
    ties to the lower class index). Balanced classes get equal shares: 6,000 x 10 classes, 5,000 -> 500 each."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 <= size < total:
        raise HoldoutError(f"a hold-out of {size} images must be below the {total} training images")
    exact = counts * size / max(total, 1)
    sizes = np.floor(exact).astype(np.int64)
    left = size - int(sizes.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - sizes[c]), c))
    for c in order[:left]:
        sizes[c] += 1
    return sizes.tolist()


def sizes_for_fraction(counts: list[int] | np.ndarray, fraction: float) -> list[int]:
    """Per-class hold-out sizes: `fraction` of each class, rounded per class (`prepare folder --val-fraction`)."""
    if not 0 <= fraction < 1:
        raise HoldoutError(f"hold-out fraction {fraction}: must be in [0, 1)")
    return [int(round(fraction * int(n))) for n in counts]


def pick(labels: np.ndarray, sizes: list[int], seed: int) -> np.ndarray:
    """Sorted indices (into `labels`, source order) of the held-out images: `sizes[c]` of class c, stratified."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, n in enumerate(sizes):
        group = np.flatnonzero(labels == c)
        if n:
            chosen.append(group[rng.permutation(len(group))[:n]])
        elif len(group):
            rng.permutation(len(group))  # drawn anyway: a class's choice never depends on another's size
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def holdout(labels: np.ndarray, num_classes: int, seed: int, size: int | None = None,
            fraction: float | None = None) -> tuple[np.ndarray, dict]:
    """(held-out indices, the manifest's "holdout" record without "from" / "index_order") for `size` images in
    all, or `fraction` of each class."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if size is not None:
        sizes = sizes_for_total(counts, size)
        rule = f"{size} of the {int(counts.sum())} images, split over the classes in proportion (largest remainder)"
    else:
        sizes = sizes_for_fraction(counts, fraction or 0.0)
        rule = f"round({fraction} x the class's images) of each class"
    idx = pick(labels, sizes, seed)
    return idx, {"split": SPLIT, "seed": int(seed), "size": int(len(idx)), "counts_per_class": sizes,
                 "rule": f"stratified by class: {rule}; per class, in class order, numpy.random.default_rng({seed})"
                         ".permutation(images of the class in index_order)[:count]",
                 "indices": idx.tolist()}
