"""GPU JPEG decoding (``data.decode: gpu``): workers read bytes and draw crops; the GPU decodes and resizes.

Why: decoding is most of the CPU cost of an ImageNet input pipeline (libjpeg-turbo manages a few hundred
500x375 images per core-second), and a ResNet-50 on one H100 eats several thousand images per second. With
this option the loader workers only read each sample's bytes, parse its JPEG header for the image size and draw
the crop box and flip; the trainer hands the whole batch to nvJPEG (``torchvision.io.decode_jpeg`` with a list of
tensors and ``device="cuda"``), then crops, resizes and flips each image on the GPU.

Same augmentation as the CPU path: the crop box and flip come from the CPU geometry's own sampling code
(``TrainGeometry.crop_box`` where it has one) with the same per-sample generator ``sample_rng(seed, epoch,
index)``, given the size read from the header; so a sample gets the same box on either path. What differs is
the pixel arithmetic: nvJPEG's IDCT against libjpeg-turbo's (a level or two), and bilinear resampling with
antialiasing against OpenCV's area/linear filters. Validation images are always decoded on the CPU.

Split (``data.gpu_decode_share`` below 1): the workers decode the batch's last samples themselves, the CPU path's
pixels for them, and ship them decoded beside the rest's bytes; the GPU side decodes and crops only the head and
appends the tail. For when the GPU side is the limit and the workers idle: torchvision decodes a batch in one call
behind a process-wide lock, so more decoding threads cannot share its work, but the workers can.

Overlap (``DecodeAhead``): torchvision's batched nvJPEG call blocks the calling thread until the batch is decoded
(it synchronizes its own decoder stream) and the crops are a few hundred small kernel launches, so done in the
training thread they stall the next step (2026-11-26, H100: 31 % data wait). A background thread therefore
decodes, crops and transforms the next batch on its own CUDA stream while the current step runs; it hands each
batch over with an event that the training stream waits on (a wait queued on the GPU, not a host
synchronization), and ``record_stream`` tells the caching allocator that the training stream uses the batch's
memory, so it is not reused while the step still reads it.

torchvision is optional for the project: it is imported when a GpuDecoder is made, with a clear error if absent.
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading

import numpy as np
import torch
import torch.nn.functional as F

from ...config import DataConfig
from ..augment.rng import sample_rng
from ..decode.cpu import DecodeError, decode
from ..decode.header import image_size
from .loader import BatchDataset


def refusals(data: DataConfig, device_type: str | None = None, channels: int | None = None) -> list[str]:
    """Why ``data.decode: gpu`` cannot run with this data config on this device (empty: it can). One rule for
    train, which refuses at start-up, and for ``bench train --e2e`` and ``env``, which say the same thing. A
    ``device_type`` or ``channels`` of None is not checked (env reads no manifest, a dataset has no device)."""
    why = []
    if device_type is not None and device_type != "cuda":
        why.append(f"needs a CUDA device (here: {device_type})")
    if channels is not None and channels != 3:
        why.append(f"needs RGB JPEGs (the data has {channels} channel(s))")
    if data.crop == "pad_crop":  # crop_params has no GPU version of it: a CIFAR-sized recipe decodes in no time
        why.append("is for JPEG data sets with ImageNet crops, not data.crop=pad_crop")
    if data.random_erasing > 0:
        why.append("does no random erasing (data.random_erasing > 0)")
    return why


def crop_params(geometry, h: int, w: int, rng: np.random.Generator,
                flip: bool | None = None) -> tuple[tuple[int, int, int, int], bool]:
    """The CPU path's crop box (y, x, height, width) in whole source pixels, and its flip, drawn from `rng` in
    the CPU path's order (geometry.TrainGeometry.load: the box, then the flip coin); `flip`, where a flip
    schedule fixes it (TrainGeometry.flip_of), overrides the coin (TrainGeometry.draw_flip, as on the CPU path)."""
    cfg = geometry.cfg
    if cfg.crop == "none":  # centre square, resized to the output side (geometry.center_crop_resize)
        side = min(h, w)
        y, x, bh, bw = (h - side) // 2, (w - side) // 2, side, side
    elif cfg.crop == "pad_crop":
        raise ValueError("data.decode=gpu is for JPEG data sets with ImageNet crops; data.crop=pad_crop needs "
                         "data.decode=cpu")
    else:
        y, x, bh, bw = geometry.crop_box(h, w, rng)
    # Whole pixels as decode.cpu.cut_resize rounds them (the paper crop's box is fractional), at least one pixel.
    y0, x0 = min(int(round(y)), h - 1), min(int(round(x)), w - 1)
    y1, x1 = max(y0 + 1, min(h, int(round(y + bh)))), max(x0 + 1, min(w, int(round(x + bw))))
    return (y0, x0, y1 - y0, x1 - x0), geometry.draw_flip(rng, flip)


class EncodedBatch:
    """A batch as the loader workers leave it for the GPU: JPEG bytes back to back, and per sample the crop box
    and flip. It travels the same path as a uint8 batch (worker -> pinned memory -> DevicePrefetcher).

    ``data``, ``offsets``, ``boxes``, ``flips`` and ``keys`` describe the encoded samples, the head of the batch;
    ``decoded`` (uint8 [k, size, size, 3], or None) holds its last k samples, which the workers decoded
    (data.gpu_decode_share below 1)."""

    def __init__(self, data: torch.Tensor, offsets: list[int], boxes: list[tuple[int, int, int, int]],
                 flips: list[bool], keys: list[str], size: int, decoded: torch.Tensor | None = None):
        self.data, self.offsets, self.boxes, self.flips, self.keys = data, offsets, boxes, flips, keys
        self.size = size  # output side in pixels (the job's: progressive resizing changes it per epoch)
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.keys) + (0 if self.decoded is None else len(self.decoded))

    def pin_memory(self) -> "EncodedBatch":  # called by the DataLoader's pin-memory thread
        self.data = self.data.pin_memory()
        if self.decoded is not None:
            self.decoded = self.decoded.pin_memory()
        return self

    def to(self, device, non_blocking: bool = False) -> "EncodedBatch":
        return self  # the bytes stay on the host: nvJPEG reads them from (pinned) host memory itself

    def chunks(self) -> list[torch.Tensor]:
        return [self.data[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]


class EncodedBatchDataset(BatchDataset):
    """Turns a loader Job into (EncodedBatch, labels int64 [B], bad-sample count, colour params float32 [B, P]),
    the tuple loader.BatchDataset gives, with the images still encoded.

    A sample whose header cannot be read is decoded on the CPU once for its size (the CPU path's fallback too); a
    sample that cannot be read at all gets the CPU path's treatment (BatchDataset.with_replacement): a warning,
    a deterministic replacement sample, and a count in ``bad``.

    ``share`` (data.gpu_decode_share): the fraction of each batch left encoded, rounded to whole samples; the
    rest, the batch's last samples, are decoded here as BatchDataset decodes them (EncodedBatch.decoded)."""

    def __init__(self, reader, geometry, seed: int, share: float = 1.0):
        why = refusals(geometry.cfg)  # the data config's part of the rule, for callers that skipped it
        if why:
            raise ValueError(f"data.decode=gpu {'; '.join(why)}: use data.decode=cpu")
        if share not in DataConfig.RANGES["gpu_decode_share"]:  # the config's own bound
            raise ValueError(f"data.gpu_decode_share={share}: must be {DataConfig.RANGES['gpu_decode_share']}")
        super().__init__(reader, geometry, 3, seed, train=True)
        self.share = share

    def _encoded(self, i: int, epoch: int):
        key, data, _ = self.reader[i]
        hw = image_size(data) or decode(data, 3).shape[:2]
        box, flip = crop_params(self.geometry, *hw, sample_rng(self.seed, epoch, i),
                                self.geometry.flip_of(self.seed, epoch, i))
        return key, data, box, flip, int(self.reader.labels[i]), self.color_params(i, epoch)

    def __getitem__(self, job):
        size = job.size or self.default_size
        # The box depends on the side for some crops (the paper's scale augmentation): the job's, as on the CPU path.
        self.geometry.size = size
        indices = job.indices.tolist()
        head = int(np.floor(self.share * len(indices) + 0.5))
        parts, labels, boxes, flips, keys, params, decoded, bad = [], [], [], [], [], [], [], 0
        for i in indices[:head]:
            (key, data, box, flip, label, colour), b = self.with_replacement(self._encoded, i, job.epoch)
            bad += b
            parts.append(data)
            labels.append(label)
            boxes.append(box)
            flips.append(flip)
            keys.append(key)
            params.append(colour)
        for i in indices[head:]:
            (img, label, colour), b = self.with_replacement(self._sample, i, job.epoch)
            bad += b
            decoded.append(img)
            labels.append(label)
            params.append(colour)
        offsets = np.cumsum([0] + [len(p) for p in parts]).tolist()
        data = (torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8) if parts
                else torch.empty(0, dtype=torch.uint8))  # frombuffer refuses an empty buffer
        tail = torch.from_numpy(np.stack(decoded)) if decoded else None
        return (EncodedBatch(data, offsets, boxes, flips, keys, size, tail), torch.tensor(labels, dtype=torch.int64),
                bad, torch.from_numpy(np.stack(params)))


def _torchvision_decoders():
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError as e:
        raise RuntimeError("data.decode=gpu needs torchvision (pip install torchvision, the build matching your "
                           f"torch); or set data.decode=cpu ({e})") from None

    def on_device(chunks: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)  # one batched nvJPEG call on CUDA

    def on_cpu(chunk: torch.Tensor) -> torch.Tensor:  # libjpeg-turbo / libpng: what nvJPEG refuses
        return decode_image(chunk, mode=ImageReadMode.RGB)

    return on_device, on_cpu


class GpuDecoder:
    """EncodedBatch (+ colour params) -> decoded, cropped, resized, flipped batch on ``device`` -> ``transform``.

    ``transform`` is the trainer's DeviceTransform (colour, normalize, channels_last), applied to the uint8 NHWC
    batch a CPU worker would have delivered, so everything after the decode is the CPU path's. ``decode(chunks,
    device)`` (-> list of uint8 [3, H, W]) and ``decode_cpu(chunk)`` default to torchvision's nvJPEG and CPU
    decoders; tests pass OpenCV-based ones to check the geometry without a GPU or torchvision."""

    def __init__(self, device: torch.device, transform=None, decode=None, decode_cpu=None):
        self.device, self.transform = torch.device(device), transform
        if decode is None or decode_cpu is None:
            on_device, on_cpu = _torchvision_decoders()
            decode, decode_cpu = decode or on_device, decode_cpu or on_cpu
        self.decode, self.decode_cpu = decode, decode_cpu
        self.warned = False

    def decode_batch(self, batch: EncodedBatch) -> list[torch.Tensor]:
        """The batch's encoded samples, decoded whole: uint8 [3, H, W] each, on the device."""
        chunks = batch.chunks()
        if not chunks:
            return []
        try:
            return self.decode(chunks, self.device)
        except RuntimeError as e:
            if not self.warned:
                print(f"warning: batched GPU decode failed ({e}); decoding that batch image by image "
                      "(said once per run)", file=sys.stderr)
                self.warned = True
        # nvJPEG refuses a few valid files (CMYK, some subsamplings; PNGs in an ImageNet folder) and one such file
        # fails the whole batch: decode one by one, on the CPU where the GPU refuses; name what nothing can read.
        images = []
        for chunk, key in zip(chunks, batch.keys):
            try:
                images.append(self.decode([chunk], self.device)[0])
            except RuntimeError:
                try:
                    images.append(self.decode_cpu(chunk).to(self.device))
                except RuntimeError as e:
                    raise DecodeError(f"sample {key}: cannot decode on the GPU or the CPU ({e})") from None
        return images

    def resized_crops(self, batch: EncodedBatch) -> torch.Tensor:
        """uint8 [B, size, size, 3] on the device (NHWC, the layout CPU workers deliver), in the batch's order: the
        encoded head decoded and cropped here, then the tail the workers decoded."""
        size, out = batch.size, []
        for img, (y, x, h, w), flip in zip(self.decode_batch(batch), batch.boxes, batch.flips):
            crop = img[None, :, y:y + h, x:x + w].float()
            if (h, w) != (size, size):
                # Bilinear with antialiasing (the filter widens with the shrink factor), from the full decode;
                # the CPU path gets the same band limit from a reduced DCT decode, then bilinear or area.
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(crop.flip(-1) if flip else crop)
        parts = [torch.cat(out).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)] if out else []
        if batch.decoded is not None:
            parts.append(batch.decoded.to(self.device, non_blocking=True))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __call__(self, batch: EncodedBatch, params: torch.Tensor | None = None) -> torch.Tensor:
        """`params`: the batch's colour parameters as the loader gives them (on the host; empty without colour
        augmentation, and then the transform gets the images alone)."""
        x = self.resized_crops(batch)
        if self.transform is None:
            return x
        if params is None or not params.numel():
            return self.transform(x)
        return self.transform(x, params.to(self.device, non_blocking=True))


# --- Decode ahead: the next batch on a side stream, from a background thread --------------------------------------

class CudaStreams:
    """The stream and event operations DecodeAhead needs, on CUDA. Tests pass stand-ins with the same methods."""

    def __init__(self, device: torch.device):
        device = torch.device(device)
        # A plain "cuda" means the current device; set_device in the producer thread needs its index (torch 2.11
        # refuses a device without one), and the current device is per thread, so it is read here, on the caller's.
        self.device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        self.side = torch.cuda.Stream(self.device)

    def thread_setup(self) -> None:
        torch.cuda.set_device(self.device)  # the current device is per thread; the loader's pin thread reads it too

    def work(self):
        """Context for the producer's work: its kernels and allocations go to the side stream."""
        return torch.cuda.stream(self.side)

    def done(self):
        """An event after the work queued so far on the side stream (recorded from the producer thread)."""
        event = torch.cuda.Event()
        event.record(self.side)
        return event

    def hand_over(self, event, tensors) -> None:
        """On the consumer thread: its stream waits for `event` on the GPU; the tensors are marked as used by it."""
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(event)
        for t in tensors:
            t.record_stream(consumer)


class NoStreams:
    """A device without streams (the CPU): work is done when the call returns."""

    def thread_setup(self) -> None:
        pass

    def work(self):
        return contextlib.nullcontext()

    def done(self):
        return None

    def hand_over(self, event, tensors) -> None:
        pass


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class DecodeAhead:
    """Iterates ``produce(batch)`` for the batches of ``loader``, computed by a background thread up to ``depth``
    batches ahead of the consumer, in the loader's order.

    ``streams`` (CudaStreams, NoStreams or a stand-in) says where the work runs and how a finished batch is handed
    over. An exception in the thread (the loader's or ``produce``'s) is raised by the consumer at the batch where
    it happened, as the same exception object. Stopping early (``close()`` on the iterator, a ``break``, an
    error in the consumer) stops the thread and lets go of the loader, so its workers shut down."""

    def __init__(self, loader, produce, streams, depth: int = 2, join_timeout_s: float = 60.0):
        if depth < 1:
            raise ValueError(f"DecodeAhead: depth {depth} must be >= 1")
        self.loader, self.produce, self.streams, self.depth = loader, produce, streams, depth
        self.join_timeout_s = join_timeout_s

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item) -> bool:  # blocks while the queue is full, but gives up once the consumer has stopped
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def run():
            batches = None
            try:
                self.streams.thread_setup()
                batches = iter(self.loader)
                for batch in batches:
                    if stop.is_set():
                        return
                    with self.streams.work():
                        out = self.produce(batch)
                        event = self.streams.done()
                    if not put((out, event)):
                        return
                put(_END)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
                put(_Failure(e))
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
                del batches  # the last reference to a DataLoader iterator: its workers shut down

        thread = threading.Thread(target=run, name="decode-ahead", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                out, event = item
                self.streams.hand_over(event, [t for t in out if isinstance(t, torch.Tensor)])
                yield out
        finally:
            stop.set()
            thread.join(self.join_timeout_s)
            if thread.is_alive():
                print(f"warning: the decode-ahead thread did not stop within {self.join_timeout_s:.0f} s (its loader "
                      "is still waiting for a batch); leaving it behind", file=sys.stderr)


def decode_ahead(loader, decoder: GpuDecoder, depth: int = 2) -> DecodeAhead:
    """The training input path with ``data.decode: gpu``: loader batches (EncodedBatch, labels, bad, colour
    params) -> (images on the device after the DeviceTransform, labels on the device, bad), decoded a batch or two
    ahead on a side stream (CUDA) or in a background thread (anything else)."""
    device = decoder.device

    def produce(batch):
        encoded, y, bad = batch[:3]
        params = batch[3] if len(batch) > 3 else None
        return decoder(encoded, params), y.to(device, non_blocking=True), bad

    streams = CudaStreams(device) if device.type == "cuda" else NoStreams()
    return DecodeAhead(loader, produce, streams, depth)
