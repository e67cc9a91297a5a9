"""The PNGs `report` draws: one run's curves (error, loss and the LR; throughput and data wait) and several runs'
val error and train loss per epoch, side by side. matplotlib is imported here only, when a plot is drawn (the
`report` extra)."""
from __future__ import annotations

import math
from pathlib import Path

from . import atomic
from .report_inputs import ReportError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("plots need matplotlib: pip install 'resnet-repro[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")  # the format named: the temp name's suffix is not .png
    finally:
        plt.close(fig)
    return path


def _series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(m["epoch"], m[key]) for m in metrics if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(run, path: Path) -> Path:
    """Three stacked panels over epochs of `run` (a report.Run): top-1 error, loss (both with the LR), throughput."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    m = run.metrics
    fig, axes = plt.subplots(3, 1, figsize=(9, 10.5), sharex=True, height_ratios=[1.25, 1, 0.8])
    done, planned = m[-1]["epoch"], run.planned_epochs
    title = f"{run.model} on {run.dataset or 'unknown data'}: {done}" + (f" of {planned}" if planned else "") + " epochs"
    if run.results:
        head = run.results.get("headline", {"split": "val"})
        title += f"; top-1 error {run.results['top1_err']:.2f}% ({head['split']}, single view)"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    lr_x, lr_y = _series(m, "lr")
    step_schedule = run.config.get("schedule", {}).get("kind", "step") in ("step", "multistep")

    def add_lr(ax):
        # The LR logged for epoch e is the LR at its last step: for a step schedule the LR of all of (e - 1, e].
        twin = ax.twinx()
        if not lr_x:  # an epoch line without "lr" (hand-made or older): the curves still draw, without it
            return twin
        if step_schedule:
            twin.step([lr_x[0] - 1] + lr_x, [lr_y[0]] + lr_y, where="pre", color="0.55", lw=1.3, ls="--",
                      label="learning rate (right axis)")
        else:  # a smooth schedule: the logged end-of-epoch values joined up
            twin.plot(lr_x, lr_y, color="0.55", lw=1.3, ls="--", label="learning rate (right axis)")
        twin.set_ylabel("learning rate", color="0.4")
        twin.tick_params(axis="y", colors="0.4", which="both")
        positive = [v for v in lr_y if v > 0]
        if step_schedule and len(positive) == len(lr_y) and max(lr_y) / min(lr_y) > 20:
            twin.set_yscale("log")  # each /10 drop of a step schedule is an equal step, the last ones visible
        else:
            twin.set_ylim(0, max(lr_y) * 1.08)
        return twin

    ax = axes[0]
    x, y = _series(m, "train_top1_err")
    ax.plot(x, y, color="tab:blue", lw=1.8, label="train (augmented, running)")
    x, y = _series(m, "val_top1_err")
    ax.plot(x, y, color="tab:orange", lw=1.8, marker="o", ms=3, label="val")
    x, y = _series(m, "ema_val_top1_err")
    if x:
        ax.plot(x, y, color="tab:green", lw=1.5, marker="o", ms=2.5, label="val, EMA weights")
    if run.results:
        # The final figure of the curve's own split and protocol (the val pass), next to it.
        final = _final_val(run.results, run.config)
        ax.plot([done], [final], marker="*", ms=14, color="tab:red", ls="none",
                label=f"final val, precise BN: {final:.2f}%")
    error_axis(ax, [v for k in ("train_top1_err", "val_top1_err") for v in _series(m, k)[1]])
    ax.set_ylabel("top-1 error (%)")
    ax.grid(True, which="both", alpha=0.3)
    twin = add_lr(ax)
    _legend(ax, twin)

    ax = axes[1]
    x, y = _series(m, "train_loss")
    ax.plot(x, y, color="tab:blue", lw=1.8, label="train")
    x, y = _series(m, "val_loss")
    ax.plot(x, y, color="tab:orange", lw=1.8, marker="o", ms=3, label="val")
    ls = run.config.get("optim", {}).get("label_smoothing")
    ax.set_ylabel("cross-entropy loss" + (f"\n(train with label smoothing {ls:g})" if ls else ""))
    ax.grid(True, alpha=0.3)
    twin = add_lr(ax)
    _legend(ax, twin)

    ax = axes[2]
    x, y = _series(m, "images_per_s")
    ax.plot(x, y, color="tab:purple", lw=1.8, marker="o", ms=3, label="training img/s (incl. data wait)")
    ax.set_ylim(0, max(y) * 1.15 if y else 1)
    ax.set_ylabel("images / s")
    ax.grid(True, alpha=0.3)
    twin = ax.twinx()
    x, y = _series(m, "data_wait_fraction")
    twin.plot(x, [100 * v for v in y], color="0.55", lw=1.2, ls="--", label="waiting for data (right axis)")
    twin.set_ylim(0, max(100 * max(y) * 1.3, 10) if y else 10)
    twin.set_ylabel("waiting for data (%)", color="0.4")
    twin.tick_params(axis="y", colors="0.4")
    _legend(ax, twin, loc="lower right")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(done, planned or 0) + 0.5)
    fig.tight_layout()
    return _save(fig, path)


def error_axis(ax, errors: list[float]) -> None:
    """Errors fall by an order of magnitude over a run: a log axis, labelled in plain numbers (5, 7, 10, 15 ...),
    keeps the end of training, where runs differ, readable."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    errs = [v for v in errors if v > 0]
    if errs and max(errs) / min(errs) > 4:
        ax.set_yscale("log")
        lo, hi = min(errs) / 1.1, max(errs) * 1.1
        ax.set_ylim(lo, hi)
        ticks = [t * 10 ** k for k in range(-2, 3) for t in (1, 1.5, 2, 3, 5, 7)]
        ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if lo <= t <= hi]))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _final_val(res: dict, config: dict) -> float:
    """The final val error in the protocol of the per-epoch val curve (train.eval_protocol)."""
    if "val" not in res:
        return res["top1_err"]  # results.json from before the test split was scored separately: a val figure
    protocol = config.get("train", {}).get("eval_protocol", "single")
    return res["val"].get(protocol, res["val"]["single"])["top1_err"]


def _legend(ax, twin, loc="upper right"):
    handles, labels = [], []
    for a in (ax, twin):
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    ax.legend(handles, labels, loc=loc, fontsize=9, framealpha=0.9)


def plot_comparison(entries: list, path: Path, title: str) -> Path:
    """Val top-1 error and train loss per epoch, one line per run (`entries`: compare.Entry)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for e in entries:
        line, = axes[0].plot(*_series(e.run.metrics, "val_top1_err"), marker="o", ms=3, lw=1.5, label=e.label)
        axes[1].plot(*_series(e.run.metrics, "train_loss"), lw=1.5, color=line.get_color(), label=e.label)
    axes[0].set_ylabel("val top-1 error (%)")
    axes[1].set_ylabel("train loss")
    axes[1].set_xlabel("epoch")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    error_axis(axes[0], [v for line in axes[0].get_lines() for v in line.get_ydata()])
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)
