"""DecodeAhead (loading/gpu_decode.py): the overlap logic of GPU decoding, on the CPU, with a stand-in for the decode
and stand-ins for the CUDA stream and event: order, running ahead (bounded), errors from the thread, shutdown,
and the hand-over protocol (work on the side stream, event after it, the consumer waits on it and marks the
tensors). Pixels of the real decode path are tested in test_gpu_decode.py."""
from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import torch

from resnet_repro.data.decode.cpu import DecodeError
from resnet_repro.data.loading.gpu_decode import DecodeAhead, NoStreams

WAIT_S = 20.0  # the longest a test waits for the background thread before calling it broken (never a timing)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT_S:.0f} s waiting for: {what}")
        time.sleep(0.005)


class Source:
    """A loader of `n` batches (tensor i, label i) that counts what has been taken and sees being closed."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.taken, self.closed = n, fail_at, 0, False

    def __iter__(self):
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise RuntimeError(f"loader worker died building batch {i}")
                self.taken += 1
                yield torch.full((2,), i), torch.tensor([i])
        finally:
            self.closed = True

    def __len__(self):
        return self.n


def double(batch):
    x, y = batch
    return 2 * x, y


def decode_threads():
    return [t for t in threading.enumerate() if t.name == "decode-ahead" and t.is_alive()]


def test_batches_come_in_loader_order_with_the_work_done():
    got = list(DecodeAhead(Source(12), double, NoStreams(), depth=2))
    assert [int(y) for _, y in got] == list(range(12))
    assert all(torch.equal(x, torch.full((2,), 2 * i)) for i, (x, _) in enumerate(got))
    assert len(DecodeAhead(Source(7), double, NoStreams())) == 7
    assert decode_threads() == []


def test_the_next_batch_is_made_while_the_consumer_holds_the_current_one():
    made = [threading.Event() for _ in range(4)]

    def produce(batch):
        out = double(batch)
        made[int(batch[1])].set()
        return out

    it = iter(DecodeAhead(Source(4), produce, NoStreams(), depth=1))
    x, y = next(it)
    assert int(y) == 0
    # Without asking for more, the thread has already made batch 1 (a synchronous path would not have).
    assert made[1].wait(WAIT_S), "batch 1 was not made ahead of the consumer"
    assert [int(y) for _, y in it] == [1, 2, 3]


@pytest.mark.parametrize("depth", [1, 2])
def test_it_runs_at_most_depth_batches_ahead(depth):
    source = Source(100)
    it = iter(DecodeAhead(source, double, NoStreams(), depth=depth))
    next(it)
    # Batch 0 handed out, `depth` batches waiting in the queue, one more made and waiting for room.
    wait_until(lambda: source.taken == depth + 2, f"{depth + 2} batches taken")
    time.sleep(0.2)  # room for an unbounded implementation to run on (a bounded one stays put whatever the wait)
    assert source.taken == depth + 2
    it.close()


def test_an_error_in_the_work_is_raised_by_the_consumer_at_its_batch():
    def produce(batch):
        if int(batch[1]) == 3:
            raise DecodeError("sample img_003: cannot decode on the GPU or the CPU")
        return double(batch)

    got = []
    with pytest.raises(DecodeError, match="img_003"):
        for _, y in DecodeAhead(Source(8), produce, NoStreams()):
            got.append(int(y))
    assert got == [0, 1, 2]
    assert decode_threads() == []


def test_an_error_in_the_loader_is_raised_by_the_consumer():
    got = []
    with pytest.raises(RuntimeError, match="building batch 2"):
        for _, y in DecodeAhead(Source(8, fail_at=2), double, NoStreams()):
            got.append(int(y))
    assert got == [0, 1]


def test_stopping_early_stops_the_thread_and_closes_the_loader():
    source = Source(1000)
    it = iter(DecodeAhead(source, double, NoStreams(), depth=2))
    next(it), next(it)
    it.close()  # what a `break` or an exception in the training loop does to the generator
    assert decode_threads() == [] and source.closed and source.taken < 1000


def test_an_error_in_the_consumer_stops_the_thread_too():
    source = Source(1000)
    with pytest.raises(KeyError):
        for _ in DecodeAhead(source, double, NoStreams()):
            raise KeyError("the training step failed")
    assert decode_threads() == [] and source.closed


def test_a_real_loader_with_worker_processes_shuts_down(texture_data):
    from resnet_repro.recipe import load_config
    from resnet_repro.data.augment.geometry import TrainGeometry
    from resnet_repro.data.loading.loader import BatchDataset, Job, make_loader, train_batch_indices
    from resnet_repro.data.shards.reader import RecordReader

    reader = RecordReader(texture_data, "train")
    ds = BatchDataset(reader, TrainGeometry(load_config().data, 16), 1, seed=0, train=True)
    jobs = [Job(0, s, idx) for s, idx in enumerate(train_batch_indices(len(reader), 8, 0, 0))]
    before = set(multiprocessing.active_children())
    it = iter(DecodeAhead(make_loader(ds, jobs, 2, pin_memory=False), lambda b: b[:3], NoStreams()))
    x, y, bad = next(it)
    assert x.shape == (8, 16, 16, 1) and torch.equal(y, ds[jobs[0]][1])
    it.close()
    assert set(multiprocessing.active_children()) == before and decode_threads() == []


class RecordingStreams:
    """Stand-ins for CudaStreams that log every stream operation, and which thread did it."""

    def __init__(self):
        self.log, self.in_work = [], False
        self.lock = threading.Lock()

    def _note(self, *entry):
        with self.lock:
            self.log.append((threading.current_thread().name, *entry))

    def thread_setup(self):
        self._note("setup")

    def work(self):
        streams = self

        class Context:
            def __enter__(self):
                streams.in_work = True

            def __exit__(self, *exc):
                streams.in_work = False

        return Context()

    def done(self):
        assert self.in_work, "the event must be recorded on the side stream, after the work"
        event = object()
        self._note("record", event)
        return event

    def hand_over(self, event, tensors):
        self._note("wait", event, [id(t) for t in tensors])


def test_the_hand_over_protocol():
    streams = RecordingStreams()

    def produce(batch):
        assert streams.in_work, "the work must run on the side stream"
        return double(batch) + (0,)  # a non-tensor (the bad-sample count) is not handed to the allocator

    consumer = threading.current_thread().name
    for i, out in enumerate(DecodeAhead(Source(5), produce, streams, depth=2)):
        # Before the consumer sees batch i, its stream was told to wait on batch i's event, and batch i's own
        # tensors (images and labels, not the count) were marked as used by it.
        waits = [e for e in streams.log if e[1] == "wait"]
        records = [e for e in streams.log if e[1] == "record"]
        assert len(waits) == i + 1
        who, _, event, ids = waits[-1]
        assert who == consumer and event is records[i][2] and ids == [id(out[0]), id(out[1])]
    assert [e[1] for e in streams.log if e[0] != consumer][0] == "setup"  # the thread set its device first
    assert all(e[0] != consumer for e in streams.log if e[1] in ("setup", "record"))


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth 0"):
        DecodeAhead(Source(1), double, NoStreams(), depth=0)


def test_cuda_streams_name_the_device_index_the_producer_thread_sets(monkeypatch):
    """A plain "cuda" is the caller's current device, with its index: torch.cuda.set_device in the producer thread
    refuses a device without one (torch 2.11 on an H200, 2026-12-04: the decode-ahead thread died at its first
    batch). CUDA itself is stood in for, so this runs on any machine."""
    from resnet_repro.data.loading import gpu_decode

    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or "side stream")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", set_to.append)
    for given, index in (("cuda", 3), (torch.device("cuda"), 3), ("cuda:1", 1), (torch.device("cuda", 0), 0)):
        streams = gpu_decode.CudaStreams(given)
        streams.thread_setup()
        assert streams.device == torch.device("cuda", index) and made[-1] == streams.device
        assert set_to[-1] == torch.device("cuda", index) and set_to[-1].index == index


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_event_hand_over_on_cuda_orders_the_gpu_work_without_a_host_sync():
    """Each batch is finished on the side stream only after a GPU-side delay; the default stream reads it right after
    the hand-over. Without the event wait it would read the batch before it was written; with it, every batch is
    whole, and the consumer never synchronizes with the device (sync debug mode turns a sync into an error)."""
    from resnet_repro.data.loading.gpu_decode import CudaStreams

    dev = torch.device("cuda")

    def produce(batch):
        x, y = batch
        out = torch.zeros(1 << 20, device=dev)
        torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time on the side stream before the value is written
        out.fill_(float(y))
        return out, torch.full((1,), int(y), device=dev)  # a fill, not a pageable copy (which would sync)

    sums = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in DecodeAhead(Source(6), produce, CudaStreams(dev), depth=2):
            sums.append((x.sum(), y.clone()))  # queued on the default stream right after the hand-over
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    for i, (s, y) in enumerate(sums):
        assert int(y) == i and s.item() == float(i) * (1 << 20)
