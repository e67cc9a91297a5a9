"""Checkpoints that are either whole or recognisably not.

Each checkpoint is ``ckpt-EEEE-SSSSSS.pt`` (epoch, step within the epoch) plus ``.pt.sha256`` holding the
SHA-256 of the ``.pt`` and, on a second line ``run RUN_ID``, the run it belongs to (so pruning and
``--resume auto`` can tell a run's own checkpoints without loading any). Both are written through atomic.py
(temp file, fsync, rename), the checksum last; a reader trusts a checkpoint only if the checksum file exists and
matches. Loading uses ``weights_only=True``, so a checkpoint can hold tensors and plain containers only, and
no pickled code ever runs.

What training/resume.py saves (one dict): ``model``, ``optimizer``, ``scaler``, ``ema`` (when enabled), ``epoch`` and
``step`` (the next step to run in that epoch; the LR is a pure function of them, see schedule.py),
``steps_per_epoch``, ``global_batch``, ``world``, ``ranks`` (one entry per rank: its RNG states and its running
metric sums of the unfinished epoch, so a resumed epoch logs the same numbers), ``config`` (resolved),
``chosen_on`` (the hardware facts that made the config's hardware-made choices) and ``hardware`` (the facts of the
machine that saved it), ``version``, ``run_id`` (the run folder's run.json), ``epoch_record`` (epoch-end checkpoints: the epoch's
training numbers, so a resume can evaluate and log an epoch a crash left unlogged), and what
``evaluate``/``predict`` need to rebuild the model (``classes``, ``in_channels``, ...); ``load_model_file`` checks
those are there, with the right types, before anything is built from them.
"""
from __future__ import annotations

import hashlib
import io
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from . import atomic

_NAME = re.compile(r"^ckpt-(\d{4})-(\d{6})\.pt$")


class CheckpointError(RuntimeError):
    pass


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or is left as it was (atomic.py: temp file, fsync, rename). A failed write
    (disk full, read-only) removes the temp file and raises CheckpointError naming ``path``."""
    try:
        atomic.write_bytes(path, data)
    except OSError as e:
        raise CheckpointError(f"cannot write {path} ({e.strerror}); nothing was replaced: free space or fix the "
                              "folder's permissions, then run again (a training run: with --resume auto)") from None


def read_sidecar(path: Path) -> tuple[str, str | None] | None:
    """(SHA-256, run id or None) from ``path.sha256``; None if there is no such file."""
    sidecar = Path(path).with_name(Path(path).name + ".sha256")
    try:
        lines = sidecar.read_text().split("\n")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as e:  # a folder in its place, binary garbage, no permission
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not text"
        raise CheckpointError(f"checkpoint {path}: its checksum file {sidecar} cannot be read ({reason}), so the "
                              f"checkpoint cannot be checked: copy the checkpoint again together with its "
                              f"{sidecar.name}, or delete both") from None
    run = next((ln.split(None, 1)[1].strip() for ln in lines[1:] if ln.startswith("run ")), None)
    return lines[0].strip(), run


def save_file(path: Path, state: dict) -> Path:
    """Write ``state`` to ``path`` and its checksum to ``path.sha256``, each atomically, checksum last.
    The checksum file also names ``state["run_id"]`` when there is one."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    sidecar = path.with_name(path.name + ".sha256")
    write_atomic(path, data)
    run = f"run {state['run_id']}\n" if state.get("run_id") else ""
    try:
        write_atomic(sidecar, (hashlib.sha256(data).hexdigest() + "\n" + run).encode())
    except CheckpointError:
        path.unlink(missing_ok=True)  # leave no checkpoint that cannot be verified
        raise
    atomic.fsync_path(path.parent)  # make the renames themselves durable
    return path


def save(ckpt_dir: Path, state: dict, epoch: int, step: int, keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint for (epoch, step) and keep only the newest ``keep`` of its run
    (``state["run_id"]``): a checkpoint another run left in the folder is never pruned in its place."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = save_file(ckpt_dir / f"ckpt-{epoch:04d}-{step:06d}.pt", state)
    for old in list_checkpoints(ckpt_dir, state.get("run_id"))[:-keep] if keep > 0 else []:  # keep=0: keep all
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path, run_id: str | None = None) -> list[Path]:
    """Checkpoint files in (epoch, step) order, oldest first, whole or not. With ``run_id``: only those whose
    checksum file names this run or no run (from before run ids). One without a checksum file is nobody's: a
    write cut short, of this run or another, which pruning must not delete for this run (load_latest skips it)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))
    if run_id is None:
        return found
    return [p for p in found if (side := _sidecar_or_none(p)) is not None and side[1] in (None, run_id)]


def _sidecar_or_none(path: Path) -> tuple[str, str | None] | None:
    # An unreadable checksum file makes its checkpoint nobody's, as a missing one does: pruning must not delete
    # it for this run, nor stop the run that is saving.
    try:
        return read_sidecar(path)
    except CheckpointError:
        return None


def load(path: Path, map_location="cpu") -> dict:
    """Load one checkpoint, verifying its checksum; raises CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    data = path.read_bytes()
    sidecar = path.with_name(path.name + ".sha256")
    side = read_sidecar(path)
    if side is None:
        # Written last, so a checkpoint whose write was cut short has none; a copied checkpoint may lack it too.
        raise CheckpointError(f"checkpoint {path}: no {sidecar.name} next to it, so it cannot be checked: copy it "
                              f"together with its {sidecar.name} (the checksum is written last; a checkpoint "
                              "whose write was cut short has none either)")
    if hashlib.sha256(data).hexdigest() != side[0]:
        raise CheckpointError(f"checkpoint {path}: SHA-256 does not match {sidecar.name} (torn or corrupt file)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        # One line: torch's weights-only refusal runs to a dozen lines and advises weights_only=False, which is
        # the wrong advice for a damaged or foreign file.
        lines = str(e).strip().splitlines()
        reason = "not a weights-only torch file" if "Weights only load failed" in str(e) or not lines else lines[0][:200]
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(e).__name__}: {reason}); the file is "
                              "damaged or not a resnet-repro checkpoint") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path}: not a resnet-repro checkpoint (no 'model' entry)")
    return state


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


# What evaluate/predict/export rebuild the model from (training/resume.py's _model_file): entry -> (whether it
# must be there, the check, what it should be). The optional ones are absent from older or EMA-less checkpoints.
_MODEL_FILE = {
    "model": (True, _is_tensor_dict, "the weights, a mapping of parameter names to tensors"),
    "config": (True, lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
               "the run's config, a mapping of sections to mappings"),
    "classes": (True, lambda v: isinstance(v, (list, tuple)) and len(v) > 0, "a non-empty list of class ids"),
    "in_channels": (True, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                    "the number of image channels, a whole number"),
    "class_names": (False, lambda v: isinstance(v, (list, tuple)), "a list of class names"),
    "model_ema": (False, _is_tensor_dict, "the EMA weights, a mapping of parameter names to tensors"),
    "ema": (False, lambda v: isinstance(v, dict), "the EMA's state, a mapping"),
    "image": (False, lambda v: isinstance(v, dict), "a mapping of the stored image's facts"),
}


def load_model_file(path: Path, map_location="cpu") -> dict:
    """``load``, for a checkpoint used to rebuild its model (evaluate, predict, export): also raises
    CheckpointError naming the file and the entry when one that rebuilding needs is missing or of the wrong type,
    since a checksum only says the file is as written, not that a resnet-repro run wrote it."""
    state = load(path, map_location)
    for key, (required, ok, what) in _MODEL_FILE.items():
        if key not in state:
            if required:
                raise CheckpointError(f"checkpoint {path}: no {key!r} entry ({what}); it is not a checkpoint of "
                                      "a resnet-repro run, or one written by a different program")
        elif not ok(state[key]):
            raise CheckpointError(f"checkpoint {path}: entry {key!r} is a {type(state[key]).__name__}, not {what}; "
                                  "the file is not a resnet-repro checkpoint as training writes it")
    names = state.get("class_names")
    if names is not None and len(names) != len(state["classes"]):
        raise CheckpointError(f"checkpoint {path}: entry 'class_names' has {len(names)} names for "
                              f"{len(state['classes'])} classes")
    return state


def load_latest(ckpt_dir: Path, map_location="cpu", run_id: str | None = None) -> tuple[Path, dict] | None:
    """The newest whole checkpoint (of run ``run_id`` when given), skipping torn ones and other runs' with a
    warning; None if there is none."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        side = _sidecar_or_none(path)  # unreadable: load below says so and it is skipped like a torn one
        if run_id is not None and side is not None and side[1] not in (None, run_id):
            print(f"warning: skipping checkpoint {path}: it belongs to run {side[1]}, not this folder's run {run_id}",
                  file=sys.stderr)
            continue
        try:
            return path, load(path, map_location)
        except CheckpointError as e:
            print(f"warning: skipping {e}", file=sys.stderr)
    return None


def rng_state() -> dict:
    """This process's random number generator states, in types ``weights_only`` loading accepts.

    The pipeline draws its augmentation from (seed, epoch, index) alone (data/augment/), so these matter only
    to code that uses the global generators (dropout-like layers, a future augmentation); saved all the same, so
    that resuming never depends on that being true.
    """
    np_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            # Only where this process uses CUDA: a CPU run on a GPU machine must not open a CUDA context for this.
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA states only where this process has the same GPUs)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_initialized() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
