"""``bench loader --compare torchvision``: the familiar torchvision pipeline (ImageFolder + RandomResizedCrop + flip
+ ColorJitter + ToTensor + Normalize) on the same images, batch size and worker count as ours (loader.py's module
docstring says why its ColorJitter is chosen to match ``data.color``). torchvision is optional."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path


def torchvision_transform(data_cfg):
    """The torchvision pipeline a user would write for `data_cfg`'s augmentation, and its description:
    RandomResizedCrop(224) + flip + the ColorJitter doing the same colour operations + ToTensor + Normalize.

    color tf_cnn / tf_cnn_hsv (brightness +-32/255, saturation and contrast [0.5, 1.5], hue +-0.2*pi rad in YIQ /
    +-0.2 turn in HSV) -> ColorJitter(32/255, 0.5, 0.5, 0.2): torchvision's brightness is a factor where tf_cnn's
    is an offset and its hue shift is HSV's (tf_cnn_hsv's); the same work per pixel, which is what is compared.
    color jitter -> ColorJitter(0.4, 0.4, 0.4), fb.resnet.torch's. torchvision has no PCA lighting op."""
    import torchvision.transforms as T

    tf_cnn = (32 / 255, 0.5, 0.5, 0.2)
    jitter = {"tf_cnn": tf_cnn, "tf_cnn_hsv": tf_cnn, "jitter": (0.4, 0.4, 0.4, 0.0)}.get(data_cfg.color)
    steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    what = ["RandomResizedCrop(224)", "flip"]
    if jitter is not None:
        steps.append(T.ColorJitter(*jitter))
        what.append(f"ColorJitter({', '.join(f'{v:.3g}' for v in jitter)})")
    steps += [T.ToTensor(), T.Normalize(data_cfg.mean, data_cfg.std)]
    return T.Compose(steps), "ImageFolder + " + " + ".join(what + ["ToTensor", "Normalize"])


def torchvision_rate(reader, indices, workers: int, batch_size: int, batches: int, transform,
                     warmup: int | None = None) -> float:
    """Images/s of ImageFolder + `transform` (torchvision_transform) on the same images."""
    import torch
    from torchvision.datasets import ImageFolder

    warmup = 2 * max(workers, 1) + 2 if warmup is None else warmup
    tmp = Path(tempfile.mkdtemp(prefix="bench-tv-"))
    try:
        for i in indices.tolist():
            key, data, label = reader[i]
            d = tmp / f"{label:05d}"
            d.mkdir(exist_ok=True)
            (d / f"{key}.jpg").write_bytes(data)
        ds = ImageFolder(str(tmp), transform=transform)
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(warmup + batches) * batch_size)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                             prefetch_factor=4 if workers else None)
        t0, count = None, 0
        for k, (x, y) in enumerate(loader):
            if k == warmup - 1:
                t0 = time.perf_counter()
            elif k >= warmup:
                count += len(y)
        return count / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_torchvision(cfg, reader, opts, workers: int, result: dict, log) -> None:
    """``--compare torchvision``: torchvision's pipeline on the same images, batch size and `workers` (opts:
    loader.LoaderOptions), into `result` beside ours."""
    import numpy as np

    from ..data.loading.loader import train_batch_indices

    try:
        transform, what = torchvision_transform(cfg.data)
    except ImportError:
        log("--compare torchvision: torchvision is not installed (pip install torchvision); skipped")
        result["torchvision_images_per_s"] = None
        return
    tv = torchvision_rate(reader, np.concatenate(train_batch_indices(len(reader), opts.batch_size, 0, 0)),
                          workers, opts.batch_size, opts.batches, transform)
    result.update(torchvision_images_per_s=tv, torchvision_pipeline=what, vs_torchvision=result["images_per_s"] / tv)
    log(f"torchvision ({what}{'; it has no PCA lighting' if cfg.data.lighting else ''}), {workers} "
        f"workers: {tv:.0f} img/s; ours {result['vs_torchvision']:.2f} x (target >= 4)")
