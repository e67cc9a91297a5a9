"""The papers' test protocols, scored in one pass over a split: exact top-1/top-5 error under each.

``evaluate_protocols`` scores a split the ways the papers did, in one pass over the data (each image is read
and decoded once, whatever the number of protocols):

* ``single``     resize the shorter side to R, centre crop C (R=256, C=224 for ImageNet): one view.
* ``flip``       the centre crop and its mirror image: 2 views.
* ``10crop``     resize to R, the four corner crops and the centre crop of C, and their mirror images: 10 views
                 (AlexNet's protocol, used by the ResNet paper's Tables 2 and 3).
* ``multiscale`` the paper's fully-convolutional test (s3.4, Table 4): the whole image with its shorter side
                 resized to each of {224, 256, 384, 480, 640} and its mirror image: 10 views of 5 sizes.

Views are averaged as softmax probabilities. For ``multiscale`` each view's scores are first averaged over
space: the fully-convolutional form applies the classifier at every position of the last feature map and
averages the score map, which for a ResNet (global average pool, then one linear layer) is exactly the
net's own forward pass on the full image, so the net runs unchanged on every size.

The CPU workers do the geometry (decode, resize, crop: one image -> K views); mirroring and normalization
are batched tensor ops on the device. Counts are summed across ranks as in the per-epoch pass (val_pass.py):
every image counts once, whatever the number of processes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from .. import dist
from ..data.augment.geometry import EvalGeometry, center_crop_resize, resize_to
from ..data.decode.cpu import DecodeError, decode
from ..data.loading.loader import Job, close_workers, eval_batch_indices, make_loader
from ..figures import top5_text
from ..stopping import on_every_rank
from .val_pass import logits_with_mirror, packed_hits, topk_hits

PROTOCOLS = ("single", "flip", "10crop", "multiscale")
# Shorter-side lengths in pixels of the paper's multi-scale test (He et al. 2015, s3.4, after VGG / OverFeat),
# quoted for nets trained on 224 crops; other crop sizes scale them by crop / 224.
PAPER_SCALES = (224, 256, 384, 480, 640)


# --- Protocol geometry (CPU, per image) ------------------------------------------------------------------

def resize_shorter(img: np.ndarray, side: int, interpolation: str = "area") -> np.ndarray:
    """Aspect-preserving resize so that the shorter side is `side` pixels (0 or equal: unchanged).

    Same filter as augment.geometry.center_crop_resize (data.val_interpolation, augment.geometry.resize_to)."""
    h, w = img.shape[:2]
    if not side or min(h, w) == side:
        return img
    scale = side / min(h, w)
    nh, nw = (side, max(side, round(w * scale))) if h <= w else (max(side, round(h * scale)), side)
    return resize_to(img, nh, nw, interpolation)


def five_crops(img: np.ndarray, size: int) -> list[np.ndarray]:
    """Top-left, top-right, bottom-left, bottom-right and centre `size` x `size` crops."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} is smaller than the crop {size}")
    cy, cx = (h - size) // 2, (w - size) // 2
    return [img[y:y + size, x:x + size] for y, x in
            ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (cy, cx))]


@dataclass(frozen=True)
class Protocol:
    """One test protocol. ``views(img)`` gives the un-mirrored views; ``mirror`` adds each view's mirror."""

    name: str
    resize: int  # shorter side in pixels before cropping; 0 = keep the stored size
    crop: int  # crop side in pixels (single / flip / 10crop)
    scales: tuple[int, ...] = ()  # shorter sides in pixels (multiscale)
    pad: int = 0  # 10crop: zero border in pixels added before cropping (pad-crop nets, see make_protocol)
    interpolation: str = "area"  # resize filter, the run's data.val_interpolation

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; known: {', '.join(PROTOCOLS)}")
        if self.name == "multiscale" and not self.scales:
            raise ValueError("protocol multiscale needs at least one scale")

    @property
    def mirror(self) -> bool:
        return self.name != "single"

    @property
    def views_per_image(self) -> int:
        base = {"single": 1, "flip": 1, "10crop": 5, "multiscale": len(self.scales)}[self.name]
        return base * (2 if self.mirror else 1)

    def describe(self) -> str:
        resized = f"shorter side {self.resize}, " if self.resize else ""
        if self.name == "single":
            return f"{resized}centre crop {self.crop}"
        if self.name == "flip":
            return f"{resized}centre crop {self.crop} + mirror"
        if self.name == "10crop":
            padded = f" of the {self.pad}-px zero-padded image" if self.pad else ""
            return f"{resized}4 corner + centre crops {self.crop}{padded}, + mirrors"
        return f"full image, shorter side {{{', '.join(map(str, self.scales))}}}, + mirrors"

    def views(self, img: np.ndarray) -> list[np.ndarray]:
        if self.name in ("single", "flip"):
            # The geometry of the per-epoch val pass (augment.geometry.EvalGeometry), so that `single` with the run's
            # own sizes reproduces the figure in its training log.
            return [center_crop_resize(img, self.resize, self.crop, self.interpolation)]
        if self.name == "10crop":
            img = resize_shorter(img, self.resize, self.interpolation)
            if self.pad:
                img = np.pad(img, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
            return five_crops(img, self.crop)
        return [resize_shorter(img, s, self.interpolation) for s in self.scales]


def make_protocol(name: str, data_cfg, stored_size: int | None, resize: int | None = None, crop: int | None = None,
                  scales: tuple[int, ...] | None = None, pad: int | None = None) -> Protocol:
    """A protocol sized like the run's own per-epoch val pass (augment.geometry.EvalGeometry: data.val_resize /
    data.val_size, else the stored size, else 256 -> 224), unless `resize` / `crop` override it.

    Multi-scale defaults to the paper's scales for nets tested on 224 crops, else to those scales times
    crop / 224 (Fashion-MNIST's 28 -> 28, 32, 48, 60, 80). 10-crop of a net trained with pad-crop on
    images it sees whole (CIFAR, Fashion-MNIST) takes its crops from the image zero-padded by data.pad, the
    positions its training crops came from; otherwise the five crops would all be the whole image."""
    val = EvalGeometry(data_cfg, stored_size or 0)
    crop = crop or val.size
    if resize and resize < crop:  # asked for (--resize): centre_crop_resize would keep the crop and relabel it
        raise ValueError(f"--resize {resize} is below the crop side {crop}; give a shorter side of at least {crop}")
    resize = val.resize if resize is None else resize
    if name == "multiscale" and not scales:
        scales = PAPER_SCALES if crop == 224 else tuple(round(s * crop / 224) for s in PAPER_SCALES)
    if pad is None:
        # Seen whole: at the stored size, or resized to exactly it (predict sizes any photo so).
        whole = stored_size and crop == stored_size and resize in (0, crop)
        pad = data_cfg.pad if name == "10crop" and data_cfg.crop == "pad_crop" and whole else 0
    if stored_size and not resize and name != "multiscale":
        # Images kept at their stored size: a larger crop would stop the pass at its first batch, in a worker.
        room = stored_size + 2 * pad if name == "10crop" else stored_size
        if crop > room:
            raise ValueError(f"--crop {crop} is larger than the stored {stored_size}x{stored_size} images"
                             f"{f' padded by {pad} px' if name == '10crop' and pad else ''}; give a crop of at most "
                             f"{room}, or --resize of at least {crop} to enlarge them first")
    return Protocol(name, resize, crop, tuple(scales or ()), pad if name == "10crop" else 0, val.interpolation)


# --- Scoring (device, per batch) --------------------------------------------------------------------------

def group_views(images: list[np.ndarray], protocols: list[Protocol], names: list[str] | None = None):
    """CPU side: images -> [(protocol id, uint8 views [M,H,W,C], owner [M])], views of one shape per group.

    `owner` is each view's image position in the batch; same-shape views are stacked so that a batch of
    multi-scale views needs one forward pass per distinct size, not one per image. `names` (file, shard/key)
    go into the error when an image cannot be cut into a protocol's views."""
    groups = []
    for p_id, protocol in enumerate(protocols):
        by_shape: dict[tuple, tuple[list, list]] = {}
        for i, img in enumerate(images):
            try:
                views_i = protocol.views(img)
            except ValueError as e:
                raise ValueError(f"{names[i] if names else f'image {i}'}: protocol {protocol.name}: {e}") from None
            for view in views_i:
                views, owners = by_shape.setdefault(view.shape, ([], []))
                views.append(view)
                owners.append(i)
        for views, owners in by_shape.values():
            groups.append((p_id, torch.from_numpy(np.stack(views)), torch.tensor(owners, dtype=torch.int64)))
    return groups


@torch.no_grad()
def score_groups(model: torch.nn.Module, groups, n_images: int, protocols: list[Protocol], transform,
                 device: torch.device, autocast=contextlib.nullcontext, max_views: int = 256) -> list[torch.Tensor]:
    """Device side: the view groups of `n_images` images -> per protocol, mean softmax probabilities [N, classes].

    A forward pass takes at most `max_views` views (mirrors included) of the protocol's crop size, and
    proportionally fewer of larger ones (multi-scale), so that memory stays bounded; `transform` maps uint8
    NHWC to the model's normalized NCHW input (augment.device.DeviceTransform)."""
    sums: list[torch.Tensor | None] = [None] * len(protocols)
    for p_id, views, owners in groups:
        protocol = protocols[p_id]
        area = views.shape[1] * views.shape[2]
        budget = max_views * min(1.0, (protocol.crop ** 2 or area) / area)
        step = max(1, int(budget) // (2 if protocol.mirror else 1))
        for start in range(0, len(views), step):
            x = transform(views[start:start + step].to(device, non_blocking=True))
            own = owners[start:start + step].to(device, non_blocking=True)
            probs = logits_with_mirror(model, x, protocol.mirror, autocast).softmax(dim=1)
            if protocol.mirror:
                own = torch.cat([own, own])  # the mirrors follow their views
            if sums[p_id] is None:
                sums[p_id] = torch.zeros(n_images, probs.shape[1], dtype=torch.float32, device=device)
            sums[p_id].index_add_(0, own, probs)
    return [s / protocols[i].views_per_image for i, s in enumerate(sums)]


def score_images(model: torch.nn.Module, images: list[np.ndarray], protocols: list[Protocol], transform,
                 device: torch.device, autocast=contextlib.nullcontext, max_views: int = 256) -> list[torch.Tensor]:
    """In-memory HWC uint8 images -> per protocol, mean softmax probabilities [N, classes] (predict, tests)."""
    was_training = model.training
    model.eval()
    try:
        return score_groups(model, group_views(images, protocols), len(images), protocols, transform, device,
                            autocast, max_views)
    finally:
        model.train(was_training)


class ViewDataset(torch.utils.data.Dataset):
    """Loader-worker side of ``evaluate_protocols``: a Job (data/loading/loader.py) of sample indices -> (view groups,
    labels, the indices), or (None, the message, None) for a sample no decoder reads."""

    def __init__(self, reader, channels: int, protocols: list[Protocol]):
        self.reader, self.channels, self.protocols = reader, channels, protocols

    def __len__(self):  # the sampler decides what is loaded
        return 0

    def __getitem__(self, job: Job):
        indices = job.indices
        images = []
        for i in indices.tolist():
            _, data, _ = self.reader[i]
            try:
                images.append(decode(data, self.channels))
            except DecodeError:
                # Returned, not raised: raised in a loader worker it would reach the user wrapped in a traceback.
                return None, (f"{self.reader.root} {self.reader.where(i)}: cannot decode; an evaluation scores "
                              f"every sample, so none is replaced: run resnet-repro verify {self.reader.root}, and "
                              "prepare the data again"), None
        groups = group_views(images, self.protocols, [self.reader.where(i) for i in indices.tolist()])
        return groups, torch.from_numpy(self.reader.labels[indices].astype(np.int64)), torch.as_tensor(indices)


def _decoded(loader):
    """The loader's batches; a sample no decoder reads (ViewDataset's message) raised as DecodeError here, in the
    main process. Its workers are stopped when the loop ends, however it ends (close_workers)."""
    it = iter(loader)
    try:
        for groups, labels, indices in it:
            if groups is None:
                raise DecodeError(labels)
            yield groups, labels, indices
    finally:
        close_workers(it)


@torch.no_grad()
def evaluate_protocols(model: torch.nn.Module, reader, protocols: list[Protocol], transform, device: torch.device,
                       batch_size: int = 256, workers: int = 2, autocast=contextlib.nullcontext,
                       rank: int = 0, world: int = 1) -> list[dict]:
    """Top-1/top-5 error of `model` on every sample of `reader` under each protocol, in one pass.

    `batch_size` bounds the views per forward pass (see score_groups); a loader batch holds as many images as
    keep the protocol with the most views within it. Counts are all-reduced across ranks (each rank reads its
    own disjoint indices)."""
    channels = reader.manifest["image"]["channels"]
    images_per_batch = max(1, batch_size // max(p.views_per_image for p in protocols))
    jobs = [Job(0, step, indices)
            for step, indices in enumerate(eval_batch_indices(len(reader), images_per_batch, rank, world))]
    # Two batches in flight, not the training loader's four: multi-scale views reach 640 px on the shorter side,
    # ~8x the pixels of a 224 crop, and each batch waits in host memory.
    loader = make_loader(ViewDataset(reader, channels, protocols), jobs, workers, device.type == "cuda", prefetch=2)
    was_training = model.training
    model.eval()
    # Per protocol: [top-1 correct, top-5 correct, samples, summed -log p(target)], float64 for exact counts.
    sums = torch.zeros(len(protocols), 4, dtype=torch.float64, device=device)
    # Per protocol and image, in the split's order: 1 where the top-1 guess is right. Each rank fills its own
    # images, so the sum over ranks is every image's outcome once (paired.py compares two runs image by image).
    hits = torch.zeros(len(protocols), len(reader), dtype=torch.float32, device=device)
    classes = 0
    for groups, labels, indices in on_every_rank(_decoded(loader), device):
        labels = labels.to(device, non_blocking=True)
        indices = indices.to(device, non_blocking=True)
        probs = score_groups(model, groups, len(labels), protocols, transform, device, autocast, batch_size)
        for p_id, p in enumerate(probs):
            classes = p.shape[1]
            h1, h5 = topk_hits(p, labels)
            hits[p_id, indices] = h1.float()
            nll = -p.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().sum()
            sums[p_id] += torch.stack([h1.sum().double(), h5.sum().double(),
                                       torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
                                       nll.double()])
    model.train(was_training)
    dist.all_reduce_sum(sums)
    results = []
    for p, (c1, c5, n, nll), h in zip(protocols, sums.tolist(), packed_hits(hits)):
        if n == 0:
            raise ValueError(f"{reader.root} split {reader.split}: evaluation saw no samples")
        results.append({"protocol": p.name, "description": p.describe(), "views": p.views_per_image,
                        "top1_err": 100.0 * (1 - c1 / n), "top5_err": 100.0 * (1 - c5 / n), "loss": nll / n,
                        "count": int(n), "top1_correct": int(c1), "top5_correct": int(c5), "classes": classes,
                        "top1_hits": h})
    return results


def format_table(results: list[dict]) -> str:
    """Results of ``evaluate_protocols`` as an aligned text table."""
    rows = [("protocol", "views", "top-1 err %", "top-5 err %", "images", "geometry")]
    rows += [(r["protocol"], str(r["views"]), f"{r['top1_err']:.2f}",
              top5_text(r["top5_err"], r.get("classes"), unit=""), str(r["count"]), r["description"]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)
