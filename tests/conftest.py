"""Shared helpers: small data sets the tests make themselves (record shards, IDX files), and the CLI in-process.

Nothing here reads data/ or the network; every data set is built under pytest's tmp_path in well under a second.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet_repro.data.shards import records

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_RECIPE = REPO / "configs" / "fashion_mnist" / "resnet20.yaml"


# --- Synthetic images: four texture classes that survive pad-crop and horizontal flip ----------------------------

def texture_images(n: int, size: int, seed: int = 0, num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` grayscale images [n, size, size] uint8 and labels in [0, num_classes), classes balanced.

    Class 0: horizontal stripes, 1: vertical stripes, 2: checkerboard, 3: flat grey; each with a random
    phase and pixel noise. Textures (not positions) keep the classes apart under the paper's pad-crop + flip,
    so a few epochs of ResNet-20 learn them.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size), np.uint8)
    for i, c in enumerate(labels):
        py, px = rng.integers(0, 4, size=2)
        pattern = {0: ((yy + py) // 2) % 2, 1: ((xx + px) // 2) % 2,
                   2: (((yy + py) // 2) + ((xx + px) // 2)) % 2, 3: np.full((size, size), 0.5)}[int(c) % 4]
        img = 40 + 170 * pattern + rng.normal(0, 12, (size, size))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def write_image_dataset(root: Path, splits: dict[str, int], size: int = 16, num_classes: int = 4, seed: int = 0,
                        shards: int = 2) -> Path:
    """A prepared data set folder (shards + manifest.json) in the layout `prepare` writes, of texture images."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = {}
    for k, (split, n) in enumerate(splits.items()):
        images, labels = texture_images(n, size, seed + k, num_classes)
        samples = [records.Sample(f"{split}_{i:05d}", png(img), "png", int(lab))
                   for i, (img, lab) in enumerate(zip(images, labels))]
        entries[split] = records.write_split(root, split, samples, shards, seed + k)
    records.write_manifest(root, {
        "format": records.FORMAT, "dataset": "synthetic-textures",
        "classes": [str(i) for i in range(num_classes)],
        "image": {"height": size, "width": size, "channels": 1},
        "encoding": {"ext": "png", "lossless": True}, "splits": entries})
    return root


@pytest.fixture(scope="session")
def texture_data(tmp_path_factory) -> Path:
    """256 training and 64 validation 16x16 texture images in 2 + 2 shards (shared, read-only)."""
    return write_image_dataset(tmp_path_factory.mktemp("textures"), {"train": 256, "val": 64})


# --- IDX files as Fashion-MNIST ships them -------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic_dims: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: 00 00 08 <dims>, big-endian uint32 sizes, payload."""
    dims = array.ndim if magic_dims is None else magic_dims
    return bytes([0, 0, 8, dims]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_gz(path: Path, raw: bytes) -> Path:
    # mtime=0: the same content gives the same .gz bytes (the served files in the download tests).
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


def write_fashion_mnist_src(src: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    """The four Fashion-MNIST .gz files with a few random 28x28 images. Returns {file name: (array, sha256 of
    the decompressed content)}."""
    src = Path(src)
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    out = {}
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        write_gz(src / name, raw)
        out[name] = (arr, hashlib.sha256(raw).hexdigest())
    return out


# --- The command line, in-process ------------------------------------------------------------------------------

@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> (exit code, stdout, stderr)`` through resnet_repro.cli.main, without a new interpreter."""
    from resnet_repro.cli import main

    def run(*argv):
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_clear_line(code, err, *names):
    """A refused command: exit status 2 and one line ``error: ...`` on stderr naming each of ``names``."""
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, (name, err)


# --- Tiny training runs (tests/test_run_folder.py, tests/test_faults.py) ---------------------------------------

_TINY_RUN = """\
data: {path: DATA, batch_size: 8, eval_batch_size: 5, workers: 0, pad: 1, normalize: scale}
model: {name: resnet20}
optim: {lr: 0.2, lr_batch: 8, nesterov: true}
schedule: {kind: cosine, warmup_epochs: 0.5}
train: {device: cpu, precision: fp32, epochs: EPOCHS, seed: 3, threads: 1, channels_last: false, log_interval: LOG_INTERVAL,
        precise_bn_batches: 2, deterministic: true, checkpoint_every_steps: EVERY_STEPS, keep_checkpoints: 3}
"""
# What two runs of one recipe may differ in: the timings and the memory in their metrics.jsonl records.
TIMING = {"images_per_s", "data_wait_fraction", "seconds", "peak_memory_mb"}


def tiny_run_recipe(data: Path, epochs: int, log_interval: int, checkpoint_every_steps: int) -> str:
    """ResNet-20 on ``data`` (write_image_dataset's 96 + 23 images of 8x8: batch 8, 12 steps per epoch) on one
    CPU thread, deterministic, 3 checkpoints kept; the tests differ in run length, logging and mid-epoch
    checkpoints."""
    # The path last: it may hold any word, a placeholder's too.
    return (_TINY_RUN.replace("EPOCHS", str(epochs)).replace("LOG_INTERVAL", str(log_interval))
            .replace("EVERY_STEPS", str(checkpoint_every_steps)).replace("DATA", str(data)))


def kill_after_shards(monkeypatch, n: int):
    """Make a prepare die (KeyboardInterrupt, as a kill) while closing its shard n+1: n shards complete, one
    half-written; the resume tests then check that a second run finishes with the clean run's bytes. Returns the
    real ShardWriter.close, for the tests to put back or wrap."""
    real_close, closed = records.ShardWriter.close, []

    def dying_close(self):
        if len(closed) == n:
            raise KeyboardInterrupt("simulated kill")
        closed.append(self.path)
        return real_close(self)

    monkeypatch.setattr(records.ShardWriter, "close", dying_close)
    return real_close
