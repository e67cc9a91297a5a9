"""What several commands share: the checks made before any work (a number option out of its range; a CUDA device
where there is none; an output file that is a folder, sits in an unwritable one or is one of the command's own
inputs), writing a JSON result, and the trained model that --checkpoint or --torchvision-weights names."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import Range
from ..errors import UserError


def whole(lo: int, hi: int | None = None, zero: str = ""):
    """An argparse ``type``: a whole number in [lo, hi]. Refused at parse time, argparse naming the option, because
    what lies outside does not fail cleanly later: a negative --max-side shrank every image to 1x1, a negative crop
    divided by zero after the model had loaded. ``zero`` says what 0 means where it is the "default" value below lo
    (e.g. "the default"), so that the message lists it. The bound is the config's Range, worded as config errors are."""
    bound = Range(lo, hi)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value == 0 and zero:
            return value
        if value not in bound:
            raise argparse.ArgumentTypeError(f"{value}: must be {bound}" + (f" (or 0: {zero})" if zero else ""))
        return value

    parse.__name__ = "whole number"  # argparse's "invalid <name> value" for a type error it makes itself
    return parse


def trained_from_args(args):
    """--checkpoint CK, or --torchvision-weights FILE --model NAME --data DIR -> evaluate.Trained."""
    if getattr(args, "torchvision_weights", None):
        if args.checkpoint:  # one of the two would be silently ignored
            raise UserError("give --checkpoint or --torchvision-weights, not both")
        if not args.model or not args.data:
            raise UserError("--torchvision-weights needs --model NAME (resnet18 ... resnet152) and --data DIR")
        from ..evaluate import trained_from_torchvision

        return trained_from_torchvision(args.torchvision_weights, args.model, args.data)
    if not args.checkpoint:
        raise UserError("give --checkpoint CK (a run's final.pt or checkpoints/ckpt-*.pt)")
    from ..evaluate import load_trained

    return load_trained(args.checkpoint, args.weights, args.data)


def check_device(name: str, what: str, instead: str) -> None:
    """A CUDA device asked for where there is none: one line now, not torch's traceback later."""
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{what} is {name}, but no CUDA device is visible here (torch {torch.__version__}, "
                            f"torch.cuda.is_available() is False); use {instead}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare the resolved paths
        return os.path.realpath(a) == os.path.realpath(b)


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` is, or can be made as, a folder this process can write in (tried, not guessed from the mode
    bits, which do not bind root)."""
    import tempfile

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
    except OSError as e:
        raise UserError(f"{what}: cannot write in {existing} ({e.strerror}); choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(out, inputs=(), flag: str = "--out") -> Path:
    """Before any work: ``out`` must be a file path in a writable folder and none of the command's inputs."""
    out = Path(out)
    for source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise UserError(f"{flag} {out} is this command's own input ({source}); writing it would destroy it: "
                            "choose another file name")
    if out.is_dir():
        raise UserError(f"{flag} {out} is a folder; give a file name (e.g. {out / 'out.json'})")
    check_writable_folder(out.parent, f"{flag} {out}")
    return out


def inputs_of(args) -> list:
    """The files `evaluate` / `export` read: a written --out must be none of them."""
    found = []
    for name in ("checkpoint", "torchvision_weights"):
        path = getattr(args, name, None)
        if path:
            found += [path, str(path) + ".sha256"]
    data = getattr(args, "data", None)
    if data:
        found.append(Path(data) / "manifest.json")
    return found


def write_json(path: str, obj) -> None:
    from ..checkpoint import write_atomic

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {path.parent} ({e.strerror})") from None
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())
