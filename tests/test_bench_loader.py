"""`resnet-repro bench loader` and the photo-like JPEG shards it runs on (data/sources/synthetic.py).

No timing is asserted (speed is what the command prints); these check that the command runs the real pipeline,
reports every figure it promises, and that the bench data are deterministic and ImageNet-shaped."""
from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_repro.data.decode.cpu import decode
from resnet_repro.data.decode.header import image_size
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.records import sha256_file
from resnet_repro.data.sources.synthetic import make_jpeg_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_jpeg_shards(tmp_path_factory.mktemp("bench") / "jpegs", 40, 4, 5, size=(96, 72), seed=0,
                            train_shards=2, val_shards=1)


def test_jpeg_shards_are_deterministic_whatever_the_process_count(shards, tmp_path):
    again = make_jpeg_shards(tmp_path / "again", 40, 4, 5, size=(96, 72), seed=0, train_shards=2, val_shards=1,
                             workers=2)
    for name in ("train-00000.tar", "train-00001.tar", "val-00000.tar"):
        assert sha256_file(shards / name) == sha256_file(again / name)
    assert not (tmp_path / "again.partial").exists()


def test_jpeg_shards_look_like_imagenet(shards):
    reader = RecordReader(shards, "train")
    assert len(reader) == 40 and len(RecordReader(shards, "val")) == 4
    assert reader.manifest["image"]["channels"] == 3 and len(reader.classes) == 5
    sizes = []
    for i in range(len(reader)):
        _, data, label = reader[i]
        assert data[:2] == b"\xff\xd8" and 0 <= label < 5
        h, w = image_size(data)
        assert decode(data, 3).shape == (h, w, 3)
        sizes.append((h, w))
    sizes = np.array(sizes)
    # +-20 % around 96x72, a quarter portrait
    assert sizes.min() >= int(72 * 0.8) - 1 and sizes.max() <= int(96 * 1.2)
    assert 0 < (sizes[:, 0] > sizes[:, 1]).mean() < 0.6


def test_bench_loader_json_reports_every_figure(shards, cli):
    code, out, err = cli("bench", "loader", "--data", shards, "--workers", "1", "--batch-size", "4", "--batches", "3",
                         "--set", "data.image_size=32", "--device", "cpu", "--json")
    assert code == 0, err
    r = json.loads(out)
    for key in ("images_per_s", "images_per_s_per_worker", "decode_limit_per_s", "peak_rss_mb_per_worker",
                "device_transform_images_per_s", "main_cpu_ms_per_image"):
        assert r[key] > 0, key
    assert isinstance(r["rss_growth_mb_per_worker"], float) and isinstance(r["rss_growth_from_first_batch_mb"], float)
    assert r["workers"] == 1 and r["timed_images"] == 12
    assert r["crop"] == "tf_cnn" and r["color"] == "tf_cnn"
    from resnet_repro.data.decode import jpeg_region

    assert r["region_decode"] is jpeg_region.available()  # says which decoder the figures are for
    assert r["per_worker_vs_decode_limit"] == pytest.approx(r["images_per_s_per_worker"] / r["decode_limit_per_s"])


def test_bench_loader_text_scaling_and_torchvision_comparison(shards, cli):
    code, out, err = cli("bench", "loader", "--data", shards, "--workers", "1,2", "--batch-size", "2", "--batches", "2",
                         "--set", "data.image_size=32", "--set", "data.crop=inception", "--set", "data.color=jitter",
                         "--set", "data.lighting=0.1", "--device", "cpu", "--compare", "torchvision")
    assert code == 0, err
    assert "decode limit" in out and "workers 2:" in out and "x one worker" in out
    assert "workers 2: 2 cores decoding at once give" in out and "per worker the pipeline is" in out
    assert "crop decode: " in out
    import os

    left = max(1, (os.cpu_count() or 1) - 2)  # the cores the 2 workers leave to the CPU "device"
    assert f"device-side transform alone (colour + normalize on cpu, {left} thread(s))" in out
    try:
        import torchvision  # noqa: F401
        assert "torchvision (ImageFolder" in out
    except ImportError:
        assert "torchvision is not installed" in out


def test_bench_loader_runs_past_one_epoch_and_resolves_auto(shards, cli):
    """40 images make 5 batches of 8; 4 untimed + 8 timed batches take three epochs. auto: the count training
    would use here (data/loading/cores.py)."""
    import os

    from resnet_repro.data.loading.cores import plan_cores

    code, out, err = cli("bench", "loader", "--data", shards, "--workers", "1,auto", "--batch-size", "8",
                         "--batches", "8", "--set", "data.image_size=32", "--device", "cpu", "--json")
    assert code == 0, err
    r = json.loads(out)
    auto = plan_cores(os.sched_getaffinity(0), "auto", "cpu").workers
    assert [x["workers"] for x in r["runs"]] == [1, auto]
    assert all(x["timed_images"] == 64 and x["affinity"] == "plan" and "loader worker(s)" in x["core_plan"]
               for x in r["runs"])


def test_the_parallel_decode_limit_decodes_in_every_process_and_names_a_broken_image(shards):
    from resnet_repro.bench.measure import parallel_decode_limit

    blobs = [RecordReader(shards, "train")[i][1] for i in range(6)]
    rates = parallel_decode_limit(blobs, 3, seconds=0.0)
    assert len(rates.values) == 3 and all(v > 0 for v in rates.values)
    with pytest.raises(ValueError, match="cannot be decoded"):
        parallel_decode_limit(blobs + [b"\xff\xd8 not a jpeg"], 2, seconds=0.0)


def test_bench_loader_errors_name_the_problem(shards, cli):
    code, _, err = cli("bench", "loader", "--data", shards, "--workers", "0")
    assert code == 2 and "--workers" in err
    code, _, err = cli("bench", "loader", "--data", shards, "--batch-size", "64")  # 40 images
    assert code == 2 and "fewer than one batch of 64" in err and str(shards) in err
    code, _, err = cli("bench", "loader", "--data", shards, "--workers", "1,lots")
    assert code == 2 and "'1,lots'" in err


def test_prepare_bench_times_a_complete_copy_mode_prepare(cli):
    """`resnet-repro bench prepare`: it prepares the folder it made (every image counted) and reports the ratio
    it promises. No speed is asserted."""
    code, out, err = cli("bench", "prepare", "--images", "100", "--workers", "1", "--repeats", "1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == 100 and r["workers"] == 1
    assert r["decode_limit_per_s"] > 0 and r["prepare_images_per_s"] > 0
    assert r["ratio_per_worker"] == pytest.approx(r["prepare_images_per_s_per_worker"] / r["decode_limit_per_s"])


@pytest.mark.parametrize("color, jitter", [("tf_cnn", (32 / 255, 0.5, 0.5, 0.2)), ("jitter", (0.4, 0.4, 0.4, 0.0)),
                                           ("none", None)])
def test_the_torchvision_comparison_does_the_same_colour_work(color, jitter):
    """--compare torchvision runs the ColorJitter that matches data.color: tf_cnn's distortion has a hue shift."""
    T = pytest.importorskip("torchvision.transforms")
    from resnet_repro.bench.loader_torchvision import torchvision_transform
    from resnet_repro.config import DataConfig

    transform, what = torchvision_transform(DataConfig(color=color))
    kinds = [type(t) for t in transform.transforms]
    assert kinds[:2] == [T.RandomResizedCrop, T.RandomHorizontalFlip] and kinds[-2:] == [T.ToTensor, T.Normalize]
    cj = [t for t in transform.transforms if isinstance(t, T.ColorJitter)]
    if jitter is None:
        assert not cj and "ColorJitter" not in what
        return
    (cj,) = cj
    b, c, s, h = jitter
    assert cj.brightness == pytest.approx((1 - b, 1 + b)) and cj.contrast == pytest.approx((1 - c, 1 + c))
    assert cj.saturation == pytest.approx((1 - s, 1 + s))
    assert (cj.hue is None) if h == 0 else cj.hue == pytest.approx((-h, h))
    assert "ColorJitter(" in what
