"""DevicePrefetcher (data/loading/loader.py): batches arrive in job order with the right content whatever the number of
workers, the next batch is fetched before the current one is handed out, and nothing is lost at the end."""
from __future__ import annotations

import pytest
import torch

from resnet_repro.recipe import load_config
from resnet_repro.data.augment.device import DeviceTransform
from resnet_repro.data.augment.geometry import TrainGeometry
from resnet_repro.data.loading.loader import BatchDataset, DevicePrefetcher, Job, make_loader, train_batch_indices
from resnet_repro.data.shards.reader import RecordReader


def dataset(root) -> tuple[BatchDataset, list[Job], DeviceTransform]:
    cfg = load_config(None, ["data.normalize=scale"]).data
    reader = RecordReader(root, "train")
    ds = BatchDataset(reader, TrainGeometry(cfg, 16), 1, seed=3, train=True)
    jobs = [Job(0, s, idx) for s, idx in enumerate(train_batch_indices(len(reader), 32, 3, 0))]
    return ds, jobs, DeviceTransform(cfg, 1, torch.device("cpu"))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_job_order_with_their_content(texture_data, workers):
    ds, jobs, transform = dataset(texture_data)
    got = list(DevicePrefetcher(make_loader(ds, jobs, workers, pin_memory=False), torch.device("cpu"), transform))
    assert len(got) == len(jobs) == 8
    for (x, y, bad), job in zip(got, jobs):
        want_x, want_y, want_bad, _ = ds[job]  # the same job loaded directly, in this process
        assert torch.equal(y, want_y) and bad == want_bad == 0
        assert torch.equal(x, transform(want_x))
        assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32


class CountingLoader:
    """A loader that records how many batches have been taken from it."""

    def __init__(self, n: int):
        self.n, self.taken = n, 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            yield torch.full((2, 4, 4, 1), i, dtype=torch.uint8), torch.tensor([i, i]), 0

    def __len__(self):
        return self.n


def test_the_next_batch_is_fetched_before_the_current_one_is_handed_out():
    loader = CountingLoader(5)
    seen = []
    for x, y, _ in DevicePrefetcher(loader, torch.device("cpu"), lambda x: x.float()):
        # While batch i trains, batch i + 1 is already on the device (the last one has no successor).
        seen.append((int(y[0]), loader.taken))
    assert seen == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 5)]


def test_an_empty_loader_yields_nothing():
    assert list(DevicePrefetcher(CountingLoader(0), torch.device("cpu"), lambda x: x)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_side_stream_copies_arrive_intact_on_cuda(texture_data):
    ds, jobs, _ = dataset(texture_data)
    cfg = load_config(None, ["data.normalize=scale"]).data
    dev = torch.device("cuda")
    transform = DeviceTransform(cfg, 1, dev)
    got = list(DevicePrefetcher(make_loader(ds, jobs, 2, pin_memory=True), dev, transform))
    for (x, y, _), job in zip(got, jobs):
        want_x, want_y, _, _ = ds[job]
        # Work queued on the default stream after the hand-over must see the finished copy.
        assert torch.equal(y.cpu(), want_y) and torch.allclose(x.cpu(), transform(want_x.to(dev)).cpu())
    assert len(got) == len(jobs)
