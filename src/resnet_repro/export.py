"""Weights out of a run: safetensors (plain tensors + string metadata, loadable without pickle) and ONNX.

Both carry what a user needs to feed the model and read its answer: model name, class ids and names,
input channels and size, and the normalization (``normalize``, ``mean``, ``std`` in [0, 1] pixel units:
input = (pixel / 255 - mean) / std, NCHW). The ONNX graph takes any batch size and image size (the nets are
fully convolutional up to the global average pool) and is checked against PyTorch on a batch when
onnxruntime is installed (``pip install onnx onnxruntime``, or ``pip install '.[onnx]'`` in the project folder).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from . import atomic

ONNX_OPSET = 17  # opset 17 (ONNX 1.12, 2022): supported by every onnxruntime since 1.13


class ExportError(RuntimeError):
    """An export that cannot be written or does not match the PyTorch model; the message names the file."""


def save_safetensors(model: nn.Module, path: Path, metadata: dict) -> Path:
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        with atomic.replacing(path) as tmp:
            save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    except Exception as e:  # OSError, or safetensors' own error type for a failed write (disk full)
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200]
        raise ExportError(f"cannot write {path} ({reason}); nothing was replaced: free space or choose a writable "
                          "location") from None
    return path


def model_metadata(trained) -> dict:
    """What a consumer of the exported weights needs besides the tensors (evaluate.Trained -> plain values)."""
    d = trained.cfg.data
    size = d.val_size or trained.image_size
    mean, std = {"scale": ([0.0], [1.0]), "scale_pm1": ([0.5], [0.5])}.get(d.normalize, (d.mean, d.std))
    if len(mean) == 1:
        mean, std = mean * trained.in_channels, std * trained.in_channels
    return {"model": trained.cfg.model.name, "width": trained.cfg.model.width,
            "stride_in_3x3": trained.cfg.model.stride_in_3x3,
            "classes": trained.classes, "class_names": trained.class_names, "in_channels": trained.in_channels,
            "input_size": size, "resize_shorter_side": d.val_resize, "mean": list(mean), "std": list(std),
            "layout": "NCHW float32, (pixel / 255 - mean) / std", "source": trained.source}


def _onnx():
    """The onnx package, or the error that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install onnx onnxruntime (or, in the project "
                          "folder, pip install '.[onnx]')") from None
    return onnx


def export_onnx(model: nn.Module, path: Path, in_channels: int, size: int, metadata: dict | None = None) -> Path:
    """Write `model` as ONNX (input "images" [N, C, H, W], output "logits" [N, classes]; N, H and W free)."""
    onnx = _onnx()
    path = Path(path)
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, in_channels, size, size)
    with atomic.replacing(path) as tmp:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated in favour of torch.export (which needs onnxscript);
            # it is what every torch since 1.x has, and its output is checked against PyTorch below.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
        proto = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def check_onnx(path: Path, model: nn.Module, in_channels: int, size: int, batch: int = 4,
               atol: float = 1e-3) -> dict:
    """Run the ONNX file with onnxruntime and the PyTorch model on the same random batch, at the export size and
    at a larger, non-square one; raise ExportError if any logit differs by more than `atol`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.eval().cpu()
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in ((size, size), (size + size // 2, size * 2)):
        x = torch.randn(batch, in_channels, h, w, generator=g)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        diff = float(abs(got - want).max())
        worst = max(worst, diff)
        if diff > atol or (got.argmax(1) != want.argmax(1)).any():
            raise ExportError(f"{path}: onnxruntime and PyTorch differ by {diff:.2e} (> {atol:g}) on a "
                              f"{batch}x{in_channels}x{h}x{w} batch")
    return {"onnxruntime": ort.__version__, "max_abs_diff": worst, "batch": batch}


def export_trained(trained, fmt: str, out: Path, check: bool = True) -> dict:
    """`resnet-repro export`: an evaluate.Trained -> `out` as safetensors or ONNX; returns what was written."""
    out = Path(out)
    if fmt not in ("safetensors", "onnx"):
        raise ExportError(f"unknown export format {fmt!r}; use safetensors or onnx")
    meta = model_metadata(trained)
    if fmt == "onnx":  # what can refuse the export does so before --out's folder is made
        size = trained.input_size("an ONNX export")  # the example input's side (H and W stay free in the graph)
        _onnx()
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_safetensors(trained.model, out, meta)
        return {"format": fmt, "out": str(out), "bytes": out.stat().st_size}
    export_onnx(trained.model, out, trained.in_channels, size, meta)
    info = {"format": fmt, "out": str(out), "bytes": out.stat().st_size, "opset": ONNX_OPSET}
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            info["check"] = "skipped: onnxruntime is not installed (pip install onnxruntime)"
        else:
            try:
                info["check"] = check_onnx(out, trained.model, trained.in_channels, size)
            except ExportError:
                out.unlink(missing_ok=True)  # a file that failed its check must not stay looking like an export
                raise
    return info
