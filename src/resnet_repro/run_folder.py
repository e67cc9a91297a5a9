"""The run folder: one run per folder, and the point a resume continues from.

Rank 0 locks the folder (folder_lock.py) and reads which run it holds (``run.json``); ``--resume auto`` picks that
run's newest whole checkpoint (checkpoint.py) and every rank loads the same file; metrics.jsonl is trimmed to the
checkpoint so that a resumed run logs each epoch once. training/resume.py's `start_or_resume` puts these
together. Every function here that ranks call together gives every rank the same answer, or the same error.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from . import atomic, checkpoint, dist, folder_lock

# What makes a folder hold a run that a fresh start would overwrite or mix with (config.yaml alone does not:
# a run stopped before its first checkpoint has nothing to lose).
RUN_FILES = ("final.pt", "results.json", "metrics.jsonl")
# Config keys a resume may change without --allow-change: how the run is watched and saved, or where its data
# lies, not what it trains.
FREE_ON_RESUME = frozenset({"data.path", "data.eval_batch_size", "train.log_interval", "train.threads",
                            "train.tensorboard", "train.checkpoint_interval_min", "train.checkpoint_every_steps",
                            "train.keep_checkpoints", "train.compile"})


def claim(out: Path, resume: str | None, env: dist.DistEnv, held: contextlib.ExitStack, force: bool = False) -> dict:
    """Rank 0 locks ``out`` for this process (released when ``held`` closes, or by the kernel if the process
    dies) and checks that a fresh start would not overwrite another run. Every rank gets the same answer,
    {"run_id": the folder's run id or None, "new_id": an id for a new run, "held": run files present}, or
    raises the same error: no rank is left waiting in a collective for one that failed."""
    import uuid

    answer = None
    if env.is_main:
        try:
            held.enter_context(folder_lock.hold_folder(out, "a training run", force=force))
            run_id = None
            if (out / "run.json").is_file():
                try:
                    run_id = json.loads((out / "run.json").read_text())["run_id"]
                except (ValueError, KeyError, TypeError):
                    raise folder_lock.LockError(f"{out / 'run.json'}: damaged (no run_id); it names the run this "
                                                "folder holds: remove the run folder's files to start over, or "
                                                "choose another --out") from None
            found = [n for n in RUN_FILES if (out / n).exists()]
            n_ckpt = len(checkpoint.list_checkpoints(out / "checkpoints"))
            if n_ckpt:
                found.insert(0, f"{n_ckpt} checkpoint(s) in checkpoints/")
            # A fresh start (allowed only where no run files are) is a new run, whatever run.json said.
            answer = {"run_id": run_id if resume else None, "new_id": uuid.uuid4().hex[:16], "held": found}
            if resume is None and found:
                answer = {"error": f"{out} holds another run ({', '.join(found)}); continue it with --resume auto "
                                   f"(resnet-repro train --config {out / 'config.yaml'} --out {out} --resume auto), "
                                   "or remove those files / choose another --out to start a new run"}
        except folder_lock.LockError as e:
            answer = {"error": str(e)}
    answer = dist.broadcast_object(answer)
    if "error" in answer:
        raise folder_lock.LockError(answer["error"])
    return answer


def find_checkpoint(resume: str, ckpt_dir: Path, env: dist.DistEnv,
                     run_id: str | None = None) -> tuple[Path, dict] | None:
    """``--resume auto``: the newest whole checkpoint of run ``run_id`` in ckpt_dir (rank 0 chooses, skipping
    torn ones and other runs' with a warning; every rank then loads that file), or None if there is none.
    Otherwise ``resume`` is a path."""
    if resume == "auto":
        found = checkpoint.load_latest(ckpt_dir, run_id=run_id) if env.is_main else None
        chosen = dist.broadcast_object(str(found[0]) if found else None)
        if chosen is None or env.is_main:
            return found
        path = Path(chosen)
    else:
        path = Path(resume)
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        if env.world > 1:
            raise checkpoint.CheckpointError(f"rank {env.rank}: {e} (with several nodes, RUN_DIR must be on a file "
                                             "system every node sees)") from None
        raise
    if "optimizer" not in state:
        raise checkpoint.CheckpointError(
            f"{path} holds a run's final weights, not a training checkpoint: it has no optimizer state to resume "
            "from. Continue a run with --resume auto (or --resume RUN/checkpoints/ckpt-EEEE-SSSSSS.pt); to train "
            "further from these weights, start a new run")
    return path, state


def merge_epoch_states(ranks: list[dict]) -> dict | None:
    """The unfinished epoch's sums of all saved ranks as one (resuming with another number of processes)."""
    parts = [r["sums"] for r in ranks if r.get("sums") is not None]
    if not parts:
        return None
    return {"sums": {"sums": sum(p["sums"] for p in parts), "samples": sum(p["samples"] for p in parts),
                     "bad": sum(p["bad"] for p in parts)},
            "seconds": ranks[0]["seconds"], "wait": ranks[0]["wait"]}


def _metric_lines(path: Path, lines: list[str] | None = None) -> list[tuple[str, dict]]:
    """(line, record) of metrics.jsonl (`lines`: its lines, when the caller has read them). A last line cut off by
    a crash mid-write is dropped with a warning (the resumed run logs that epoch again); a damaged line before it
    is an error naming the line."""
    if lines is None:
        if not path.is_file():
            return []
        lines = path.read_text().splitlines(keepends=True)
    out = []
    for n, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        try:
            out.append((ln if ln.endswith("\n") else ln + "\n", json.loads(ln)))
        except json.JSONDecodeError as e:
            if n == len(lines):
                print(f"warning: {path} line {n}: cut off (a crash while it was written); dropping it",
                      file=sys.stderr)
                break
            raise checkpoint.CheckpointError(f"{path} line {n}: not valid JSON ({e}); fix or delete that line, "
                                             "then resume again") from None
    return out


def logged_epochs(path: Path) -> int:
    """The last epoch metrics.jsonl has a line for (0: none)."""
    return max((rec.get("epoch", 0) for _, rec in _metric_lines(path)), default=0)


def trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop metrics.jsonl lines of epochs after the checkpoint (written before a crash that the checkpoint
    missed) and a torn last line, so the resumed run does not log an epoch twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    # An "event" line (a resume's overrides) names the epoch it took effect at; it goes with the epochs after it.
    keep = [ln for ln, rec in _metric_lines(path, lines) if rec.get("epoch", rec.get("at_epoch", 0)) <= epochs_done]
    if keep != lines:
        atomic.write_text(path, "".join(keep), fsync=False)


def recorded(out: Path, resume: str | None = "auto") -> dict | None:
    """What a run's record holds, for a resume: {"config": its sections, "config_flat": "section.key" -> value,
    "chosen_on": the hardware facts that made its choices, or None (a run from before they were recorded)}.
    From the run folder's config.yaml, else (--resume CHECKPOINT into a new folder) from that checkpoint; None
    when there is neither."""
    import yaml

    path = Path(out) / "config.yaml"
    if not path.is_file():
        if resume in (None, "auto") or not Path(resume).is_file():
            return None
        saved = checkpoint.load(Path(resume))
        raw = dict(saved.get("config") or {})
        raw["chosen_on"] = saved.get("chosen_on")
        path = None
    try:
        raw = (yaml.safe_load(path.read_text()) or {}) if path is not None else raw
    except yaml.YAMLError as e:
        raise checkpoint.CheckpointError(f"{path}: not valid YAML ({e}); it is the run's record: restore it, or "
                                         "resume with --resume CHECKPOINT into another --out") from None
    if not isinstance(raw, dict):
        raise checkpoint.CheckpointError(f"{path}: not a run's config (top level is not a mapping)")
    chosen_on = raw.pop("chosen_on", None)
    flat = {f"{section}.{key}": value for section, values in raw.items() if isinstance(values, dict)
            for key, value in values.items()}
    return {"config": raw, "config_flat": flat, "chosen_on": chosen_on}
