"""Top-5 classes of image files under a trained model: ``resnet-repro predict --checkpoint CK IMAGE|FOLDER...``.

Images go through the run's own test geometry (evaluate/protocols.py make_protocol: resize the shorter side,
centre crop) and normalization; a data set stored at a fixed small size (Fashion-MNIST 28x28) has no resize
step of its own, so any other image is first scaled so that its shorter side is that size. Colour images are
converted to grey for 1-channel models, as OpenCV decodes them. The model comes from evaluate/trained_model.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data.decode.cpu import DecodeError, decode
from .data.decode.header import BadImage, read_header, tiff_size
from .evaluate import Trained, eval_transform, make_protocol, score_images
from .runtime import autocast_for, choose_channels_last, pick_device


class PredictError(RuntimeError):
    """An image that cannot be read; the message names the file."""


# Larger than any camera photo (48-50 MP phones), far below a decompression bomb: the header is checked before
# decoding, as `prepare` does (its --max-megapixels, default 100).
MAX_PIXELS = 50_000_000


def read_image(path: str | Path, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PredictError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise PredictError(f"{path}: empty file (0 bytes), not an image")
    try:
        hdr = read_header(data)
        size = (hdr.width, hdr.height)
    except BadImage:
        # TIFF has its own reader; any other format read_header does not parse: OpenCV's limit (2^30 pixels).
        size = tiff_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise PredictError(f"{path}: the header says {w}x{h} = {w * h / 1e6:,.0f} MP, over predict's "
                           f"{max_pixels / 1e6:.0f} MP limit (decoding it would take {w * h * 3 / 1e9:.1f} GB); "
                           "shrink the image first")
    try:
        return decode(data, channels)
    except DecodeError:
        raise PredictError(f"{path}: not an image OpenCV can decode (JPEG, PNG, BMP, TIFF, WebP ...)") from None


# What a folder argument contributes: the files OpenCV decodes, by suffix (a file named on the command line is read
# whatever its name). Names starting with "." are skipped: macOS's "._x.jpg" resource forks are no images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                  ".pbm", ".pnm")


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to score: each file as given, each folder replaced by the image files under it (all depths,
    sorted, so a run over a folder always lists them in one order). A folder with none is an error naming it."""
    files = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        if not found and (path / "manifest.json").is_file():
            raise PredictError(f"{path}: a prepared data folder (image shards), not image files: score its splits "
                               f"with resnet-repro evaluate --checkpoint CK --data {path} --split NAME")
        if not found:
            raise PredictError(f"{path}: a folder with no image files under it ({', '.join(IMAGE_SUFFIXES)})")
        files.extend(found)
    return files


# Images decoded at once: a chunk is scored, its results handed on and its pixels freed before the next is read,
# so a folder of any size fits in memory (64 Fashion-MNIST images are 50 kB, 64 phone photos ~2 GB: hence both).
CHUNK_IMAGES = 64
CHUNK_BYTES = 256 * 2**20


def predict_iter(trained: Trained, paths: list[str | Path], topk: int = 5, protocol: str = "single",
                 device: str = "cpu", precision: str | None = None, errors: str = "raise"):
    """For each image, in order: {"image", "protocol", "precision", "top": its `topk` classes, best first, as
    {"class", "name", "prob"} (mean softmax over views)}; images are read and scored a chunk at a time.

    `device`: a device name (cpu, cuda, cuda:N, or auto: a GPU when there is one). `precision`: None = the run's
    recorded train.precision (fp32 for a run from before it was recorded, whose config says auto). `errors`:
    "raise" stops at the first file that cannot be read (PredictError naming it); "report" yields
    {"image", "error"} for it in its place and goes on."""
    device = pick_device(device)
    chosen = precision or trained.cfg.train.precision
    autocast, chosen = autocast_for("fp32" if chosen == "auto" else chosen, device)
    d = trained.cfg.data
    crop = trained.input_size("predict")
    p = make_protocol(protocol, d, trained.image_size, resize=d.val_resize or crop, crop=crop)
    channels_last = choose_channels_last(trained.cfg.train.channels_last, device.type, chosen).value  # as trained
    model = trained.model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    transform = eval_transform(d, trained.in_channels, device, channels_last)

    def scored(chunk: list[tuple[Path, np.ndarray | str]]):
        good = [(path, img) for path, img in chunk if not isinstance(img, str)]
        if good:
            (probs,) = score_images(model, [img for _, img in good], [p], transform, device, autocast)
            values, indices = probs.cpu().topk(min(topk, probs.shape[1]), dim=1)
            tops = iter([[{"class": trained.classes[i], "name": trained.class_names[i], "prob": float(v)}
                          for v, i in zip(vals.tolist(), idx.tolist())] for vals, idx in zip(values, indices)])
        for path, img in chunk:
            if isinstance(img, str):
                yield {"image": str(path), "error": img}
            else:
                yield {"image": str(path), "protocol": p.describe(), "precision": chosen, "top": next(tops)}

    chunk, held = [], 0
    for path in paths:
        try:
            img = read_image(path, trained.in_channels)
            held += img.nbytes
        except PredictError as e:
            if errors != "report":
                raise
            img = str(e).removeprefix(f"{path}: ")
        chunk.append((path, img))
        if len(chunk) == CHUNK_IMAGES or held >= CHUNK_BYTES:
            yield from scored(chunk)
            chunk, held = [], 0
    yield from scored(chunk)


def predict(trained: Trained, paths: list[str | Path], topk: int = 5, protocol: str = "single",
            device: str = "cpu", precision: str | None = None) -> list[dict]:
    """predict_iter's results as a list; the first file that cannot be read raises PredictError naming it."""
    return list(predict_iter(trained, paths, topk, protocol, device, precision))


def format_predictions(predictions: list[dict]) -> str:
    lines = []
    for pred in predictions:
        lines.append(f"{pred['image']}:")
        for rank, t in enumerate(pred["top"], start=1):
            label = t["name"] if t["name"] == t["class"] else f"{t['name']} ({t['class']})"
            lines.append(f"  {rank}. {100 * t['prob']:6.2f}%  {label}")
    return "\n".join(lines)
