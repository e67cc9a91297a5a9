"""How the error figures are printed, one rule for every command (training's closing line, `evaluate`, `report`).
Torch-free, as `report` is."""
from __future__ import annotations


def top5_text(err: float | None, classes: int | None, unit: str = "%") -> str:
    """Top-5 error as printed. With 5 classes or fewer every target is among the top 5, so its 0 is true by
    construction and says nothing: shown as n/a. `classes` None (a record written before it was kept) prints the
    figure."""
    if err is None:
        return "-"
    if classes is not None and classes <= 5:
        return f"n/a ({classes} classes)"
    return f"{err:.2f}{unit}"
