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


def test_a_folder_is_the_image_files_under_it_in_order(trained, tmp_path, cli):
    from resnet_repro.predict import image_files

    rng = np.random.default_rng(2)
    folder = tmp_path / "photos"
    (folder / "b" / "deeper").mkdir(parents=True)
    (folder / ".cache").mkdir()
    names = ["a.png", "b/c.PNG", "b/deeper/d.jpg", "e.bmp"]
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.png").write_bytes(b"macOS resource fork")  # skipped: hidden
    cv2.imwrite(str(folder / ".cache" / "x.png"), np.zeros((16, 16), np.uint8))  # skipped: under a hidden folder
    assert image_files([folder]) == [folder / n for n in names]
    assert image_files([folder / "notes.txt", folder / "e.bmp"]) == [folder / "notes.txt", folder / "e.bmp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="empty: a folder with no image files"):
        image_files([tmp_path / "empty"])
    (tmp_path / "empty" / "manifest.json").write_text("{}")  # a prepared data folder: evaluate scores it
    with pytest.raises(PredictError, match="empty: a prepared data folder .* resnet-repro evaluate"):
        image_files([tmp_path / "empty"])

    code, out, err = cli("predict", "--checkpoint", tmp_path / "final.pt", folder, "--json")  # the fixture's file
    assert code == 0, err
    got = json.loads(out)
    assert [g["image"] for g in got] == [str(folder / n) for n in names]
    for g, name in zip(got, names):
        img = cv2.imread(str(folder / name), cv2.IMREAD_GRAYSCALE)
        want = softmax_of(trained.model, img)
        assert g["top"][0]["name"] == NAMES[int(np.argmax(want))]


def test_images_are_read_and_scored_a_chunk_at_a_time_with_the_same_results(trained, tmp_path, monkeypatch):
    import resnet_repro.predict as pr

    rng = np.random.default_rng(3)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    whole = predict(trained, paths, topk=4)
    sizes, score = [], pr.score_images
    monkeypatch.setattr(pr, "score_images", lambda model, images, *a, **k: sizes.append(len(images)) or
                        score(model, images, *a, **k))
    monkeypatch.setattr(pr, "CHUNK_IMAGES", 2)
    chunked = predict(trained, paths, topk=4)
    assert sizes == [2, 2, 1]
    assert [p["image"] for p in chunked] == [str(p) for p in paths]
    for a, b in zip(whole, chunked):
        assert [t["name"] for t in a["top"]] == [t["name"] for t in b["top"]]
        np.testing.assert_allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], rtol=1e-5)
    sizes.clear()
    monkeypatch.setattr(pr, "CHUNK_BYTES", 16 * 16 * 3)  # three decoded 16x16 images fill a chunk
    monkeypatch.setattr(pr, "CHUNK_IMAGES", 64)
    predict(trained, paths)
    assert sizes == [3, 2]


def test_an_unreadable_file_among_many_is_named_and_the_rest_are_scored(trained, tmp_path, cli):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(folder / name), np.full((16, 16), 90, np.uint8))
    (folder / "b.png").write_bytes(b"not an image")
    ck = tmp_path / "final.pt"
    code, out, err = cli("predict", "--checkpoint", ck, folder)
    assert code == 2
    assert [line for line in out.splitlines() if line.endswith(":")] == [f"{folder / 'a.png'}:",
                                                                          f"{folder / 'c.png'}:"]
    lines = err.splitlines()
    assert lines[0] == f"not scored: {folder / 'b.png'}: not an image OpenCV can decode (JPEG, PNG, BMP, TIFF, " \
                       "WebP ...)"
    assert lines[1].startswith("error: 1 of 3 images not scored") and "the other 2 were scored" in lines[1]
    assert len(lines) == 2
    code, out, err = cli("predict", "--checkpoint", ck, folder, "--json")
    assert code == 2
    got = json.loads(out)
    assert [g["image"] for g in got] == [str(folder / n) for n in ("a.png", "b.png", "c.png")]
    assert "top" in got[0] and "top" in got[2] and got[1]["error"].startswith("not an image")
