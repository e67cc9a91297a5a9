"""Weights out of a run: safetensors (plain tensors + string metadata, loadable without pickle)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file


def save_safetensors(model: nn.Module, path: Path, metadata: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)
    return path
