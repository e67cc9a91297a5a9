"""Results people can read: ``resnet-repro report RUN_DIR`` -> RUN_DIR/report/{curves.png, report.md}.

Reads only what the run wrote (metrics.jsonl, the record; config.yaml; results.json when the run finished;
evaluation.json from ``resnet-repro evaluate --out RUN_DIR/evaluation.json`` when present) and draws:

* curves.png (drawn in report_plots.py): top-1 error and loss per epoch, train and val, with the learning rate on
  a second axis, and training throughput (img/s) with the share of time spent waiting for data;
* report.md: the run's figures in a table next to published ones for the same model and data set (the
  ResNet paper, the reference recipe, fb.resnet.torch, torchvision ...: published.py; docs/REFERENCE.md lists
  the sources), with the test protocol and epochs of each.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import atomic
from .config import model_label
from .figures import top5_text
from .published import published_for, published_split
from .report_inputs import ReportError, check_results, read_epochs, read_object
from .report_plots import plot_curves


# --- The run -------------------------------------------------------------------------------------------

@dataclass
class Run:
    root: Path
    metrics: list[dict]
    config: dict = field(default_factory=dict)
    results: dict | None = None
    evaluation: dict | None = None
    dataset: str | None = None
    record: dict = field(default_factory=dict)  # run.json, written when the run starts ({} where missing or damaged)

    @property
    def model(self) -> str:
        """The net's name; a widened CIFAR net's says so, and so matches none of the paper's published rows."""
        name = (self.results or {}).get("model") or self.config.get("model", {}).get("name", "?")
        return model_label(name, self.config.get("model", {}).get("width", 1))

    @property
    def planned_epochs(self) -> int | None:
        return (self.results or {}).get("epochs") or self.config.get("train", {}).get("epochs")


def load_run(root: str | Path) -> Run:
    root = Path(root)
    path = root / "metrics.jsonl"
    if not path.is_file():
        if root.is_dir() and ((root / "config.yaml").is_file() or (root / "checkpoints").is_dir()):
            raise ReportError(f"{path}: not written yet: no epoch has finished yet in {root} (the run stopped before "
                              f"its first epoch ended, or is still in it); continue it with resnet-repro train "
                              f"--config {root / 'config.yaml'} --out {root} --resume auto, and report after an epoch")
        raise ReportError(f"{path}: not found; is {root} a run folder (resnet-repro train --out {root})?")
    metrics = read_epochs(path)
    if not metrics:
        raise ReportError(f"{path}: no epochs logged yet")
    run = Run(root, metrics)
    if (root / "config.yaml").is_file():
        try:
            run.config = yaml.safe_load((root / "config.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ReportError(f"{root / 'config.yaml'}: not valid YAML ({first}); restore it from a checkpoint's "
                              "config or fix the file") from None
        if not isinstance(run.config, dict):
            raise ReportError(f"{root / 'config.yaml'}: not a mapping of config sections; fix or restore the file")
    for name in ("results", "evaluation"):
        f = root / f"{name}.json"
        if f.is_file():
            setattr(run, name, read_object(f))
    if run.results is not None:
        check_results(run.results, root / "results.json")
    run.record = _read_record(root)
    run.dataset = (run.results or {}).get("dataset") or _dataset_from_record(run) or _dataset_from_manifest(run)
    return run


def _read_record(root: Path) -> dict:
    """run.json, the record a run writes when it starts; {} where it is missing or damaged (it only adds names)."""
    try:
        record = json.loads((root / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _dataset_from_record(run: Run) -> str | None:
    """run.json's data set name (runs since 2026-12-05 record it when they start)."""
    name = run.record.get("dataset")
    return name if isinstance(name, str) else None


def _classes_from_record(run: Run) -> int | None:
    """run.json's class count (runs since 2026-12-05 record it), for the unfinished run's top-5 figure."""
    n = run.record.get("classes")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _dataset_from_manifest(run: Run) -> str | None:
    """An older run's: the manifest its data.path leads to, from here or from the run folder."""
    data = run.config.get("data", {}).get("path")
    for base in ([Path(data)] if data and Path(data).is_absolute() else [Path.cwd() / str(data), run.root / str(data)]):
        try:
            return json.loads((base / "manifest.json").read_text()).get("dataset")
        except (OSError, ValueError):
            continue
    return None


# --- Tables --------------------------------------------------------------------------------------------

def _protocol_of_run(run: Run, single: bool = False, flip: bool | None = None) -> str:
    """The training's own evaluation protocol, or (single=True) its single view when it scored two, or
    (flip=True) the centre view + mirror."""
    d = run.config.get("data", {})
    size, resize = d.get("val_size") or 0, d.get("val_resize") or 0
    if flip is None:
        flip = not single and run.config.get("train", {}).get("eval_protocol", "single") == "flip"
    if not size and not resize:
        return "centre view + mirror, stored size" if flip else "single view, stored size"
    return (f"centre crop {size or 'stored size'}" + (f" of shorter side {resize}" if resize else "")
            + (" + mirror" if flip else ""))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _spans(numbers: list[int]) -> str:
    """1, 2, 3, 7 -> "1-3, 7": a run resumed into a new folder lacks a long run of them."""
    spans = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _split_label(block: dict) -> str:
    """A results.json split block's name for a row: the split, its image count, and whether it was trained on."""
    return f"{block['split']} ({block['images']} images" + ("" if block.get("held_out", True) else
                                                            ", trained on: not held out") + ")"


def _run_rows(run: Run, res: dict, epochs: str, when: str) -> list[dict]:
    """A finished run's rows: the headline (single centre view; test split where the data set has one) first,
    then the other protocols and the val figures as extra rows."""
    if "headline" not in res:  # results.json written before the test split was scored separately
        row = {"who": "**this run**", "epochs": epochs, "split": "val (the split training evaluated)",
               "protocol": _protocol_of_run(run) + ", precise BN", "top1": res["top1_err"],
               "top5": res.get("top5_err"), "classes": res.get("classes"), "source": when}
        single = [{**row, "who": "this run", "protocol": _protocol_of_run(run, single=True) + ", precise BN",
                   "top1": res["top1_err_single"], "top5": res.get("top5_err_single")}] \
            if "top1_err_single" in res else []
        return [row, *single]
    head, rows = res["headline"], []
    for name in ("test", "val"):
        block = res.get(name)
        if block is None:
            continue
        split = _split_label(block)
        for protocol in ("single", "flip"):
            if protocol not in block:
                continue
            first = name == head["split"] and protocol == "single"
            rows.append({"who": "**this run**" if first else "this run", "epochs": epochs, "split": split,
                         "protocol": _protocol_of_run(run, single=protocol == "single", flip=protocol == "flip")
                         + ", precise BN" + (" (the headline)" if first else ""),
                         "top1": block[protocol]["top1_err"], "top5": block[protocol]["top5_err"],
                         "classes": res.get("classes"), "source": when})
    rows.sort(key=lambda r: r["who"] != "**this run**")  # the headline first, the rest in their order
    return rows


def comparison_rows(run: Run) -> list[dict]:
    """This run's rows (the headline first, then other protocols and splits, EMA, each evaluate protocol) then
    the published ones, as dicts."""
    m, res = run.metrics, run.results
    epochs = str(m[-1]["epoch"])
    where = run.root.name
    rows = []
    val_split = run.config.get("data", {}).get("val_split", "val")
    if res:
        machine = f"{res.get('device', '?')} x{res.get('world_size', 1)}, {res.get('precision', '?')}"
        when = f"{where}/results.json ({machine}, {_hours(res.get('train_wall_s', res.get('wall_s', 0)))})"
        rows += _run_rows(run, res, epochs, when)
        if "ema_top1_err" in res:
            # The EMA is scored on val only (the test split is the live model's, once), on the val rows' images: the
            # same split label, which says when val was trained on. Its single view first where the mirror scored too.
            split = _split_label(res["val"]) if "val" in res else val_split
            views = ([(True, "_single")] if "ema_top1_err_single" in res else []) + [(False, "")]
            rows += [{"who": "this run, EMA weights", "epochs": epochs, "split": split,
                      "protocol": _protocol_of_run(run, single=single), "top1": res[f"ema_top1_err{key}"],
                      "top5": res.get(f"ema_top5_err{key}"), "classes": res.get("classes"), "source": when}
                     for single, key in views]
    else:
        last = next((r for r in reversed(m) if "val_top1_err" in r), None)
        if last:
            planned = run.planned_epochs
            rows.append({"who": "**this run (not finished)**", "epochs": f"{last['epoch']}" + (f" of {planned}" if planned else ""),
                         "split": val_split + ("" if last.get("val_held_out", True) else " (not held out)"),
                         "protocol": _protocol_of_run(run), "top1": last["val_top1_err"],
                         "top5": last.get("val_top5_err"), "classes": _classes_from_record(run),
                         "source": f"{where}/metrics.jsonl (no results.json yet)"})
    split = (run.evaluation or {}).get("split", "?")
    for r in (run.evaluation or {}).get("results", []):
        # The image count shows when evaluate ran on another split or a subset than the training's val pass.
        count = f" ({r['count']} images)" if "count" in r else ""
        rows.append({"who": f"this run, {r['protocol']}", "epochs": epochs, "split": split,
                     "protocol": r["description"] + count, "top1": r["top1_err"], "top5": r["top5_err"],
                     "classes": r.get("classes"), "source": f"{where}/evaluation.json"})
    for ds, model, who, ep, protocol, e1, e5, source in published_for(run.dataset, run.model):
        rows.append({"who": who, "epochs": ep, "split": published_split(ds), "protocol": protocol, "top1": e1,
                     "top5": e5, "source": source})
    return rows


def markdown_table(rows: list[dict]) -> str:
    out = ["| system | epochs | split | test protocol | top-1 err % | top-5 err % | source |",
           "|---|---:|---|---|---:|---:|---|"]
    out += [f"| {r['who']} | {r['epochs']} | {r.get('split', '?')} | {r['protocol']} | {_fmt(r['top1'])} | "
            f"{top5_text(r['top5'], r.get('classes'), unit='')} | {r['source']} |" for r in rows]
    return "\n".join(out)


def report_markdown(run: Run, png_name: str = "curves.png") -> str:
    m, res = run.metrics, run.results
    lines = [f"# {run.model} on {run.dataset or 'unknown data'} — {run.root.name}", ""]
    seconds = sum(r.get("seconds", 0) for r in m)
    rates = [r["images_per_s"] for r in m if "images_per_s" in r]
    # Counted, not read off the last line: a lost line must not look like a whole record.
    logged = [r["epoch"] for r in m]
    missing = sorted(set(range(1, logged[-1] + 1)) - set(logged))
    facts = [f"epochs logged: {len(logged)}" + (f" of {run.planned_epochs}" if run.planned_epochs else "")
             + (f" (no line for epoch{'s' * (len(missing) > 1)} {_spans(missing)})" if missing else ""),
             f"training time in epochs: {_hours(seconds)}"]
    if rates:
        facts.append(f"throughput: median {sorted(rates)[len(rates) // 2]:,.0f} img/s (incl. data wait)")
    peaks = [r["peak_memory_mb"] for r in m if "peak_memory_mb" in r]
    if peaks:
        device = str((res or {}).get("device") or run.config.get("train", {}).get("device", ""))
        facts.append(f"peak memory: {max(peaks):,.0f} MB (" + ("allocated by PyTorch on the GPU" if
                     device.startswith("cuda") else "the training process's resident set") + ", rank 0)")
    if res and "headline" in res:
        head, val = res["headline"], res["val"]
        facts.append(f"**headline: top-1 / top-5 error {res['top1_err']:.2f}% / "
                     f"{top5_text(res['top5_err'], res.get('classes'))} on the "
                     f"{head['split']} split ({head['images']} images), single centre view**, after precise BN over "
                     f"{res.get('precise_bn_batches')} batches; other protocols and splits are the extra rows below")
        before = val.get("before_precise_bn", {}).get("single", {}).get("top1_err", float("nan"))
        facts.append(f"val split ({val['images']} images, " + ("held out" if val.get("held_out", True) else
                     "trained on: not held out") + f"): single view {val['single']['top1_err']:.2f}% "
                     f"(before precise BN {before:.2f}%); recipe choices are made on it, the test split is scored "
                     "once, when training ends")
    elif res:
        facts.append(f"final top-1 / top-5 error: {res['top1_err']:.2f}% / "
                     f"{top5_text(res['top5_err'], res.get('classes'))} on "
                     f"{res.get('val_count', '?')} val images (after precise BN over {res.get('precise_bn_batches')} "
                     f"batches; before: {res.get('top1_err_before_precise_bn', float('nan')):.2f}%)")
    if res:
        facts.append(f"device: {res.get('device')} x{res.get('world_size', 1)}, precision {res.get('precision')}, "
                     f"wall time {_hours(res.get('wall_s', 0))}")
    else:
        facts.append("no results.json: the run is still going or was stopped (figures are from the last epoch)")
    lines += [f"- {f}" for f in facts] + ["", f"![training curves]({png_name})", "", "## Next to published results", ""]
    rows = comparison_rows(run)
    lines.append(markdown_table(rows))
    if not published_for(run.dataset, run.model):
        lines += ["", f"No published figures are recorded for {run.model} on {run.dataset or 'this data set'}."]
    if run.dataset == "fashion-mnist":
        lines += ["", "The Fashion-MNIST rows are the data set's README benchmark (other models and training recipes):"
                  " context for the error level, not a like-for-like comparison."]
    if not run.evaluation:
        # With a test split, val is where choices are made; without one (ImageNet: ILSVRC val is the published
        # protocol), val is the headline's own split.
        why = ("choices are made there; training scored the test split once" if "test" in (run.results or {})
               else "the split the headline is scored on" if run.results else "the split training evaluates")
        lines += ["", f"More test protocols, compared on the val split ({why}): `resnet-repro evaluate "
                  f"--checkpoint {run.root}/final.pt --split val --protocol single --protocol flip --protocol 10crop "
                  f"--protocol multiscale --out {run.root}/evaluation.json`, then report again."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> dict:
    """Write curves.png and report.md into `out` (default RUN_DIR/report); returns their paths."""
    run = load_run(run_dir)
    out = Path(out) if out else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    png = plot_curves(run, out / "curves.png")
    md = out / "report.md"
    atomic.write_text(md, report_markdown(run, os.path.relpath(png, out)), fsync=False)
    return {"png": str(png), "markdown": str(md)}
