"""The end of a run, after its last step: precise BN and the final evaluation on val (of the model and of its EMA),
the one scoring of the test split, results.json and the weights files; and `_evaluate`, the val pass of every
evaluation during training (evaluate/val_pass.py)."""
from __future__ import annotations

import json
import signal
import time

import torch.nn as nn

from .. import __version__, checkpoint, dist
from ..config import model_entry
from ..data.loading.loader import BatchDataset
from ..data.shards.remote import open_reader
from ..evaluate import evaluate
from ..figures import top5_text
from ..paired import labels_digest
from ..precise_bn import update_bn_stats
from ..stopping import StopRequest
from .resume import _model_file
from .state import Run, RunState


def finish(run: Run, state: RunState, stop: StopRequest, t_start: float) -> dict:
    """Precise BN and the final evaluation of the model (and of its EMA) on val, then the one scoring of the test
    split (where the data set has one), results.json and the weights files."""
    cfg, data, learner, log = run.cfg, run.data, run.learner, run.log
    # A stop signal from here on is not acted on: every step is trained and checkpointed, and what is left
    # (precise BN, evaluation, final files) is minutes at most; say so rather than ignore it silently.
    said = []

    def note_stop() -> None:
        if stop and not said:
            said.append(True)
            log(f"signal {signal.Signals(stop.signum).name} during the final precise BN / evaluation: finishing "
                f"them rather than stopping (training is complete and checkpointed in {run.ckpt_dir}; if the process "
                "is killed anyway, the same command with --resume auto redoes only this last part)", flush=True)

    train_wall = time.time() - t_start
    n_bn = cfg.train.precise_bn_batches
    before, after, used = _with_precise_bn(run, learner.model)
    if n_bn > 0:
        log(f"precise BN over {used} batches x {data.global_batch}: val top-1 error {before['top1_err']:.2f}% -> "
            f"{after['top1_err']:.2f}%" + _single_view_note(after))
    note_stop()
    ema_results = {}
    if learner.ema is not None:
        # The averaged weights get their own exact BN statistics (see ema.py), from the same batches.
        ema_before, ema_after, _ = _with_precise_bn(run, learner.ema.module, outcomes=False)
        # ema_top1_err is the training's own protocol, as the live model's val figure in the epoch lines; with the
        # mirror the single centre view is recorded beside it (ema_top1_err_single), the figure the headline uses.
        ema_results = {"ema_decay": cfg.train.ema, "ema_top1_err": ema_after["top1_err"],
                       "ema_top5_err": ema_after["top5_err"], "ema_top1_err_before_precise_bn": ema_before["top1_err"],
                       **({"ema_top1_err_single": ema_after["top1_err_single"],
                           "ema_top5_err_single": ema_after["top5_err_single"]} if "top1_err_single" in ema_after
                          else {})}
        log(f"EMA weights (decay {cfg.train.ema:g}): val top-1 error {ema_before['top1_err']:.2f}% -> "
            f"{ema_after['top1_err']:.2f}% after precise BN" + _single_view_note(ema_after))
    # The test split, scored once, here: after precise BN, with the recipe's protocol (and the single view).
    test = _score_test(run)
    note_stop()
    steps = state.steps_done(data.total_steps, data.steps_per_epoch)
    trained_steps = steps - state.steps_before  # by this call: its images per second
    val = {"split": cfg.data.val_split, "held_out": data.val_held_out, "images": after["count"],
           "labels_sha256": labels_digest(data.val_reader.labels), **_by_protocol(after),
           "before_precise_bn": _by_protocol(before, hits=False)}
    head_split, head = (data.test_split, test) if test is not None else (cfg.data.val_split, after)
    single = _by_protocol(head)["single"]
    results = {**model_entry(cfg.model.name, cfg.model.width), "dataset": data.manifest.get("dataset"),
               "epochs": data.epochs,
               # The headline: the single centre view on the test split (on val where the data set has no test
               # split), as the seed and the data sets' benchmarks report; other protocols are extra entries.
               "top1_err": single["top1_err"], "top5_err": single["top5_err"], "classes": head["classes"],
               "headline": {"split": head_split, "protocol": "single", "images": head["count"],
                            "held_out": True if test is not None else data.val_held_out},
               "val": val, **({"test": {"split": data.test_split, "images": test["count"],
                                        "labels_sha256": test["labels_sha256"], **_by_protocol(test)}}
                              if test is not None else {}),
               "precise_bn_batches": n_bn, "val_count": after["count"],
               **({"test_count": test["count"]} if test is not None else {}), "wall_s": time.time() - t_start,
               "train_wall_s": train_wall, "steps": steps,
               "images_per_s": trained_steps * data.global_batch / train_wall,
               "device": str(run.device), "precision": run.precision, "world_size": run.env.world,
               "version": __version__, "val_bad_samples": after["bad"], "eval_protocol": cfg.train.eval_protocol,
               "train_splits": list(cfg.data.train_splits), **ema_results}
    log(_headline_line(results))
    note_stop()
    if run.env.is_main:
        _write_results(run, results)
    if run.tb is not None:
        run.tb.close()
    dist.barrier()  # every rank done with the files before the group closes (train() closes it)
    return results


def _score_test(run: Run) -> dict | None:
    """The model on the test split (None where the data set has none), with the recipe's protocol: the one time
    a run reads the test split. Its reader and loader are built here, not in open_data."""
    data = run.data
    if data.test_split is None:
        return None
    reader = open_reader(run.cfg.data.path, data.test_split, run.cfg.data.cache_dir)
    dataset = BatchDataset(reader, data.val_ds.geometry, data.channels, run.cfg.train.seed, train=False)
    order, total = data.val_order(dataset)
    return {**evaluate(run.learner.model, data.val_batches(dataset), run.device, run.autocast,
                       mirror=run.cfg.train.eval_protocol == "flip", order=order, total=total),
            "labels_sha256": labels_digest(reader.labels)}


def _single_view_note(scored: dict) -> str:
    """For a log line whose figure is centre + mirror: the centre view alone, in brackets ("" for a single view)."""
    if "top1_err_single" not in scored:
        return ""
    return f" (centre + mirror; the centre view alone: {scored['top1_err_single']:.2f}%)"


def _by_protocol(scored: dict, hits: bool = True) -> dict:
    """One evaluation's errors per protocol, the single centre view first: {"single": {...}[, "flip": {...}]}; with
    `hits`, each with the images it got right where the evaluation recorded them (top1_hits, paired.py)."""
    def right(key: str) -> dict:
        return {"top1_hits": scored[key]} if hits and key in scored else {}

    if "top1_err_single" not in scored:
        return {"single": {**{k: scored[k] for k in ("top1_err", "top5_err", "loss")}, **right("top1_hits")}}
    return {"single": {"top1_err": scored["top1_err_single"], "top5_err": scored["top5_err_single"],
                       **right("top1_hits_single")},
            "flip": {**{k: scored[k] for k in ("top1_err", "top5_err", "loss")}, **right("top1_hits")}}


def _headline_line(results: dict) -> str:
    """The closing log line: the headline (single centre view, test split) first, then the extra rows."""
    head = results["headline"]
    out = (f"headline: {head['split']} split ({head['images']} images), single centre view: top-1 error "
           f"{results['top1_err']:.2f}%, top-5 {top5_text(results['top5_err'], results['classes'])}")
    if not head["held_out"]:
        out += " (NOT held out: the split was trained on)"
    for name in ("test", "val"):
        block = results.get(name)
        if block is None:
            continue
        extra = [f"{p} {block[p]['top1_err']:.2f}%" for p in ("single", "flip") if p in block
                 and not (name == head["split"] and p == "single")]
        if extra:
            label = name if block.get("held_out", True) else f"{name}, not held out"
            out += f"; {label}: " + ", ".join(extra)
    return out


def _with_precise_bn(run: Run, module: nn.Module, outcomes: bool = True) -> tuple[dict, dict, int]:
    """(val numbers before, after, batches used): precise BN of `module` over the first train.precise_bn_batches
    batches of the epoch after the last, the same batches for the model and its EMA (none: after = before); with
    `outcomes`, the final numbers say which images were right (results.json records the model's, not the EMA's)."""
    n_bn = run.cfg.train.precise_bn_batches
    before = _evaluate(run, module, outcomes=outcomes and n_bn <= 0)
    if n_bn <= 0:
        return before, before, 0
    bn_batches = run.data.train_batches(run.data.train_jobs(run.data.epochs, n_bn))
    used = update_bn_stats(module, bn_batches, n_bn, run.autocast)
    return before, _evaluate(run, module, outcomes=outcomes), used


def _write_results(run: Run, results: dict) -> None:
    """Rank 0's final files: the weights (safetensors, and final.pt for `evaluate` and `predict`) and results.json."""
    from ..export import save_safetensors

    cfg, learner, classes = run.cfg, run.learner, run.data.manifest["classes"]
    net = {**model_entry(cfg.model.name, cfg.model.width), "classes": classes}
    save_safetensors(learner.model, run.out / "model.safetensors", net)
    if learner.ema is not None:
        save_safetensors(learner.ema.module, run.out / "model_ema.safetensors", {**net, "ema_decay": cfg.train.ema})
    # Final weights (after precise BN).
    checkpoint.save_file(run.out / "final.pt", {**_model_file(run, run.data.epochs, 0),
                                                **({"model_ema": learner.ema.module.state_dict()}
                                                   if learner.ema is not None else {})})
    checkpoint.write_atomic(run.out / "results.json", json.dumps(results, indent=1).encode())
    run.log(json.dumps(_without_hits(results)))  # the per-image bits stay in the file, not in the log


def _without_hits(value):
    """results.json's content less its top1_hits strings (kilobytes of base64 per split)."""
    if isinstance(value, dict):
        return {k: _without_hits(v) for k, v in value.items() if k != "top1_hits"}
    return value


def _evaluate(run: Run, module: nn.Module, outcomes: bool = False) -> dict:
    """`module` (the model or its EMA) over the whole val split, every rank its share (evaluate/val_pass.py); with
    `outcomes`, which images it got right too (the final evaluation's, for results.json)."""
    order, total = run.data.val_order() if outcomes else (None, 0)
    return evaluate(module, run.data.val_batches(), run.device, run.autocast,
                    mirror=run.cfg.train.eval_protocol == "flip", order=order, total=total)
