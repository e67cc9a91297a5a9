"""Where a run starts, and what lets it start again: the run folder claimed (run_folder.py), a checkpoint put back
into the learner on a resume (`start_or_resume`), and the checkpoints themselves (`save`, called by every rank at
the same step; checkpoint.py writes the file)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import torch

from .. import __version__, checkpoint, dist, folder_lock, run_folder, runtime
from ..recipe import save_config
from ..ema import EMA
from .state import Data, EpochTally, Run, RunState, TrainingError


# --- Run folder and resume -----------------------------------------------------------------------------------

def start_or_resume(run: Run, resume: str | None, held: contextlib.ExitStack, force: bool = False) -> RunState:
    """Claim the run folder and, with `resume`, put the newest (or the given) checkpoint back into the learner.
    One writer per folder, and one run: rank 0 locks the folder (held until train() returns) and reads which run
    it holds; nothing in it changes until the resume checks have passed."""
    out, env = run.out, run.env
    folder = run_folder.claim(out, resume, env, held, force)  # force: take over a lock from another host
    state = RunState(folder["run_id"])
    if resume:
        found = run_folder.find_checkpoint(resume, run.ckpt_dir, env, folder["run_id"])
        results_held = [f for f in folder["held"] if f in run_folder.RUN_FILES]  # torn checkpoints alone hold nothing
        if found is None and results_held:
            raise folder_lock.LockError(
                f"--resume auto: {run.ckpt_dir} holds no whole checkpoint of this run, but {out} holds "
                f"{', '.join(results_held)}: nothing to continue from. Remove those files to start over, or "
                "choose another --out")
        if found is None:
            run.log(f"--resume auto: no checkpoint in {run.ckpt_dir}; starting from scratch")
        else:
            state = _restore(run, folder, *found)
    # The resume checks passed: only now does the folder take this run's identity and config.
    state.run_id = state.run_id or folder["new_id"]
    if env.is_main:
        if folder["run_id"] != state.run_id:
            # The run's id (run_folder.py), and what it trains on: `report` names the data set from here while no
            # results.json exists yet, wherever it is run from (data.path may be relative to another folder).
            # The class count too: with 5 classes or fewer a top-5 error says nothing, and report's row for an
            # unfinished run has only this record and metrics.jsonl to tell.
            record = {"run_id": state.run_id, "dataset": run.data.manifest.get("dataset"),
                      "classes": len(run.data.manifest["classes"]), "data_folder": _absolute(run.cfg.data.path)}
            checkpoint.write_atomic(out / "run.json", (json.dumps(record) + "\n").encode())
        save_config(run.cfg, out / "config.yaml", chosen_on=run.chosen_on)
        if run.overrides or run.changes:
            # At the step it takes effect, in the run's record (report and the resume logic skip "event" lines).
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"event": "resume", "at_epoch": state.start_epoch, "at_step": state.start_step,
                                    "overrides": run.overrides, "allowed_changes": run.changes,
                                    "hardware": run.facts}) + "\n")
    return state


def _restore(run: Run, folder: dict, path: Path, saved: dict) -> RunState:
    """The position checkpoint `path` holds, with weights, optimizer, RNG and an unfinished epoch's numbers put
    back; trims metrics.jsonl to it."""
    env, data, out = run.env, run.data, run.out
    run_id = folder["run_id"]
    if run_id is not None and saved.get("run_id") not in (None, run_id) and folder["held"]:
        raise checkpoint.CheckpointError(
            f"{path} belongs to run {saved['run_id']}, but {out} holds run {run_id} "
            f"({', '.join(folder['held'])}); resume it into its own folder or a new --out")
    state = RunState(run_id or saved.get("run_id"), saved["epoch"], saved["step"])
    # "steps_done": checkpoints since 2026-12; an older one counts its epochs at the steps per epoch it was saved at.
    state.steps_before = saved.get("steps_done", saved["epoch"] * saved.get("steps_per_epoch", data.steps_per_epoch)
                                   + saved["step"])
    saved_batch = saved.get("global_batch", data.global_batch)
    if state.start_step and saved_batch != data.global_batch:
        raise TrainingError(f"{path} was saved mid-epoch (step {state.start_step}) at global batch {saved_batch}; "
                            f"this run's global batch is {data.global_batch} = {run.cfg.data.batch_size} x "
                            f"{env.world}. Resume with the same global batch, or from an epoch-end checkpoint "
                            "(ckpt-EEEE-000000.pt)")
    _check_data(run, path, saved, state)
    _load_learner(run, path, saved)
    ranks = saved.get("ranks") or [{"rng": r} for r in saved["rng"]]  # "rng": before per-rank sums
    same_world = len(ranks) == env.world
    mine = ranks[env.rank] if same_world else ranks[0]
    checkpoint.set_rng_state(mine["rng"])
    if state.start_step and same_world:
        state.epoch_state = mine
    elif state.start_step:
        # Same global batch, another world size: the batches are the same (data/loading/loader.py), so the sums
        # carry over whole; rank 0 takes them all, the others start at zero (the epoch total adds ranks).
        state.epoch_state = run_folder.merge_epoch_states(ranks) if env.is_main else None
    if env.is_main:
        run_folder.trim_metrics(out / "metrics.jsonl", state.start_epoch)
    logged = dist.broadcast_object(run_folder.logged_epochs(out / "metrics.jsonl") if env.is_main else None)
    if state.start_step == 0 and saved.get("epoch_record") and logged < state.start_epoch:
        state.pending_record = dict(saved["epoch_record"])
    run.log(f"resumed from {path} at epoch {state.start_epoch} step {state.start_step} (saved by {len(ranks)} "
            "process(es))")
    return state


def _load_learner(run: Run, path: Path, saved: dict) -> None:
    """Weights, optimizer, loss scaler and EMA from checkpoint `path`. A recipe value that differs from the run's
    is refused, one line listing the keys, unless --allow-change names each; an allowed one takes effect from here
    (the optimizer's hyperparameters included, which the saved param groups would otherwise bring back)."""
    learner = run.learner
    changed = _changes(run, saved.get("config", {}))
    refused = [k for k in changed if k not in run.allow_change]
    if refused:
        listed = "; ".join(f"{k}: {changed[k]['saved']!r} -> {changed[k]['now']!r}" for k in refused)
        raise checkpoint.CheckpointError(
            f"{path} was saved with another config ({listed}); resume with the run's own config "
            f"({run.out / 'config.yaml'}, left unchanged), or pass " + " ".join(f"--allow-change {k}" for k in refused)
            + " to change it from here on (recorded in metrics.jsonl), or start the new config in another --out")
    fresh = [{k: g[k] for k in ("momentum", "dampening", "nesterov", "weight_decay") if k in g}
             for g in learner.optimizer.param_groups]
    try:
        learner.model.load_state_dict(saved["model"])
        learner.optimizer.load_state_dict(saved["optimizer"])
        # A disabled GradScaler (fp32, bf16) saves {}: a run that now scales (fp16 after a precision override)
        # starts its loss scale afresh, and one that no longer scales has nothing to load.
        if saved.get("scaler") and learner.scaler.is_enabled():
            learner.scaler.load_state_dict(saved["scaler"])
        if learner.ema is not None and "ema" in saved:
            learner.ema.load_state_dict(saved["ema"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        listed = "; ".join(f"{k}: {v['saved']!r} -> {v['now']!r}" for k, v in changed.items())
        raise checkpoint.CheckpointError(
            f"{path} does not fit this config's model or optimizer ({first}); it was saved with "
            f"{listed or 'the same config'}. Resume with the config it was saved with "
            f"({run.out / 'config.yaml'}, left unchanged), or start the new config in another --out") from None
    for group, now in zip(learner.optimizer.param_groups, fresh):
        group.update(now)  # the config's momentum, nesterov and weight decay, not the checkpoint's
    for key, v in changed.items():
        run.log(f"allowed change (--allow-change {key}): {v['saved']!r} -> {v['now']!r}, in effect from this step")
    run.changes.update(changed)  # after an allowed data change (_check_data), if any
    if learner.ema is not None and "ema" not in saved:
        learner.ema = EMA(learner.model, run.cfg.train.ema, run.cfg.train.ema_warmup)
        run.log(f"warning: {path} holds no EMA state; the EMA restarts from the resumed weights")


# --- The data a run trains on --------------------------------------------------------------------------------

def data_identity(data: Data) -> dict:
    """What every checkpoint records of the data it was trained on, for a resume to compare with what it would
    read: config.yaml names only a folder, and prepare may have written another data set there since. The
    manifest's own SHA-256 (None for an older-format manifest, which has none), a hash of every shard's SHA-256
    (what such a manifest offers instead; kept for all, so that `verify --upgrade` adding the manifest's own hash
    is no change), and the splits training and validation read with their image counts."""
    manifest = data.manifest
    shards = {name: [entry["sha256"] for entry in split["shards"]] for name, split in manifest["splits"].items()}
    return {"path": str(data.cfg.path), "manifest_sha256": manifest.get("manifest_sha256"),
            "shards_sha256": hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest(),
            "train": {"split": data.train_reader.split, "count": len(data.train_reader)},
            "val": {"split": data.val_reader.split, "count": len(data.val_reader)}}


def _data_differences(saved: dict, now: dict) -> list[str]:
    """What differs between the data a checkpoint recorded and `now`'s, in words; [] when nothing does."""
    found = []
    if saved.get("manifest_sha256") and now["manifest_sha256"]:
        if saved["manifest_sha256"] != now["manifest_sha256"]:
            found.append(f"prepared again: manifest SHA-256 differs ({saved['manifest_sha256'][:12]}... -> "
                         f"{now['manifest_sha256'][:12]}...)")
    elif saved.get("shards_sha256") != now["shards_sha256"]:
        found.append("prepared again: its shards' SHA-256 differ")
    for role in ("train", "val"):
        was, new = saved.get(role) or {}, now[role]
        # Another split read (data.train_splits, data.val_split) is a config change, refused or allowed by its key.
        if was.get("split") == new["split"] and was.get("count") != new["count"]:
            found.append(f"{role} split {was.get('count')} -> {new['count']} images")
    return found


def _check_data(run: Run, path: Path, saved: dict, state: RunState) -> None:
    """Refuse a resume onto other data than checkpoint `path` was trained on (one line naming the folder, what
    differs and what to do), unless --allow-change data.path accepts it, which is then logged and recorded in
    metrics.jsonl. A mid-epoch checkpoint is refused even then when the epoch's order changed (its steps, or the
    number of images its permutation is drawn over): the steps it already took would not be this epoch's.
    Checkpoints from before data identity resume as they did (only their steps per epoch can be compared)."""
    data = run.data
    now = data_identity(data)
    differs = _data_differences(saved["data"], now) if "data" in saved else []
    saved_steps = saved.get("steps_per_epoch", data.steps_per_epoch)
    saved_count = saved["data"]["train"]["count"] if "data" in saved else len(data.train_reader)
    reordered = saved_steps != data.steps_per_epoch or saved_count != len(data.train_reader)
    if state.start_step and reordered:
        steps = [f"{saved_steps} -> {data.steps_per_epoch} steps per epoch"] * (saved_steps != data.steps_per_epoch)
        what = "; ".join(differs + steps)
        raise checkpoint.CheckpointError(
            f"{path} was saved mid-epoch (step {state.start_step}) on other data than {data.cfg.path} holds now "
            f"({what}): the epoch's order is not the same, so its position inside the epoch means nothing here, "
            f"with --allow-change or without. Point data.path at the data the run was trained on, or resume from "
            f"an epoch-end checkpoint ({_epoch_end(path, state)}) with --allow-change data.path")
    if not differs:
        return
    what = "; ".join(differs)
    if "data.path" not in run.allow_change:
        raise checkpoint.CheckpointError(
            f"{path} was trained on other data than {data.cfg.path} holds now ({what}); point data.path at the data "
            "the run was trained on (--set data.path=...), or pass --allow-change data.path to go on with this data "
            "from here (recorded in metrics.jsonl)")
    run.log(f"allowed change (--allow-change data.path): {data.cfg.path} ({what}), in effect from this step")
    run.changes["data.path"] = {"saved": saved["data"], "now": now}


def _epoch_end(path: Path, state: RunState) -> str:
    """The newest epoch-end checkpoint of this run beside the refused mid-epoch one `path`, as a --resume argument:
    --resume auto would take the refused one again."""
    ends = [p for p in checkpoint.list_checkpoints(path.parent, state.run_id)
            if p.name.endswith("-000000.pt") and p.name <= f"ckpt-{state.start_epoch:04d}-000000.pt"]
    return f"--resume {ends[-1]}" if ends else f"ckpt-EEEE-000000.pt; none is left in {path.parent}"


def _changes(run: Run, saved_config: dict) -> dict:
    """key -> {saved, now} for each config value this resume changes, leaving out the hardware-made choices
    (start_processes settles those) and the keys that change how a run is watched, not what it trains."""
    out = {}
    for section, values in saved_config.items():
        now = run.cfg.to_dict().get(section, {})
        for key, old in values.items():
            name = f"{section}.{key}"
            if key in now and now[key] != old and name not in runtime.HARDWARE_KEYS and name not in run_folder.FREE_ON_RESUME:
                out[name] = {"saved": old, "now": now[key]}
    return out


def _finished_results(run: Run, state: RunState) -> dict | None:
    """A finished run (`make train` again, or --resume auto after the end) has nothing to train: its results.json,
    kept as it is rather than redoing precise BN and overwriting it with this call's timings."""
    data = run.data
    if state.start_epoch * data.steps_per_epoch + state.start_step < data.total_steps:
        return None
    done = dist.broadcast_object(json.loads((run.out / "results.json").read_text())
                                 if run.env.is_main and (run.out / "results.json").is_file() else None)
    if done is not None:
        split = done.get("headline", {}).get("split", "val")
        run.log(f"{run.out}: already trained for {data.epochs} epochs; results.json kept (top-1 error "
                f"{done['top1_err']:.2f}% on {split}, single centre view)" if "headline" in done else
                f"{run.out}: already trained for {data.epochs} epochs; results.json kept (top-1 error "
                f"{done['top1_err']:.2f}%)")
    return done


# --- Checkpoints ---------------------------------------------------------------------------------------------

def save(run: Run, state: RunState, epoch: int, step: int, tally: EpochTally | None = None, seconds: float = 0.0,
         record: dict | None = None) -> None:
    """Checkpoint (epoch, step): the next step to run. Collective: every rank calls it at the same step.
    `tally`, `seconds`: an unfinished epoch's numbers so far; `record`: the finished epoch's training numbers,
    for a resume to evaluate and log it if need be."""
    learner, data, env = run.learner, run.data, run.env
    # A diverged state must never become the newest checkpoint: every rank checks its weights and loss sums.
    finite = torch.stack([p.detach().isfinite().all() for p in learner.model.parameters()]).all()
    if tally is not None:
        finite = finite & tally.sums.sums.isfinite().all()
    if dist.all_reduce_sum((~finite).float().view(1)).item():
        raise TrainingError(f"non-finite weights or loss at epoch {epoch} step {step}; nothing saved, the newest "
                            f"good checkpoint is {_newest(run.ckpt_dir)} (lower the LR or check the data, then "
                            "--resume auto)")
    ranks = dist.all_gather_object({"rng": checkpoint.rng_state(), "seconds": seconds,
                                    "wait": tally.wait if tally is not None else 0.0,
                                    "sums": tally.sums.state_dict() if tally is not None else None})
    if env.is_main:
        done = state.steps_done(epoch * data.steps_per_epoch + step, data.steps_per_epoch)
        saved = {**_model_file(run, epoch, step), "optimizer": learner.optimizer.state_dict(),
                 "scaler": learner.scaler.state_dict(), "run_id": state.run_id, "steps_per_epoch": data.steps_per_epoch,
                 "steps_done": done, "global_batch": data.global_batch, "world": env.world, "lr": learner.lr,
                 "ranks": ranks, "hardware": run.facts, "data": data_identity(data)}
        if learner.ema is not None:
            saved["ema"] = learner.ema.state_dict()
        if record is not None:
            saved["epoch_record"] = record
        checkpoint.save(run.ckpt_dir, saved, epoch, step, keep=run.cfg.train.keep_checkpoints)
    dist.barrier()
    state.last_ckpt_time = time.time()


def _model_file(run: Run, epoch: int, step: int) -> dict:
    """What every checkpoint and final.pt hold: the weights, at (epoch, step), with what `evaluate`, `predict` and
    a resume need to rebuild the model."""
    manifest = run.data.manifest
    return {"model": run.learner.model.state_dict(), "epoch": epoch, "step": step, "config": run.cfg.to_dict(),
            "chosen_on": run.chosen_on, "version": __version__, "classes": manifest["classes"],
            "class_names": manifest.get("class_names", manifest["classes"]), "in_channels": run.data.channels,
            # The stored image size: predict and export size their input by it, and the run's data.path may be
            # relative to a folder they are not run from; for the same reason, where that path led
            # (`evaluate` reads the data from there when the path as given finds none).
            "image": dict(manifest["image"]), "data_folder": _absolute(run.cfg.data.path)}


def _absolute(path: str) -> str:
    """A local data.path as an absolute path (a URL as it is)."""
    from ..data.shards.remote import is_url

    return str(path) if is_url(str(path)) else str(Path(path).resolve())


def _newest(ckpt_dir: Path) -> str:
    found = checkpoint.list_checkpoints(ckpt_dir)
    return str(found[-1]) if found else f"(none yet in {ckpt_dir})"
