"""export: safetensors and ONNX files that reproduce the PyTorch model, with the metadata to feed them."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from resnet_repro import checkpoint
from resnet_repro.config import Config
from resnet_repro.evaluate import load_trained
from resnet_repro.export import ExportError, check_onnx, export_onnx, export_trained
from resnet_repro.models.resnet import build_model

CLASSES = ["0", "1", "2", "3"]
NAMES = ["stripes", "bars", "checks", "flat"]


def fake_run_checkpoint(path, data_path, seed=0):
    """A final.pt as training/finish.py writes it, for a randomly initialized ResNet-20 on 1-channel 16x16 images."""
    torch.manual_seed(seed)
    model = build_model("resnet20", len(CLASSES), 1)
    # Non-trivial BN statistics, so that eval-mode BN matters to the comparisons.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    cfg = Config()
    cfg.model.name = "resnet20"
    cfg.data.path = str(data_path)
    cfg.data.mean, cfg.data.std = [0.5], [0.25]
    checkpoint.save_file(path, {"model": model.state_dict(), "config": cfg.to_dict(), "classes": CLASSES,
                                "class_names": NAMES, "in_channels": 1, "epoch": 1, "step": 0, "version": "test"})
    return path


@pytest.fixture
def trained(tmp_path, texture_data):
    return load_trained(fake_run_checkpoint(tmp_path / "final.pt", texture_data))


def test_safetensors_round_trip_with_metadata(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "m.safetensors"
    export_trained(trained, "safetensors", out)
    model = build_model("resnet20", 4, 1).eval()
    model.load_state_dict(load_file(str(out)))
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.model(x))
    with safe_open(str(out), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["class_names"] == NAMES and meta["mean"] == [0.5] and meta["std"] == [0.25]
    assert meta["input_size"] == 16 and meta["in_channels"] == 1


def test_onnx_matches_pytorch_and_a_wrong_model_is_caught(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    info = export_trained(trained, "onnx", out)
    assert info["check"]["max_abs_diff"] < 1e-3
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["classes"] == CLASSES and meta["model"] == "resnet20"
    other = build_model("resnet20", 4, 1).eval()  # different random weights
    with pytest.raises(ExportError, match="onnxruntime and PyTorch differ"):
        check_onnx(out, other, 1, 16)


def test_onnx_without_the_package_says_what_to_install(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    # The project's own extra (README), not a PyPI name this project is not published under.
    with pytest.raises(ExportError, match=r"pip install onnx onnxruntime \(or, in the project folder, pip install "
                                          r"'\.\[onnx\]'\)"):
        export_onnx(trained.model, tmp_path / "m.onnx", 1, 16)
    assert not (tmp_path / "m.onnx").exists()
    # Through the command's path: refused before --out's folder is made, so nothing is left behind.
    with pytest.raises(ExportError, match="needs the onnx package"):
        export_trained(trained, "onnx", tmp_path / "new" / "m.onnx")
    assert not (tmp_path / "new").exists()


def test_export_cli(cli, tmp_path, texture_data):
    ck = fake_run_checkpoint(tmp_path / "final.pt", texture_data)
    code, out, err = cli("export", ck, "--format", "safetensors", "--out", tmp_path / "x" / "m.safetensors")
    assert code == 0, err
    assert "wrote" in out and (tmp_path / "x" / "m.safetensors").is_file()
    code, out, err = cli("export", ck, "--weights", "ema", "--out", tmp_path / "e.safetensors")
    assert code == 2 and "holds no EMA weights" in err
    code, out, err = cli("export", tmp_path / "missing.pt", "--out", tmp_path / "m2.safetensors")
    assert code == 2 and "missing.pt" in err


def test_an_onnx_file_that_fails_its_check_is_not_left_behind(trained, tmp_path, monkeypatch):
    """The check runs after the file is in place: a file that failed it must not stay looking like an export."""
    import types

    from resnet_repro import export

    out = tmp_path / "m.onnx"
    monkeypatch.setattr(export, "_onnx", lambda: types.ModuleType("onnx"))
    monkeypatch.setattr(export, "export_onnx", lambda model, path, *a: path.write_bytes(b"graph") and path)
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))

    def differs(*args, **kwargs):
        raise ExportError(f"{out}: onnxruntime and PyTorch differ by 1.0e+00")

    monkeypatch.setattr(export, "check_onnx", differs)
    with pytest.raises(ExportError, match="differ"):
        export_trained(trained, "onnx", out)
    assert not out.exists()
