"""predict: top-k classes of image files, named from the checkpoint, equal to the model's own softmax."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from resnet_repro.evaluate import load_trained
from resnet_repro.predict import PredictError, predict

from test_export import NAMES, fake_run_checkpoint


@pytest.fixture
def trained(tmp_path, texture_data):
    return load_trained(fake_run_checkpoint(tmp_path / "final.pt", texture_data))


def softmax_of(model, img16: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(img16.astype(np.float32) / 255.0).view(1, 1, 16, 16)
    with torch.no_grad():
        return model((x - 0.5) / 0.25).softmax(1)[0].numpy()  # the run's mean 0.5 / std 0.25


def test_top_k_are_the_models_softmax_in_order(trained, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (pred,) = predict(trained, [tmp_path / "a.png"], topk=3)
    want = softmax_of(trained.model, img)
    order = np.argsort(-want)[:3]
    assert [t["name"] for t in pred["top"]] == [NAMES[i] for i in order]
    np.testing.assert_allclose([t["prob"] for t in pred["top"]], want[order], rtol=1e-5)


def test_other_sizes_and_colour_images_are_brought_to_the_runs_geometry(trained, tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    # A colour image twice the size (shorter side 32 -> 16) and taller than wide (extra rows are cropped away).
    big = np.repeat(np.repeat(small, 2, 0), 2, 1)
    tall = np.concatenate([np.zeros((8, 32), np.uint8), big, np.zeros((8, 32), np.uint8)])
    cv2.imwrite(str(tmp_path / "tall.png"), cv2.cvtColor(tall, cv2.COLOR_GRAY2BGR))
    (pred,) = predict(trained, [tmp_path / "tall.png"], topk=4)
    want = softmax_of(trained.model, small)  # 2x area shrink of 2x2 blocks gives `small` back exactly
    got = {t["name"]: t["prob"] for t in pred["top"]}
    np.testing.assert_allclose([got[n] for n in NAMES], want, rtol=1e-4)


def test_predict_uses_the_runs_recorded_precision_unless_told(trained, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((16, 16), 100, np.uint8))
    assert predict(trained, [tmp_path / "a.png"])[0]["precision"] == "fp32"  # recorded auto: a run before records
    trained.cfg.train.precision = "bf16"  # what a run on a native-bf16 CPU records
    (pred,) = predict(trained, [tmp_path / "a.png"])
    assert pred["precision"] == "bf16"
    want = softmax_of(trained.model, np.full((16, 16), 100, np.uint8))
    np.testing.assert_allclose(sorted(t["prob"] for t in pred["top"]), sorted(want)[-len(pred["top"]):], atol=0.05)
    assert predict(trained, [tmp_path / "a.png"], precision="fp32")[0]["precision"] == "fp32"


def test_unreadable_images_are_named(trained, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PredictError, match="bad.png: not an image"):
        predict(trained, [tmp_path / "bad.png"])
    with pytest.raises(PredictError, match="nope.png: cannot read"):
        predict(trained, [tmp_path / "nope.png"])


def test_predict_cli(cli, tmp_path, texture_data):
    ck = fake_run_checkpoint(tmp_path / "final.pt", texture_data)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((16, 16), 128, np.uint8))
    code, out, err = cli("predict", "--checkpoint", ck, tmp_path / "a.png", "--protocol", "10crop")
    assert code == 0, err
    assert out.splitlines()[0] == f"{tmp_path / 'a.png'}:" and len(out.splitlines()) == 5  # 4 classes < top-5
    assert sum(name in out for name in NAMES) == 4
    code, out, err = cli("predict", "--checkpoint", ck, tmp_path / "a.png", "--json", "--topk", "2")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 2


def tiff_header(w: int, h: int, order: str, big: bool) -> bytes:
    """A TIFF whose first directory gives w x h (LONG values) and whose pixel data never comes."""
    import struct

    e = "<" if order == "II" else ">"
    if big:  # BigTIFF: 16-byte header, 8-byte counts and values, 20-byte entries
        head = order.encode() + struct.pack(e + "HHHQ", 43, 8, 0, 16)
        return head + struct.pack(e + "Q", 2) + b"".join(struct.pack(e + "HHQQ", tag, 16, 1, v)
                                                         for tag, v in ((256, w), (257, h)))
    head = order.encode() + struct.pack(e + "HI", 42, 8)
    return head + struct.pack(e + "H", 2) + b"".join(struct.pack(e + "HHII", tag, 4, 1, v)
                                                     for tag, v in ((256, w), (257, h))) + b"\0" * 4


def test_tiff_sizes_are_read_from_the_header_and_a_huge_one_is_refused(trained, tmp_path):
    """TIFF, which predict decodes but read_header does not parse, gets the same megapixel check before decoding."""
    from resnet_repro.data.decode.header import tiff_size

    img = np.random.default_rng(0).integers(0, 256, (16, 24), dtype=np.uint8)
    ok, buf = cv2.imencode(".tiff", img)
    assert ok and tiff_size(buf.tobytes()) == (24, 16)  # OpenCV's own file: width, height
    (tmp_path / "a.tiff").write_bytes(buf.tobytes())
    assert len(predict(trained, [tmp_path / "a.tiff"])[0]["top"]) == 4
    for order in ("II", "MM"):
        for big in (False, True):
            assert tiff_size(tiff_header(300, 200, order, big)) == (300, 200)
            path = tmp_path / f"huge-{order}-{big}.tif"
            path.write_bytes(tiff_header(9000, 8000, order, big))  # 72 MP
            with pytest.raises(PredictError, match=f"{path.name}: the header says 9000x8000 = 72 MP, over "
                                                   "predict's 50 MP limit"):
                predict(trained, [path])
    assert tiff_size(b"II*\0" + b"\xff" * 12) is None  # a directory offset past the end
    assert tiff_size(b"not a tiff at all") is None
