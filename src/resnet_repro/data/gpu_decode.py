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

torchvision is optional for the project: it is imported when a GpuDecoder is made, with a clear error if absent.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from .augment import COLOR_STREAM, DecodeError, decode, image_size, sample_rng
from .loader import BatchDataset


def crop_params(geometry, h: int, w: int, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], bool]:
    """The CPU path's crop box (y, x, height, width) in whole source pixels, and its flip, drawn from `rng` in
    the CPU path's order (augment.TrainGeometry.load: the box, then the flip)."""
    cfg = geometry.cfg
    if cfg.crop == "none":  # centre square, resized to the output side (augment.center_crop_resize)
        side = min(h, w)
        y, x, bh, bw = (h - side) // 2, (w - side) // 2, side, side
    elif cfg.crop == "pad_crop":
        raise ValueError("data.decode=gpu is for JPEG data sets with ImageNet crops; data.crop=pad_crop needs "
                         "data.decode=cpu")
    else:
        y, x, bh, bw = geometry.crop_box(h, w, rng)
    # Whole pixels as augment.cut_resize rounds them (the paper crop's box is fractional), at least one pixel.
    y0, x0 = min(int(round(y)), h - 1), min(int(round(x)), w - 1)
    y1, x1 = max(y0 + 1, min(h, int(round(y + bh)))), max(x0 + 1, min(w, int(round(x + bw))))
    flip = bool(cfg.flip and rng.random() < 0.5)
    return (y0, x0, y1 - y0, x1 - x0), flip


class EncodedBatch:
    """A batch as the loader workers leave it for the GPU: JPEG bytes back to back, and per sample the crop box
    and flip. It travels the same path as a uint8 batch (worker -> pinned memory -> DevicePrefetcher)."""

    def __init__(self, data: torch.Tensor, offsets: list[int], boxes: list[tuple[int, int, int, int]],
                 flips: list[bool], keys: list[str], size: int):
        self.data, self.offsets, self.boxes, self.flips, self.keys = data, offsets, boxes, flips, keys
        self.size = size  # output side in pixels (the job's: progressive resizing changes it per epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> "EncodedBatch":  # called by the DataLoader's pin-memory thread
        self.data = self.data.pin_memory()
        return self

    def to(self, device, non_blocking: bool = False) -> "EncodedBatch":
        return self  # the bytes stay on the host: nvJPEG reads them from (pinned) host memory itself

    def chunks(self) -> list[torch.Tensor]:
        return [self.data[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]


class EncodedBatchDataset(BatchDataset):
    """Turns a loader Job into (EncodedBatch, labels int64 [B], bad-sample count, colour params float32 [B, P]),
    the tuple data.loader.BatchDataset gives, with the images still encoded.

    A sample whose header cannot be read is decoded on the CPU once for its size (the CPU path's fallback too); a
    sample that cannot be read at all gets the CPU path's treatment: a warning, a deterministic replacement
    sample, and a count in ``bad``."""

    def __init__(self, reader, geometry, seed: int):
        if geometry.cfg.random_erasing > 0:
            raise ValueError("data.decode=gpu does not do random erasing; set data.random_erasing=0 or "
                             "data.decode=cpu")
        super().__init__(reader, geometry, 3, seed, train=True)

    def _sample(self, i: int, epoch: int, size: int):
        key, data, _ = self.reader[i]
        hw = image_size(data) or decode(data, 3).shape[:2]
        box, flip = crop_params(self.geometry, *hw, sample_rng(self.seed, epoch, i))
        return key, data, box, flip, int(self.reader.labels[i]), self.color_params(i, epoch)

    def __getitem__(self, job):
        size = job.size or self.default_size
        parts, labels, boxes, flips, keys, params, bad = [], [], [], [], [], [], 0
        for i in job.indices.tolist():
            try:
                key, data, box, flip, label, colour = self._sample(i, job.epoch, size)
            except DecodeError:
                print(f"warning: {self.reader.where(i)}: cannot decode; using a replacement sample", file=sys.stderr)
                bad += 1
                j = int(sample_rng(self.seed, job.epoch, i).integers(len(self.reader)))
                key, data, box, flip, label, colour = self._sample(j, job.epoch, size)
            parts.append(data)
            labels.append(label)
            boxes.append(box)
            flips.append(flip)
            keys.append(key)
            params.append(colour)
        offsets = np.cumsum([0] + [len(p) for p in parts]).tolist()
        data = torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)
        return (EncodedBatch(data, offsets, boxes, flips, keys, size), torch.tensor(labels, dtype=torch.int64), bad,
                torch.from_numpy(np.stack(params)))


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

    def _decode(self, batch: EncodedBatch) -> list[torch.Tensor]:
        chunks = batch.chunks()
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
        """uint8 [B, size, size, 3] on the device (NHWC, the layout CPU workers deliver)."""
        size, out = batch.size, []
        for img, (y, x, h, w), flip in zip(self._decode(batch), batch.boxes, batch.flips):
            crop = img[None, :, y:y + h, x:x + w].float()
            if (h, w) != (size, size):
                # Bilinear with antialiasing (the filter widens with the shrink factor), from the full decode;
                # the CPU path gets the same band limit from a reduced DCT decode, then bilinear or area.
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(crop.flip(-1) if flip else crop)
        return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def __call__(self, batch: EncodedBatch, params: torch.Tensor | None = None) -> torch.Tensor:
        x = self.resized_crops(batch)
        if self.transform is None:
            return x
        return self.transform(x) if params is None else self.transform(x, params)
