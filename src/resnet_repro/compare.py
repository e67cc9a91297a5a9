"""Several runs side by side: ``resnet-repro report RUN_DIR RUN_DIR ... --out DIR`` -> DIR/{curves.png, compare.md}.

What a seed study or an ablation needs: one row per run with the config keys that differ between the runs, its
figures per split and protocol (the single centre view on the test split first, as in a single run's report), and
for runs that share a recipe and differ only in `train.seed`, the mean, the standard deviation and the range of
each figure, as the ResNet paper reports its CIFAR runs (s4.2: "best (mean ± std)" over 5 runs); and each run
against the first one named, image by image, where both recorded which images they get right (results.json since
2026-12-05, `evaluate --out`; paired.py: the discordant images and McNemar's exact p).

A recipe here is every config key that changes what is trained. Keys that only say where the data lies, how it is
loaded or logged (the loader's worker count changes nothing the model sees: sampling and augmentation are a pure
function of seed, epoch and index) and the machine record under `chosen_on` are left out of it; hardware-made
choices that do change the arithmetic (train.precision, train.channels_last) are resolved in config.yaml and so
count. A key that an older run's config.yaml lacks (the option came later) is read as today's default, which is
what every new option's default keeps: the behaviour from before it. Unfinished runs get a row from their last
val pass, and a run folder without its config.yaml (its recipe unknown) a row with "?" for each key; both stay out
of the aggregates.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .config import Config
from .paired import paired_lines
from .report import Run, load_run
from .report_inputs import ReportError
from .report_plots import plot_comparison

# Config keys that do not change what a run trains (see the module docstring): evaluation batches run with BN in
# eval mode, the EMA (train.ema) is kept beside the weights and leaves them as they are. train.seed is apart: it is
# what the aggregates run over.
NOT_RECIPE = {"data.path", "data.cache_dir", "data.workers", "data.eval_batch_size",
              "train.log_interval", "train.eval_every", "train.tensorboard", "train.checkpoint_interval_min",
              "train.keep_checkpoints", "train.checkpoint_every_steps", "train.threads", "train.ema",
              "train.ema_warmup"}
# The figure columns: (label, split, protocol).
FIGURES = (("test, single view", "test", "single"), ("test, + mirror", "test", "flip"),
           ("val, single view", "val", "single"), ("val, + mirror", "val", "flip"))


@dataclass
class Entry:
    label: str  # the run folder, relative to the folders the runs share
    run: Run
    config: dict  # flattened: "section.key" -> value
    figures: dict  # (split, protocol) -> top-1 error, for the figures the run has
    val_held_out: bool

    @property
    def finished(self) -> bool:
        return self.run.results is not None


def _flatten(config: dict) -> dict:
    flat = {}
    for section, values in config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = values
    return flat


def _figures(run: Run) -> tuple[dict, bool]:
    """(split, protocol) -> top-1 error of a finished run (results.json), else the last val pass; and whether val
    was held out."""
    def val_only(error: float, single: float | None) -> dict:
        # The training's own protocol (train.eval_protocol), and its single view when that protocol was another.
        protocol = run.config.get("train", {}).get("eval_protocol", "single")
        return {("val", protocol): error, **({("val", "single"): single} if single is not None else {})}

    res = run.results
    if res is None:
        last = next((m for m in reversed(run.metrics) if "val_top1_err" in m), None)
        if last is None:
            return {}, True
        return val_only(last["val_top1_err"], last.get("val_top1_err_single")), last.get("val_held_out", True)
    if "headline" not in res:  # results.json from before the test split was scored separately: val figures
        return val_only(res["top1_err"], res.get("top1_err_single")), True
    figures = {(split, protocol): res[split][protocol]["top1_err"]
               for split in ("test", "val") if split in res for protocol in ("single", "flip")
               if protocol in res[split]}
    return figures, res["val"].get("held_out", True)


def load_entries(run_dirs: list[str | Path]) -> list[Entry]:
    roots = [Path(d) for d in run_dirs]
    seen = {}
    for root in roots:
        key = root.resolve()
        if key in seen:
            raise ReportError(f"{root}: named twice (as {seen[key]} too); name each run once")
        seen[key] = root
    runs = [load_run(root) for root in roots]
    # A run whose data set is not recorded (an older unfinished one away from its data) is compared as it is.
    named = [run for run in runs if run.dataset]
    other = next((run for run in named if run.dataset != named[0].dataset), None)
    if other is not None:
        raise ReportError(f"{other.root} trained on {other.dataset}, {named[0].root} on {named[0].dataset}: a "
                          "comparison is of runs on one data set")
    common = os.path.commonpath([str(r.resolve()) for r in roots])
    defaults = _flatten(Config().to_dict())
    entries = []
    for root, run in zip(roots, runs):
        label = os.path.relpath(root.resolve(), common) if len(roots) > 1 else root.name
        figures, held_out = _figures(run)
        config = {**defaults, **_flatten(run.config)} if run.config else {}  # {}: no config.yaml, recipe unknown
        entries.append(Entry(label if label != "." else root.name, run, config, figures, held_out))
    return entries


def comparison_title(entries: list[Entry]) -> str:
    """The heading, "N runs on DATA": the data set of the runs that record one (load_entries allows one)."""
    dataset = next((e.run.dataset for e in entries if e.run.dataset), None)
    return f"{len(entries)} runs on {dataset or 'unknown data'}"


def differing_keys(entries: list[Entry]) -> list[str]:
    """The config keys (chosen_on's machine record aside) whose values are not the same in every run that has its
    config.yaml."""
    known = [e for e in entries if e.config]
    keys = sorted({k for e in known for k in e.config if not k.startswith("chosen_on")})
    return [k for k in keys if len({repr(e.config.get(k)) for e in known}) > 1]


def recipe_of(entry: Entry) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in entry.config.items()
                        if k not in NOT_RECIPE and k != "train.seed" and not k.startswith("chosen_on")))


def seed_groups(entries: list[Entry]) -> list[list[Entry]]:
    """Finished runs of one recipe, in the order the first of each was named (two runs of one seed are grouped too:
    a rerun measures what nondeterminism moves)."""
    groups: dict[tuple, list[Entry]] = {}
    for e in entries:
        if e.finished and e.config:
            groups.setdefault(recipe_of(e), []).append(e)
    return list(groups.values())


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1; none for one value), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


def _fmt_spread(s: dict | None) -> str:
    if s is None:
        return "-"
    if s["std"] is None:
        return f"{s['mean']:.2f}"
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def _value(v) -> str:
    return v if isinstance(v, str) else repr(v) if isinstance(v, (list, dict)) else str(v)


def _machine(run: Run) -> str:
    chosen = run.config.get("chosen_on", {})
    res = run.results or {}
    where = chosen.get("cpu_class") or ""
    if chosen.get("gpus"):
        where = ", ".join(str(g) for g in chosen["gpus"])
    precision = res.get("precision") or run.config.get("train", {}).get("precision", "?")
    return f"{res.get('device', run.config.get('train', {}).get('device', '?'))} x{res.get('world_size', 1)}, " \
           f"{precision}" + (f" ({where})" if where else "")


def comparison_markdown(entries: list[Entry], png_name: str = "curves.png") -> str:
    every = differing_keys(entries)
    # The columns: what changes the training, and the seed; the rest is named once.
    differ = [k for k in every if k not in NOT_RECIPE]
    lines = [f"# {comparison_title(entries)}", ""]
    if differ:
        lines.append("Config keys that differ between the runs: " + ", ".join(f"`{k}`" for k in differ) + ".")
    else:
        lines.append("The runs' configs are the same in every key that changes what is trained.")
    quiet = [k for k in every if k in NOT_RECIPE]
    if quiet:
        lines.append("Also different, changing nothing the model is trained on: " + ", ".join(f"`{k}`" for k in quiet)
                     + ".")
    lines += ["Top-1 error, %. The single centre view on the test split is the headline where the data set has one; "
              "val figures of runs that trained on val are marked \"not held out\".", "",
              f"![val error per epoch]({png_name})", "", "## Runs", ""]
    # The model and epochs columns already show the net (its width included) and the epochs run: those keys are
    # named in the sentence above, not repeated as columns.
    columns = [k for k in differ if k not in ("model.name", "model.width", "train.epochs")]
    head = ["run", "model", "epochs", *columns, *(label for label, _, _ in FIGURES), "training time", "machine"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for e in entries:
        run, logged = e.run, e.run.metrics[-1]["epoch"]
        epochs = str(logged) if e.finished else f"{logged} of {run.planned_epochs or '?'}, not finished"
        cells = []
        for _, split, protocol in FIGURES:
            v = e.figures.get((split, protocol))
            note = " (not held out)" if split == "val" and v is not None and not e.val_held_out else ""
            cells.append("-" if v is None else f"{v:.2f}{note}")
        seconds = sum(m.get("seconds", 0) for m in run.metrics)
        row = [e.label, run.model, epochs, *(_value(e.config.get(k, "-")) if e.config else "?" for k in columns),
               *cells, f"{seconds / 60:.1f} min", _machine(run)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Over seeds", "", *_seed_lines(entries, differ)]
    lines += ["", "## Image by image", "", *paired_lines([(e.label, e.run) for e in entries])]
    return "\n".join(lines) + "\n"


def _seed_lines(entries: list[Entry], differ: list[str]) -> list[str]:
    """The seed groups' table: mean ± std (min–max) of each figure over runs that differ only in train.seed."""
    groups = [g for g in seed_groups(entries) if len(g) > 1]
    if not groups:
        return ["No two finished runs share a recipe (every config key that changes what is trained, "
                "`train.seed` aside), so there is nothing to aggregate."]
    lines = ["Finished runs that differ only in `train.seed` (and in keys that change nothing trained: where the "
             "data lies, loader workers, logging, checkpoint cadence, the machine record): mean ± sample standard "
             "deviation (min–max).", ""]
    recipe_keys = [k for k in differ if k != "train.seed"]  # what tells the groups apart
    gh = ["runs", "seeds", *recipe_keys, *(label for label, _, _ in FIGURES)]
    lines += ["| " + " | ".join(gh) + " |", "|" + "|".join("---" for _ in gh) + "|"]
    for g in groups:
        cells = []
        for _, split, protocol in FIGURES:
            values = [e.figures[(split, protocol)] for e in g if (split, protocol) in e.figures]
            # A figure only some runs of the group have would make a mean over a different set of seeds.
            cells.append(_fmt_spread(spread(values)) if len(values) == len(g) else "-")
        row = [", ".join(e.label for e in g), ", ".join(_value(e.config.get("train.seed")) for e in g),
               *(_value(g[0].config.get(k, "-")) for k in recipe_keys), *cells]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> dict:
    """Write curves.png and compare.md into `out`; returns their paths."""
    entries = load_entries(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_comparison(entries, out / "curves.png", comparison_title(entries))
    md = out / "compare.md"
    atomic.write_text(md, comparison_markdown(entries, os.path.relpath(png, out)), fsync=False)
    return {"png": str(png), "markdown": str(md)}
