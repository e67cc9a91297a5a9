"""GPU JPEG decoding (loading/gpu_decode.py): the crops the workers draw match the CPU path's, sample for sample and
in distribution; the GPU-side crop/resize/flip, checked on the CPU with OpenCV standing in for nvJPEG; errors;
and, where CUDA and torchvision are present, nvJPEG against the CPU decoder."""
from __future__ import annotations

import math
import sys

import cv2
import numpy as np
import pytest
import torch

from resnet_repro.recipe import load_config
from resnet_repro.data.augment.geometry import TrainGeometry
from resnet_repro.data.augment.rng import sample_rng
from resnet_repro.data.decode.cpu import DecodeError, decode_box
from resnet_repro.data.loading.gpu_decode import EncodedBatchDataset, GpuDecoder, crop_params, refusals
from resnet_repro.data.loading.loader import BatchDataset, Job
from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader

SIZE = 32  # output side of the test crops, pixels
WAIT_S = 20.0  # the longest a test waits for another thread before calling it broken (never a timing)


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """RGB uint8 with only low frequencies (JPEG keeps it nearly intact) and no mirror symmetry."""
    small = rng.uniform(0, 255, (4, 5, 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += np.linspace(0, 60, w, dtype=np.float32)[None, :, None]  # a left-to-right ramp: flips show
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(img_rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory):
    """24 variable-size JPEGs (landscape and portrait, 60-140 px) as a prepared ImageNet-style folder."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(24):
        h, w = (int(v) for v in rng.integers(60, 141, 2))
        samples.append(records.Sample(f"img_{i:03d}", jpeg(smooth_image(rng, h, w)), "jpg", i % 3))
    entry = records.write_split(root, "train", samples, 2, 0)
    records.write_manifest(root, {"format": records.FORMAT, "dataset": "test-jpegs", "classes": ["a", "b", "c"],
                                  "image": {"height": 0, "width": 0, "channels": 3},
                                  "encoding": {"ext": "jpg", "lossless": False}, "splits": {"train": entry}})
    return root


def geometry(crop: str = "inception", **sets) -> TrainGeometry:
    overrides = [f"data.crop={crop}", f"data.image_size={SIZE}"] + [f"data.{k}={v}" for k, v in sets.items()]
    return TrainGeometry(load_config(None, overrides).data, 0)


def cv2_decoders():
    """OpenCV standing in for torchvision's decoders: list of bytes tensors -> list of uint8 [3, H, W]."""
    def one(chunk: torch.Tensor) -> torch.Tensor:
        img = cv2.imdecode(chunk.numpy(), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise RuntimeError("cannot decode")
        return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).contiguous()

    return (lambda chunks, device: [one(c).to(device) for c in chunks]), one


# --- The crops: same boxes and flips as the CPU path ----------------------------------------------------------

@pytest.mark.parametrize("crop, schedule", [("inception", "random"), ("tf_cnn", "random"), ("paper", "random"),
                                            ("inception", "alternate")])
def test_boxes_and_flips_are_the_cpu_paths_sample_for_sample(crop, schedule, jpeg_data, monkeypatch):
    """Spy on the box the CPU path decodes and compare with what the GPU path's workers ship (under either flip
    schedule: an alternating one fixes the same flips on both paths), at a side below the geometry's own, as
    progressive resizing asks for (the paper's box depends on the side)."""
    seen = []
    real = decode_box
    monkeypatch.setattr("resnet_repro.data.augment.geometry.decode_box", lambda data, ch, box, full_hw, out_hw, *a:
                        seen.append((box, full_hw)) or real(data, ch, box, full_hw, out_hw, *a))
    reader = RecordReader(jpeg_data, "train")
    geo = geometry(crop, flip_schedule=schedule)
    job = Job(epoch=3, step=0, indices=np.arange(len(reader)), size=SIZE - 8)
    cpu_images = BatchDataset(reader, geo, 3, seed=7, train=True)[job][0].numpy()
    assert cpu_images.shape[1:] == (SIZE - 8, SIZE - 8, 3)
    batch = EncodedBatchDataset(reader, geometry(crop, flip_schedule=schedule), seed=7)[job][0]
    if schedule == "alternate":
        assert batch.flips == [geo.flip_of(7, 3, i) for i in range(len(reader))]
    assert len(seen) == len(reader) == len(batch)
    for (box, (h, w)), gbox in zip(seen, batch.boxes):
        y0, x0 = min(round(box[0]), h - 1), min(round(box[1]), w - 1)
        assert gbox == (y0, x0, max(1, min(h, round(box[0] + box[2])) - y0), max(1, min(w, round(box[1] + box[3])) - x0))
    # Flips: the GPU-side resize (OpenCV decode standing in for nvJPEG) must land near the CPU path's pixels, and
    # far from their mirror image whenever the two would differ.
    decode, decode_cpu = cv2_decoders()
    gpu_images = GpuDecoder("cpu", decode=decode, decode_cpu=decode_cpu)(batch).numpy().astype(np.float32)
    for cpu, gpu, flip in zip(cpu_images.astype(np.float32), gpu_images, batch.flips):
        same, mirrored = np.abs(cpu - gpu).mean(), np.abs(cpu[:, ::-1] - gpu).mean()
        assert same < 6.0, (same, mirrored, flip)
        assert same < mirrored or mirrored < 6.0  # symmetric crops cannot tell, and need not


def reference_random_resized_crop(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision.transforms.RandomResizedCrop.get_params (scale (0.08, 1), ratio (3/4, 4/3)), written out
    independently from its documentation, with its own generator: the distribution to match."""
    for _ in range(10):
        target = h * w * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w  # (4:3 images never get here in practice)


def test_inception_box_statistics_of_the_gpu_path():
    """4000 boxes the GPU path ships for a 375x500 image against 4000 from an independent RandomResizedCrop:
    inside the image, and the same area, aspect and position distributions (means within 5 standard errors);
    flips at p = 0.5."""
    geo = geometry("inception")
    h, w, n = 375, 500, 4000
    boxes, flips = zip(*(crop_params(geo, h, w, sample_rng(0, 0, i)) for i in range(n)))
    ref_rng = np.random.default_rng(12345)
    ours = np.array(boxes, dtype=np.float64)
    ref = np.array([reference_random_resized_crop(h, w, ref_rng) for _ in range(n)], dtype=np.float64)
    y, x, bh, bw = ours.T
    assert (y >= 0).all() and (x >= 0).all() and (y + bh <= h).all() and (x + bw <= w).all()

    def stats(b):
        y, x, bh, bw = b.T
        return {"area": bh * bw / (h * w), "log_aspect": np.log(bw / bh), "centre_y": (y + bh / 2) / h,
                "centre_x": (x + bw / 2) / w}

    got, want = stats(ours), stats(ref)
    assert got["area"].min() >= 0.075 and got["area"].max() <= 1.0
    assert got["log_aspect"].min() > math.log(3 / 4) - 0.02 and got["log_aspect"].max() < math.log(4 / 3) + 0.02
    for key in got:
        se = math.sqrt((got[key].var() + want[key].var()) / n)
        assert abs(got[key].mean() - want[key].mean()) < 5 * se, key
        assert abs(got[key].std() - want[key].std()) < 0.1 * want[key].std(), key
    assert abs(np.mean(flips) - 0.5) < 4 * math.sqrt(0.25 / n)


def test_centre_crop_and_no_flip():
    geo = geometry("none", flip="false")
    assert crop_params(geo, 100, 160, sample_rng(0, 0, 0)) == ((0, 30, 100, 100), False)


def test_unsupported_options_name_the_fix(jpeg_data):
    reader = RecordReader(jpeg_data, "train")
    with pytest.raises(ValueError, match="random_erasing"):
        EncodedBatchDataset(reader, geometry("inception", random_erasing=0.5), 0)
    with pytest.raises(ValueError, match="decode=cpu"):
        crop_params(TrainGeometry(load_config(None, ["data.crop=pad_crop"]).data, 28), 28, 28, sample_rng(0, 0, 0))


def test_one_rule_says_everything_train_would_refuse():
    """train, bench train --e2e and env share it: each reason is named, and a fit config has none."""
    imagenet = load_config(None, ["data.crop=inception", "data.random_erasing=0"]).data
    assert refusals(imagenet, "cuda", 3) == [] and refusals(imagenet) == []
    assert refusals(imagenet, "cpu", 3) == ["needs a CUDA device (here: cpu)"]
    assert refusals(imagenet, "cuda", 1) == ["needs RGB JPEGs (the data has 1 channel(s))"]
    fmnist = load_config(None, ["data.crop=pad_crop", "data.random_erasing=0.5"]).data
    assert refusals(fmnist, "cuda", 3) == ["is for JPEG data sets with ImageNet crops, not data.crop=pad_crop",
                                           "does no random erasing (data.random_erasing > 0)"]
    assert len(refusals(fmnist, "mps", 1)) == 4


# --- The batch and the GPU-side geometry, on the CPU ---------------------------------------------------------

def test_encoded_batch_carries_the_exact_bytes_and_colour_params(jpeg_data):
    reader = RecordReader(jpeg_data, "train")
    ds = EncodedBatchDataset(reader, geometry("inception", color="jitter"), seed=1)
    idx = np.array([5, 0, 17])
    batch, labels, bad, params = ds[Job(0, 0, idx, size=24)]
    assert bad == 0 and batch.size == 24 and len(batch) == 3
    assert [bytes(c.numpy()) for c in batch.chunks()] == [reader[i][1] for i in idx]
    assert batch.keys == [reader[i][0] for i in idx] and labels.tolist() == [reader[i][2] for i in idx]
    cpu_params = BatchDataset(reader, geometry("inception", color="jitter"), 3, 1, True)[Job(0, 0, idx)][3]
    assert params.shape[0] == 3 and params.shape[1] > 0 and torch.equal(params, cpu_params)
    assert batch.to("cpu") is batch


def test_gpu_side_resize_and_flip(jpeg_data):
    reader = RecordReader(jpeg_data, "train")
    batch = EncodedBatchDataset(reader, geometry("inception"), seed=0)[Job(0, 0, np.arange(6))][0]
    decode, decode_cpu = cv2_decoders()
    dec = GpuDecoder("cpu", decode=decode, decode_cpu=decode_cpu)
    out = dec(batch)
    assert out.shape == (6, SIZE, SIZE, 3) and out.dtype == torch.uint8
    batch.flips = [not f for f in batch.flips]
    flipped = dec(batch)
    assert torch.equal(flipped, out.flip(2))  # flip of the resized crop == resize of the flipped crop
    # The transform gets the uint8 NHWC batch, and the colour parameters when there are any.
    calls = []
    dec.transform = lambda x, *params: calls.append((x.shape, len(params))) or x
    dec(batch)
    dec(batch, torch.zeros(6, 4))
    assert calls == [((6, SIZE, SIZE, 3), 0), ((6, SIZE, SIZE, 3), 1)]


def test_a_file_the_gpu_refuses_is_decoded_on_the_cpu_and_an_unreadable_one_is_named(jpeg_data, capsys):
    reader = RecordReader(jpeg_data, "train")
    batch = EncodedBatchDataset(reader, geometry("inception"), seed=0)[Job(0, 0, np.arange(4))][0]
    decode, decode_cpu = cv2_decoders()
    refused = batch.keys[2]

    def picky(chunks, device):  # an nvJPEG that refuses one file (as it does CMYK JPEGs)
        if any(bytes(c.numpy()) == reader[2][1] for c in chunks):
            raise RuntimeError("nvjpeg: unsupported")
        return decode(chunks, device)

    used_cpu = []
    dec = GpuDecoder("cpu", decode=picky, decode_cpu=lambda c: used_cpu.append(1) or decode_cpu(c))
    assert dec(batch).shape == (4, SIZE, SIZE, 3) and used_cpu == [1]
    assert "image by image" in capsys.readouterr().err
    dec = GpuDecoder("cpu", decode=picky, decode_cpu=lambda c: (_ for _ in ()).throw(RuntimeError("corrupt")))
    with pytest.raises(DecodeError, match=refused):
        dec(batch)


def test_an_unreadable_header_gets_the_cpu_paths_replacement(jpeg_data, tmp_path, capsys):
    reader = RecordReader(jpeg_data, "train")
    samples = [records.Sample("broken", b"\xff\xd8not a jpeg at all", "jpg", 0)]
    samples += [records.Sample(f"ok_{i}", reader[i][1], "jpg", 1) for i in range(3)]
    entry = records.write_split(tmp_path, "train", samples, 1, 0)
    records.write_manifest(tmp_path, dict(reader.manifest, splits={"train": entry}))
    bad_reader = RecordReader(tmp_path, "train")
    broken = int(np.flatnonzero(bad_reader.keys == "broken")[0])
    batch, labels, bad, _ = EncodedBatchDataset(bad_reader, geometry("inception"), 0)[
        Job(0, 0, np.array([broken, (broken + 1) % 4]))]
    assert bad == 1 and "broken" not in batch.keys and "broken" in capsys.readouterr().err


@pytest.mark.parametrize("crop", ["inception", "paper"])
def test_a_split_batch_is_the_gpu_paths_head_then_the_cpu_paths_tail(crop, jpeg_data):
    """data.gpu_decode_share 0.6 of 10 samples: the first 6 stay encoded with the boxes and flips a whole encoded
    batch gives them, the last 4 are the CPU path's pixels exactly; labels and colour parameters keep the batch's
    order, and the decoder's output is the two paths' images in that order."""
    reader = RecordReader(jpeg_data, "train")
    job = Job(2, 0, np.array([9, 3, 14, 0, 21, 7, 11, 5, 18, 2]), size=SIZE - 4)
    whole, labels, bad, params = EncodedBatchDataset(reader, geometry(crop, color="jitter"), seed=3)[job]
    split, s_labels, s_bad, s_params = EncodedBatchDataset(reader, geometry(crop, color="jitter"), 3, share=0.6)[job]
    cpu = BatchDataset(reader, geometry(crop, color="jitter"), 3, 3, train=True)[job]
    assert len(split) == 10 and len(split.keys) == 6 and split.decoded.shape == (4, SIZE - 4, SIZE - 4, 3)
    assert split.keys == whole.keys[:6] and split.boxes == whole.boxes[:6] and split.flips == whole.flips[:6]
    assert [bytes(c.numpy()) for c in split.chunks()] == [bytes(c.numpy()) for c in whole.chunks()[:6]]
    assert torch.equal(split.decoded, cpu[0][6:])
    assert torch.equal(s_labels, labels) and torch.equal(s_labels, cpu[1]) and s_bad == bad == 0
    assert torch.equal(s_params, params) and torch.equal(s_params, cpu[3])
    decode, decode_cpu = cv2_decoders()
    dec = GpuDecoder("cpu", decode=decode, decode_cpu=decode_cpu)
    assert torch.equal(dec(split), torch.cat([dec(whole)[:6], cpu[0][6:]]))


def test_a_batch_the_workers_decode_whole_never_reaches_the_gpu_decoder(jpeg_data):
    reader = RecordReader(jpeg_data, "train")
    job = Job(0, 0, np.arange(4))
    batch = EncodedBatchDataset(reader, geometry("inception"), 0, share=0.1)[job][0]  # 0.4 samples: none encoded
    assert len(batch) == 4 and batch.keys == [] and batch.chunks() == []

    def no_gpu(chunks, device):
        raise AssertionError("the GPU decoder was called for a batch with nothing encoded")
    out = GpuDecoder("cpu", decode=no_gpu, decode_cpu=no_gpu)(batch)
    assert torch.equal(out, BatchDataset(reader, geometry("inception"), 3, 0, train=True)[job][0])


@pytest.mark.parametrize("share", [0.0, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused_naming_the_key(share, jpeg_data):
    with pytest.raises(ValueError, match="gpu_decode_share"):
        EncodedBatchDataset(RecordReader(jpeg_data, "train"), geometry("inception"), 0, share=share)
    with pytest.raises(ValueError, match="gpu_decode_share"):
        load_config(None, [f"data.gpu_decode_share={share}"])


def test_missing_torchvision_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(RuntimeError, match="needs torchvision.*data.decode=cpu"):
        GpuDecoder("cpu")


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_decoding_ahead_gives_the_synchronous_paths_batches(share, jpeg_data):
    """decode_ahead (background thread; on CUDA a side stream) against the decoder called in the consumer, with
    whole batches encoded and with half of each decoded by the workers."""
    from resnet_repro.data.loading.gpu_decode import decode_ahead
    from resnet_repro.data.loading.loader import DevicePrefetcher, make_loader

    reader = RecordReader(jpeg_data, "train")
    ds = EncodedBatchDataset(reader, geometry("inception", color="jitter"), seed=2, share=share)
    jobs = [Job(1, s, np.arange(s * 6, s * 6 + 6)) for s in range(4)]
    decode, decode_cpu = cv2_decoders()
    seen = []
    dec = GpuDecoder("cpu", transform=lambda x, p: seen.append(p.shape) or x.float() + p[:, :1, None, None],
                     decode=decode, decode_cpu=decode_cpu)
    ahead = list(decode_ahead(make_loader(ds, jobs, 2, pin_memory=False), dec))
    sync = list(DevicePrefetcher(make_loader(ds, jobs, 0, pin_memory=False), torch.device("cpu"), dec))
    assert len(ahead) == len(sync) == 4 and len(seen) == 8 and seen[0][0] == 6  # colour params reached it
    for (xa, ya, ba), (xs, ys, bs) in zip(ahead, sync):
        assert torch.equal(xa, xs) and torch.equal(ya, ys) and ba == bs == 0


# --- CUDA: nvJPEG against the CPU decoder ----------------------------------------------------------------------

def _cuda_and_torchvision():
    if not torch.cuda.is_available():
        return False
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


cuda = pytest.mark.skipif(not _cuda_and_torchvision(), reason="needs CUDA and torchvision")


@cuda
def test_nvjpeg_decode_matches_the_cpu_decoder(jpeg_data):
    from torchvision.io import ImageReadMode, decode_jpeg

    reader = RecordReader(jpeg_data, "train")
    chunks = [torch.frombuffer(bytearray(reader[i][1]), dtype=torch.uint8) for i in range(len(reader))]
    gpu = decode_jpeg(chunks, mode=ImageReadMode.RGB, device="cuda")
    for chunk, g in zip(chunks, gpu):
        c = decode_jpeg(chunk, mode=ImageReadMode.RGB)
        assert g.shape == c.shape and g.device.type == "cuda"
        # nvJPEG and libjpeg-turbo are not bit-exact (IDCT, chroma upsampling), and not only at the edges. Measured
        # on an H200 with torchvision 0.26 (2026-12-04): these 24 images differ by 1.35-2.57 levels on average per
        # image (the largest pixel difference 16), 200 more made the same way by 1.10-3.24 (largest 20); so a
        # mean under 4 and no pixel over 32 apart. (torchvision's own test allows a mean under 2 on its photos;
        # that bound failed here on one image at 2.51. Photo-like 500x375 q90 JPEGs differ more: 0.91-5.27.)
        d = (g.cpu().float() - c.float()).abs()
        assert d.mean() < 4 and d.max() <= 32


@cuda
def test_gpu_path_matches_the_cpu_path_on_cuda(jpeg_data):
    reader = RecordReader(jpeg_data, "train")
    job = Job(1, 0, np.arange(len(reader)))
    cpu = BatchDataset(reader, geometry("inception"), 3, 5, True)[job][0].float()
    batch = EncodedBatchDataset(reader, geometry("inception"), 5)[job][0]
    gpu = GpuDecoder(torch.device("cuda"))(batch).cpu().float()
    assert gpu.shape == cpu.shape
    assert (gpu - cpu).abs().mean(dim=(1, 2, 3)).max() < 6.0


def test_training_with_gpu_decode_needs_cuda(texture_data, tmp_path):
    from resnet_repro.config import ConfigError
    from resnet_repro.training.loop import train

    if torch.cuda.is_available():
        pytest.skip("the error is for machines without CUDA")
    cfg = load_config(None, [f"data.path={texture_data}", "data.decode=gpu", "data.normalize=scale",
                             "model.name=resnet20", "train.epochs=1"])
    with pytest.raises(ConfigError, match="data.decode=cpu") as e:  # a start-up config mistake: exit 2
        train(cfg, tmp_path / "run")
    assert "needs a CUDA device (here: cpu); needs RGB JPEGs (the data has 1 channel(s))" in str(e.value)
    assert not list((tmp_path / "run").glob("checkpoints/*"))  # refused before any training


@cuda
@pytest.mark.parametrize("share", [1.0, 0.5])
def test_decoding_ahead_on_a_side_stream_matches_the_synchronous_path_on_cuda(share, jpeg_data):
    """The hand-over by event: batches read on the default stream right after the hand-over are complete (with
    half of each batch decoded by the workers too: its pinned tail copied on the side stream)."""
    from resnet_repro.data.loading.gpu_decode import decode_ahead
    from resnet_repro.data.loading.loader import DevicePrefetcher, make_loader

    reader = RecordReader(jpeg_data, "train")
    ds = EncodedBatchDataset(reader, geometry("inception"), seed=4, share=share)
    jobs = [Job(0, s, np.arange(s * 8, s * 8 + 8)) for s in range(3)]
    dev = torch.device("cuda")
    ahead = [(x.float().sum((1, 2, 3)), y.clone()) for x, y, _ in
             decode_ahead(make_loader(ds, jobs, 2, pin_memory=True), GpuDecoder(dev), depth=2)]
    sync = [(x.float().sum((1, 2, 3)), y) for x, y, _ in
            DevicePrefetcher(make_loader(ds, jobs, 0, pin_memory=True), dev, GpuDecoder(dev))]
    for (xa, ya), (xs, ys) in zip(ahead, sync):
        assert ya.device.type == "cuda" and torch.equal(ya, ys) and torch.equal(xa, xs)


# --- bench gpu-decode: the decode-ahead thread's work, step by step ----------------------------------------------

def test_bench_gpu_decode_times_each_step_of_a_decode_ahead_batch(jpeg_data):
    """With OpenCV standing in for nvJPEG on the CPU: every phase times every image of its batches, the threads
    phase really decodes from several threads, and the per-batch milliseconds follow from the rates."""
    import threading

    from resnet_repro.bench.gpu_decode import GpuDecodeOptions, bench_gpu_decode

    decode, decode_cpu = cv2_decoders()
    calls, main, together = [], threading.get_ident(), threading.Barrier(2, timeout=WAIT_S)

    def counting(chunks, device):
        calls.append((threading.get_ident(), len(chunks)))
        if threading.get_ident() != main:
            together.wait()  # both halves of a batch are decoding at the same time (else: BrokenBarrierError)
        return decode(chunks, device)

    lines = []
    r = bench_gpu_decode(GpuDecodeOptions(str(jpeg_data), batch_size=8, batches=2, threads=2, device="cpu",
                                          overrides=[f"data.image_size={SIZE}"]),
                         log=lines.append, decode=counting, decode_cpu=decode_cpu)
    phases = ("decode", "decode_threads", "crops", "batch")
    assert tuple(r["images_per_s"]) == phases and all(r["images_per_s"][p] > 0 for p in phases)
    assert all(len(r["images_per_s_per_batch"][p]) == 2 for p in phases)
    for p in phases:
        assert r["batch_ms"][p] == pytest.approx(1e3 * 8 / r["images_per_s"][p])
    # 3 batches (one untimed) of 8 per phase; the threads phase in two halves of 4 from two threads.
    assert sum(n for _, n in calls) == 4 * 3 * 8
    halves = calls[3:9]
    assert [n for _, n in halves] == [4] * 6 and len({t for t, _ in halves}) == 2
    assert {t for t, _ in calls[:3]} == {t for t, _ in calls[9:]} == {main}
    assert any("one decode-ahead batch of 8" in line for line in lines)


def test_bench_gpu_decode_says_what_it_needs(jpeg_data, cli, tmp_path):
    code, _, err = cli("bench", "gpu-decode", "--data", str(jpeg_data), "--batch-size", "100", "--device", "cpu",
                       "--set", f"data.image_size={SIZE}")
    assert code != 0 and "fewer than one batch of 100" in err
    try:
        import torchvision  # noqa: F401
    except ImportError:
        code, _, err = cli("bench", "gpu-decode", "--data", str(jpeg_data), "--batch-size", "8", "--device", "cpu")
        assert code != 0 and "needs torchvision" in err
