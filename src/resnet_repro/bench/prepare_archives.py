"""``resnet-repro bench prepare --archives``: ImageNet prepared from the official archives in place, against
extracting them first (the folder path), on the same small archive set.

    resnet-repro bench prepare --archives [--images 500] [--workers 2] [--repeats 3] [--json]

It makes ``--images`` photo-like ~500x375 q90 JPEGs in 10 classes, packed as the official archives are (an
outer train tar of per-class <wnid>.tar, a flat val tar of a tenth of the images, the devkit .tar.gz with
data/meta.mat and the val ground truth; scipy writes meta.mat). Then, ``--repeats`` rounds, each method once:

- extract-then-prepare: what the README's folder path does: ``tar -xf`` the outer tar, each inner tar into its
  class folder (``--workers`` of them at a time, as ``xargs -P``) and deleted, val and the devkit extracted, then
  ``prepare imagenet --src`` with ``--workers`` processes;
- from the archives: ``prepare imagenet --train-tar/--val-tar/--devkit`` with ``--workers`` processes.

Both are wall-clock from the archives to a finished shard folder (the same shards: SHA-256-checked here); the
median and min-max over the rounds are printed. Files are in the page cache after the first round, so this
times the work, not a cold disk: on a real disk extraction also writes ~145 GB and reads it back.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .measure import Spread


def _tar(target: Path | io.BytesIO, files: list[tuple[str, bytes]], mode: str = "w") -> None:
    where = {"fileobj": target} if isinstance(target, io.BytesIO) else {"name": target}
    with tarfile.open(mode=mode, **where) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_300_000_000
            tar.addfile(info, io.BytesIO(data))


def make_archives(root: Path, images: int, classes: int = 10, seed: int = 0) -> dict[str, Path]:
    """A small ILSVRC-2012 download: {"train", "val", "devkit"} archive paths under ``root``."""
    import numpy as np
    from scipy.io import savemat

    from ..data.sources import synthetic

    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + 1000 * c:08d}" for c in range(classes)]
    n_val = max(classes, images // 10)
    jpegs = [synthetic.encode_jpeg(synthetic.photo_like_image(rng, int(500 * rng.uniform(0.9, 1.1)),
                                                              int(375 * rng.uniform(0.9, 1.1))), 90)
             for _ in range(images)]
    root.mkdir(parents=True, exist_ok=True)
    paths = {"train": root / "ILSVRC2012_img_train.tar", "val": root / "ILSVRC2012_img_val.tar",
             "devkit": root / "ILSVRC2012_devkit_t12.tar.gz"}
    inner = []
    for c, w in enumerate(wnids):
        buf = io.BytesIO()
        _tar(buf, [(f"{w}_{i}.JPEG", jpegs[i]) for i in range(n_val + c, images, classes)])
        inner.append((f"{w}.tar", buf.getvalue()))
    _tar(paths["train"], inner)
    _tar(paths["val"], [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpegs[i]) for i in range(n_val)])
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"]
    synsets = np.zeros((classes, 1), dtype=[(f, object) for f in fields])
    for c, w in enumerate(wnids):
        for f, v in zip(fields, (c + 1, w, f"class {c}", "", 0)):
            synsets[c, 0][f] = np.array([[v]]) if isinstance(v, int) else v
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    truth = "".join(f"{i % classes + 1}\n" for i in range(n_val)).encode()
    _tar(paths["devkit"], [("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),
                           ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)], "w:gz")
    return paths


def extract(paths: dict[str, Path], src: Path, workers: int) -> None:
    """The README's extraction, with the `tar` program: outer tar, then each inner tar into its folder."""
    train, val = src / "train", src / "val"
    train.mkdir(parents=True)
    val.mkdir()
    subprocess.run(["tar", "-xf", str(paths["train"]), "-C", str(train)], check=True)

    def inner(t: Path) -> None:
        d = t.with_suffix("")
        d.mkdir()
        subprocess.run(["tar", "-xf", str(t), "-C", str(d)], check=True)
        t.unlink()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(inner, sorted(train.glob("*.tar"))))
    subprocess.run(["tar", "-xf", str(paths["val"]), "-C", str(val)], check=True)
    subprocess.run(["tar", "-xzf", str(paths["devkit"]), "-C", str(src)], check=True)


def _shards(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def bench_prepare_archives(images: int, workers: int, repeats: int, log=print) -> dict:
    from ..data.shards import prepare
    from ..data.sources import imagenet, imagenet_archives
    from . import machine

    info = machine.describe()
    log(machine.line(info))
    tmp = Path(tempfile.mkdtemp(prefix="prepare_archives_bench_"))
    try:
        paths = make_archives(tmp / "download", images)
        size = sum(p.stat().st_size for p in paths.values())
        shards = {"train": 8 * workers, "val": 2 * workers}
        extracted, direct = [], []
        for r in range(repeats):
            t = time.perf_counter()
            extract(paths, tmp / f"src{r}", workers)
            a = prepare.prepare_images(imagenet.discover_imagenet(tmp / f"src{r}"), tmp / f"folders{r}", shards,
                                       workers=workers, progress=False)
            extracted.append(time.perf_counter() - t)
            t = time.perf_counter()
            source = imagenet_archives.discover_archives(paths["train"], paths["val"], paths["devkit"], workers)
            b = prepare.prepare_images(source, tmp / f"archives{r}", shards, workers=workers, progress=False)
            direct.append(time.perf_counter() - t)
            if _shards(a) != _shards(b):
                raise RuntimeError("the two methods gave different shards")  # the bench compares like with like
            extracted_bytes = sum(p.stat().st_size for p in (tmp / f"src{r}").rglob("*") if p.is_file())
            shard_bytes = sum(p.stat().st_size for p in b.iterdir())
            shutil.rmtree(tmp / f"src{r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    e, d = Spread.of(extracted), Spread.of(direct)
    result = {"images": images, "workers": workers, "archive_bytes": size, "extracted_bytes": extracted_bytes,
              "shard_bytes": shard_bytes,
              "extract_then_prepare_s_rounds": extracted, "from_archives_s_rounds": direct,
              "speedup_median": e.median / d.median, "machine": info}
    log(f"{images} images ({size / 1e6:.1f} MB of archives, {extracted_bytes / 1e6:.1f} MB extracted, "
        f"{shard_bytes / 1e6:.1f} MB of shards), "
        f"{workers} worker(s), seconds from the archives to shards: extract-then-prepare {e.text('.2f')}; "
        f"from the archives in place {d.text('.2f')}; in place {result['speedup_median']:.2f} x as fast (medians)")
    return result
