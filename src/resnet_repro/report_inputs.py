"""What `report` reads from a run folder, checked: metrics.jsonl's epoch lines and results.json.

A damaged file is a ReportError naming the file (and for metrics.jsonl the line), one line on the command line,
instead of a traceback from deep inside the plotting or the table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import UserError


class ReportError(UserError):
    """A run folder that cannot be reported on; the message names the file."""


# The epoch-line figures report reads as numbers (plots, the throughput median, the unfinished run's row).
EPOCH_NUMBERS = ("lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "val_loss",
                 "ema_val_top1_err", "images_per_s", "data_wait_fraction", "seconds", "peak_memory_mb")
# results.json's top-level figures, read when present; top1_err and top5_err are always there.
RESULT_NUMBERS = ("top1_err_single", "top5_err_single", "ema_top1_err", "ema_top5_err", "ema_top1_err_single",
                  "ema_top5_err_single", "wall_s", "train_wall_s", "top1_err_before_precise_bn")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}.get(
        type(v), "number")


def read_epochs(path: Path) -> list[dict]:
    """metrics.jsonl's epoch lines, in order. Lines with an "event" key (a resume's overrides, training/resume.py)
    are a record of the run, not an epoch, and are skipped. A last line cut off by a killed writer is dropped with
    a warning; any other line that is not a whole epoch line is an error naming the line."""
    # Bytes first: a non-UTF-8 line is then one line's fault, named, not a decode error for the whole file.
    lines = path.read_bytes().splitlines()
    epochs: list[dict] = []
    for n, raw in enumerate(lines, start=1):
        where = f"{path} line {n}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ReportError(f"{where}: not UTF-8 text (a damaged file?); fix or delete that line") from None
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            if n == len(lines):  # what the README promises: the record up to the line before, said out loud
                print(f"warning: {where}: cut off (a crash while it was written); dropping it", file=sys.stderr)
                break
            raise ReportError(f"{where}: not valid JSON ({e}); fix or delete that line") from None
        if not isinstance(rec, dict):
            raise ReportError(f"{where}: a JSON {_kind(rec)}, not an epoch's object; fix or delete that line")
        if "event" in rec:
            continue
        epoch = rec.get("epoch")
        if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1):
            what = "no \"epoch\"" if epoch is None else f"\"epoch\": {json.dumps(epoch)} is not an epoch number"
            raise ReportError(f"{where}: {what}; every line but a resume's \"event\" line is an epoch's figures: "
                              "fix or delete that line")
        # The plot's x axis and the epoch count assume one line per epoch, in order (trim_metrics keeps it so).
        if epochs and epoch <= epochs[-1]["epoch"]:
            raise ReportError(f"{where}: epoch {epoch} after epoch {epochs[-1]['epoch']} (a line repeated or out of "
                              "order); delete the extra line")
        bad = [k for k in EPOCH_NUMBERS if k in rec and not _number(rec[k])]
        if bad:
            raise ReportError(f"{where}: {bad[0]} is {json.dumps(rec[bad[0]])}, not a number; fix or delete that "
                              "line")
        epochs.append(rec)
    return epochs


def read_object(path: Path) -> dict:
    """A JSON file whose top level must be an object (results.json, evaluation.json)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text (a damaged file?); restore or delete it") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: a JSON {_kind(value)}, not an object of results; restore or delete it")
    return value


def check_results(res: dict, path: Path) -> None:
    """results.json holds what report prints of a finished run: the headline figures, and with "headline" (written
    since the test split is scored separately) the val block and each split's protocols."""
    def need(block: dict, key: str, where: str, kind=_number, what: str = "a number") -> None:
        label = f"{where}.{key}" if where else key
        if key not in block:
            raise ReportError(f"{path}: no {label} (training writes it when it finishes); restore the file, or "
                              "delete it to report the run as unfinished")
        if not kind(block[key]):
            raise ReportError(f"{path}: {label} is {json.dumps(block[key])}, not {what}; restore or delete the file")

    def obj(block: dict, key: str, where: str) -> None:
        need(block, key, where, lambda v: isinstance(v, dict), "an object")

    for key in ("top1_err", "top5_err"):
        need(res, key, "")
    for key in RESULT_NUMBERS:
        if key in res:
            need(res, key, "")
    if "epochs" in res and not (_number(res["epochs"]) and res["epochs"] >= 1):
        raise ReportError(f"{path}: epochs is {json.dumps(res['epochs'])}, not a count; restore or delete the file")
    if "headline" in res:
        obj(res, "headline", "")
        need(res["headline"], "split", "headline", lambda v: isinstance(v, str), "a split name")
        need(res["headline"], "images", "headline", lambda v: True)
        obj(res, "val", "")
    for name in ("val", "test"):
        if name not in res:
            continue
        obj(res, name, "")
        block = res[name]
        # The val block's single view is the final point of the val curve (report._final_val), so always there.
        if name == "val":
            obj(block, "single", name)
        if "headline" in res:  # the table's rows name each split and its image count
            for key in ("split", "images"):
                need(block, key, name, lambda v: True)
        for protocol in ("single", "flip"):
            if protocol in block:
                obj(block, protocol, name)
                for key in ("top1_err", "top5_err"):
                    need(block[protocol], key, f"{name}.{protocol}")
    before = res.get("val", {}).get("before_precise_bn")
    if before is not None:
        obj(res["val"], "before_precise_bn", "val")
        if "single" in before:
            obj(before, "single", "val.before_precise_bn")
            if "top1_err" in before["single"]:
                need(before["single"], "top1_err", "val.before_precise_bn.single")
