"""Loader: batches are a pure function of (seed, epoch, index), whatever the worker count or the number of ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_image_dataset
from resnet_repro.config import DataConfig
from resnet_repro.data.augment.device import DeviceTransform
from resnet_repro.data.augment.geometry import EvalGeometry, TrainGeometry
from resnet_repro.data.augment.rng import sample_rng
from resnet_repro.data.decode.cpu import decode
from resnet_repro.data.loading.loader import (BatchDataset, DevicePrefetcher, Job, eval_batch_indices, make_loader,
                                      train_batch_indices)
from resnet_repro.data.shards.reader import RecordReader

N, SIZE, BATCH = 53, 8, 8  # 53 = 6 full batches of 8 and a remainder of 5


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = write_image_dataset(tmp_path_factory.mktemp("loader"), {"train": N}, size=SIZE, shards=3)
    return RecordReader(root, "train")


def train_dataset(reader, seed=0, **data) -> BatchDataset:
    cfg = DataConfig(**{"crop": "pad_crop", "pad": 4, "flip": True, "random_erasing": 0.5, **data})
    return BatchDataset(reader, TrainGeometry(cfg, SIZE), 1, seed, train=True)


def epoch_batches(ds, epoch, workers, seed=0, rank=0, world=1, batch=BATCH):
    jobs = [Job(epoch, s, idx) for s, idx in enumerate(train_batch_indices(N, batch, seed, epoch, rank, world))]
    return [(batch[0], batch[1]) for batch in make_loader(ds, jobs, workers, pin_memory=False)]  # (x, y, bad, ...)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # more than 2 cores, on purpose
def test_same_seed_same_batches_with_0_1_and_3_workers(reader):
    ds = train_dataset(reader)
    ref = epoch_batches(ds, epoch=0, workers=0)
    assert len(ref) == N // BATCH
    x, y = ref[0]
    assert x.dtype == torch.uint8 and x.shape == (BATCH, SIZE, SIZE, 1) and y.dtype == torch.int64
    for workers in (1, 3):
        assert_same_batches(epoch_batches(ds, epoch=0, workers=workers), ref)
    # A fresh dataset object with the same seed (as after a restart) gives the same batches again.
    assert_same_batches(epoch_batches(train_dataset(reader), epoch=0, workers=0), ref)


def test_next_epoch_and_other_seed_change_order_and_augmentation(reader):
    ds = train_dataset(reader)
    e0 = train_batch_indices(N, BATCH, 0, 0)
    e1 = train_batch_indices(N, BATCH, 0, 1)
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))
    assert not np.array_equal(np.concatenate(e0), np.concatenate(train_batch_indices(N, BATCH, 1, 0)))
    # The same sample gets different random geometry in another epoch (pad-crop offset, flip, erasing).
    i = int(e0[0][0])
    img = decode(reader[i][1], 1)
    views = {ds.geometry(img, sample_rng(0, epoch, i)).tobytes() for epoch in range(6)}
    assert len(views) > 1
    assert ds.geometry(img, sample_rng(0, 2, i)).tobytes() == ds.geometry(img, sample_rng(0, 2, i)).tobytes()


def test_labels_follow_their_samples(reader):
    ds = train_dataset(reader, crop="none", flip=False, random_erasing=0.0)  # identity geometry
    jobs = [Job(0, s, idx) for s, idx in enumerate(train_batch_indices(N, BATCH, 0, 0))]
    for job, (x, y, bad, *_) in zip(jobs, make_loader(ds, jobs, 0, False)):
        assert bad == 0
        for row, i in enumerate(job.indices.tolist()):
            assert int(y[row]) == int(reader.labels[i])
            assert np.array_equal(x[row].numpy(), decode(reader[i][1], 1))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_train_indices_disjoint_equal_length_remainder_dropped(world):
    n, b = 103, 5
    per_rank = [train_batch_indices(n, b, seed=3, epoch=2, rank=r, world=world) for r in range(world)]
    steps = n // (b * world)
    assert all(len(batches) == steps for batches in per_rank)
    assert all(len(batch) == b for batches in per_rank for batch in batches)
    flat = np.concatenate([np.concatenate(batches) for batches in per_rank])
    assert len(flat) == len(set(flat.tolist())) == steps * b * world  # disjoint; n - steps*b*world dropped
    assert set(flat.tolist()) <= set(range(n))


def test_one_process_global_batch_sees_the_same_samples_as_two_ranks(reader):
    g = 8
    single = train_batch_indices(N, g, seed=5, epoch=1)
    ranks = [train_batch_indices(N, g // 2, seed=5, epoch=1, rank=r, world=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for s, batch in enumerate(single):
        np.testing.assert_array_equal(batch, np.concatenate([ranks[0][s], ranks[1][s]]))
    # ... and the same augmented images: augmentation depends on (seed, epoch, index), not on who loads it.
    ds = train_dataset(reader, seed=5)
    one = epoch_batches(ds, 1, 0, seed=5, batch=g)
    two = [epoch_batches(ds, 1, 0, seed=5, rank=r, world=2, batch=g // 2) for r in range(2)]
    for s, (x, y) in enumerate(one):
        assert torch.equal(x, torch.cat([two[0][s][0], two[1][s][0]]))
        assert torch.equal(y, torch.cat([two[0][s][1], two[1][s][1]]))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 10, 53])
def test_eval_indices_cover_every_sample_exactly_once(world, n):
    seen = np.concatenate([np.concatenate(eval_batch_indices(n, 4, r, world) or [np.zeros(0, np.int64)])
                           for r in range(world)])
    assert sorted(seen.tolist()) == list(range(n))
    assert all(len(b) <= 4 for r in range(world) for b in eval_batch_indices(n, 4, r, world))


def test_eval_loader_is_the_stored_images_in_order(reader):
    ds = BatchDataset(reader, EvalGeometry(DataConfig(), SIZE), 1, 0, train=False)
    jobs = [Job(0, s, idx) for s, idx in enumerate(eval_batch_indices(N, 16))]
    x = torch.cat([b[0] for b in make_loader(ds, jobs, 2, False)])
    assert x.shape == (N, SIZE, SIZE, 1)
    for i in (0, 17, N - 1):
        assert np.array_equal(x[i].numpy(), decode(reader[i][1], 1))


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image():
    cfg = DataConfig(crop="pad_crop", pad=2, flip=False)
    img = np.arange(1, 26, dtype=np.uint8).reshape(5, 5, 1)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    geo = TrainGeometry(cfg, 5)
    for index in range(20):
        out = geo(img, sample_rng(0, 0, index))
        windows = [padded[y:y + 5, x:x + 5] for y in range(5) for x in range(5)]
        assert any(np.array_equal(out, w) for w in windows)


def test_device_transform_normalizes_into_channels_last():
    cfg = DataConfig(normalize="meanstd", mean=[0.25, 0.5, 0.75], std=[0.5, 0.25, 0.125])
    x = torch.randint(0, 256, (2, 4, 5, 3), dtype=torch.uint8)
    out = DeviceTransform(cfg, 3, torch.device("cpu"))(x)
    assert out.shape == (2, 3, 4, 5) and out.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    out = DeviceTransform(DataConfig(normalize="scale_pm1"), 3, torch.device("cpu"))(x)
    torch.testing.assert_close(out, x.permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_device_prefetcher_yields_every_batch_in_order(reader):
    ds = train_dataset(reader)
    jobs = [Job(0, s, idx) for s, idx in enumerate(train_batch_indices(N, BATCH, 0, 0))]
    transform = DeviceTransform(DataConfig(normalize="scale"), 1, torch.device("cpu"))
    got = list(DevicePrefetcher(make_loader(ds, jobs, 0, False), torch.device("cpu"), transform))
    ref = epoch_batches(ds, 0, 0)
    assert len(got) == len(ref)
    for (x, y, *_), (xr, yr) in zip(got, ref):
        torch.testing.assert_close(x, xr.permute(0, 3, 1, 2).float() / 255)
        assert torch.equal(y, yr)
