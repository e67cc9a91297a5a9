"""Two trained models on the same images: which images each got right, and whether the difference is chance.

A recipe choice compares two error rates on one split (val). The images are the same for both, so the two figures
are not independent draws: what tells them apart is only the images one model gets right and the other does not.
McNemar's exact test asks how likely a split of those discordant images at least as uneven would be if each were
equally likely to go either way (a fair coin): b images only the first model gets right, c only the second,
p = P(|heads - tails| >= |b - c|) for b + c tosses. It is far tighter than comparing two binomial intervals
(on 5,000 val images at 5 % error a figure's own sampling error is about 0.3 points, yet two runs of one recipe
usually share most of their mistakes). It judges the two trained models, not the recipes: a recipe difference
also has to outlast the spread between seeds (compare.py's seed groups).

Where the outcomes are recorded: a run's results.json, for the val and test splits as training scored them at its
end (each protocol's ``top1_hits``: one bit per image in the split's order, packed, base64; each split's
``labels_sha256``: the digest of its labels in that order), and `resnet-repro evaluate --out RUN/evaluation.json`,
for the split and protocols it scored. `resnet-repro report RUN_A RUN_B ...` sets each run against the first one
named on every (split, protocol) both recorded on the same images (`paired_lines`); a run's own results.json comes
before its evaluation.json where both have one.
"""
from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .report_inputs import ReportError


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


# --- Runs image by image (report RUN_A RUN_B ...) -------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """Which images of a split one protocol got right, with what it is checked and labelled by."""
    hits: np.ndarray
    top1_err: float
    digest: str  # labels_digest of the split
    trained_on: bool  # the run trained on these images (a final run's val): not a held-out comparison
    description: str | None  # evaluate's geometry; None for the training's own protocol


def _read(hits, count, where: str, top1_err) -> np.ndarray:
    if not isinstance(count, int) or isinstance(count, bool) or not isinstance(top1_err, (int, float)):
        raise ReportError(f"{where}: top1_hits without a whole image count and a top-1 error beside it; restore the "
                          "file or score the run again (resnet-repro evaluate --out)")
    if not isinstance(hits, str):
        raise ReportError(f"{where}: top1_hits is not a string; restore the file or score the run again")
    try:
        right = unpack_hits(hits, count)
    except ValueError as e:
        raise ReportError(f"{where}: top1_hits: {e}; restore the file or score the run again") from None
    if abs(100.0 * (1 - right.sum() / count) - top1_err) > 1e-6:
        raise ReportError(f"{where}: top1_hits ({int(right.sum())} of {count} images right) does not match its "
                          f"top-1 error {top1_err:.2f} %; the file was changed or damaged: restore it or score the run "
                          "again")
    return right


def outcomes(run) -> dict:
    """(split, protocol) -> Outcome, from `run`'s results.json and evaluation.json (a report.Run); {} without any."""
    found = {}
    res = run.results or {}
    for name in ("val", "test"):
        block = res.get(name)
        if not isinstance(block, dict) or not isinstance(block.get("labels_sha256"), str):
            continue
        for protocol in ("single", "flip"):
            entry = block.get(protocol)
            if isinstance(entry, dict) and "top1_hits" in entry:
                where = f"{run.root / 'results.json'}: {name}.{protocol}"
                found[(block.get("split", name), protocol)] = Outcome(
                    _read(entry["top1_hits"], block.get("images"), where, entry.get("top1_err")), entry["top1_err"],
                    block["labels_sha256"], not block.get("held_out", True), None)
    ev = run.evaluation or {}
    if isinstance(ev.get("labels_sha256"), str):
        val_trained = not (res.get("val") or {}).get("held_out", True)
        for i, r in enumerate(ev.get("results") or []):
            if not isinstance(r, dict) or "top1_hits" not in r:
                continue
            key = (ev.get("split"), r.get("protocol", "?"))
            if key in found:
                continue  # the training's own scoring of that split and protocol comes first
            where = f"{run.root / 'evaluation.json'}: results[{i}] ({key[1]})"
            found[key] = Outcome(_read(r["top1_hits"], r.get("count"), where, r.get("top1_err")), r["top1_err"],
                                 ev["labels_sha256"], val_trained and key[0] == "val", r.get("description"))
    return found


HOW = ("runs record them when training ends (results.json, since 2026-12-05); for an older run, `resnet-repro evaluate "
       "--checkpoint RUN/final.pt --split val --protocol single --out RUN/evaluation.json`")


def paired_lines(runs: list[tuple[str, object]]) -> list[str]:
    """The "Image by image" section of compare.md: each run (label, report.Run) against the first one that records
    outcomes, on every (split, protocol) both have for the same images: how many images only one of the two gets
    right, the difference in top-1 error, and McNemar's exact p."""
    found = [(label, outcomes(run)) for label, run in runs]
    recorded = [(label, o) for label, o in found if o]
    missing = [label for label, o in found if not o]
    if len(recorded) < 2:
        return [f"Fewer than two runs record which images they get right, so none are compared image by image: {HOW}."]
    (base, base_out), rest = recorded[0], recorded[1:]
    lines = [f"Each run against `{base}` on the same images: of the images exactly one of the two gets right, how many "
             "each; the difference in top-1 error is theirs alone. McNemar's exact p is the chance of a split at least "
             "that uneven if each such image were a coin toss: it judges these two trained models; a recipe difference "
             "must also outlast the spread between seeds. A split either run trained on is not compared.", "",
             "| run | split (images) | protocol | top-1 err %: run / baseline | difference, points | only the run "
             "right | only the baseline right | McNemar p |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for label, out in rest:
        for (split, protocol), o in out.items():
            b = base_out.get((split, protocol))
            if b is None:
                continue
            if b.digest != o.digest:
                notes.append(f"`{label}` {split} ({protocol}): other images than `{base}`'s {split}")
                continue
            if b.trained_on or o.trained_on:
                notes.append(f"`{label}` {split} ({protocol}): trained on by " + (f"`{base}`" if b.trained_on else
                             f"`{label}`"))
                continue
            only_run, only_base = discordant(o.hits, b.hits)
            geometry = "" if None in (o.description, b.description) or o.description == b.description else \
                f" (run: {o.description}; baseline: {b.description})"
            lines.append(f"| {label} | {split} ({len(o.hits)}) | {protocol}{geometry} | {o.top1_err:.2f} / "
                         f"{b.top1_err:.2f} | {100.0 * (only_base - only_run) / len(o.hits):+.2f} | {only_run} | "
                         f"{only_base} | {mcnemar_p(only_run, only_base):.3f} |")
    if notes:
        lines += ["", "Not compared: " + "; ".join(notes) + "."]
    if missing:
        lines += ["", "Without per-image outcomes: " + ", ".join(f"`{m}`" for m in missing) + f" ({HOW})."]
    return lines
