"""`resnet-repro env`: what this machine is, and what a run of a recipe would choose on it.

The first thing to look at when a run is slower than expected or a figure must name its machine: the CPU
class decides the precision (runtime.py), /dev/shm bounds the loader's shared memory, the native JPEG helper
decides how fast crops decode.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from . import runtime
from .config import Config


def _meminfo() -> dict:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                out[key] = round(int(value.split()[0]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError):
        pass
    return {"total_gb": out.get("MemTotal"), "available_gb": out.get("MemAvailable")}


def _shm_gb() -> float | None:
    try:
        return round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
    except OSError:
        return None


def _versions() -> dict:
    import cv2
    import numpy as np

    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:
        tv = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn, "torchvision": tv,
            "opencv": cv2.__version__, "numpy": np.__version__, "threads": torch.get_num_threads()}


def report(cfg: Config | None, recipe: str | None, hw: runtime.Hardware | None = None) -> dict:
    """Facts and choices as one JSON-able dict (`env --json` prints it as it is); the machine alone without a
    recipe (`cfg` None)."""
    from .data.decode import jpeg_region

    hw = hw or runtime.detect()
    region = jpeg_region.available()
    machine = {
        "hardware": runtime.as_dict(hw),
        "memory": _meminfo(),
        "dev_shm_gb": _shm_gb(),
        "cpu_count": os.cpu_count(),
        "torch": _versions(),
        "native_jpeg_helper": {"built": region, "why_not": "" if region else jpeg_region.unavailable_reason()},
    }
    return machine if cfg is None else {**machine, "recipe": recipe, "choices": _choices(cfg, recipe, hw)}


def _choices(cfg: Config, recipe: str, hw: runtime.Hardware) -> dict:
    from .data.augment.geometry import whole_image_reason

    kind = runtime.device_type(cfg.train.device, hw)
    precision = runtime.choose_precision(cfg.train.precision, kind, hw)
    channels_last = runtime.choose_channels_last(cfg.train.channels_last, kind, precision.value)
    profile = runtime.profile_for(kind, hw)
    whole = whole_image_reason(cfg.data)
    decoder = {"value": cfg.data.decode,
               "reason": ("GPU: nvJPEG through torchvision" if cfg.data.decode == "gpu" else
                          "CPU workers: " + (f"OpenCV whole-image decode ({whole})" if whole else
                                             "libjpeg-turbo region decode (native helper built)"))}
    if cfg.data.decode == "gpu":
        from .data.loading.gpu_decode import refusals

        why = refusals(cfg.data, kind)  # train's own rule, less the data's channel count (env reads no data)
        if why:
            decoder["warning"] = f"data.decode=gpu {'; '.join(why)}: train refuses it (use data.decode=cpu)"
    workers = {"value": cfg.data.workers, "reason": f"data.workers of {recipe}; {hw.cores} usable core(s)"}
    return {
        "device": {"value": kind, "reason": f"train.device={cfg.train.device}"},
        "precision": {"value": precision.value, "reason": precision.reason, "warning": precision.warning},
        "profile": {"value": cfg.train.profile, "reason": profile.reason if cfg.train.profile == profile.value
                    else "pinned by the config"},
        "channels_last": {"value": channels_last.value, "reason": channels_last.reason},
        "loader_workers": workers,
        "decoder": decoder,
    }


def format_text(r: dict) -> str:
    hw, t = r["hardware"], r["torch"]
    gpus = "; ".join(f"{g['name']} (compute capability {g['capability'][0]}.{g['capability'][1]}, "
                     f"{g['memory_gb']} GB)" for g in hw["gpus"]) or "none"
    lines = [
        f"cpu          {hw['cpu_model']}: {hw['cpu_class']}",
        f"             torch dispatch {hw['cpu_capability']}; AVX-512 BF16 {'yes' if hw['cpu_avx512_bf16'] else 'no'}; "
        f"AMX {'yes' if hw['cpu_amx'] else 'no'}" + (f"; ONEDNN_MAX_CPU_ISA={hw['onednn_max_isa']}"
                                                    if hw["onednn_max_isa"] else ""),
        f"cores        {hw['cores']} usable ({r['cpu_count']} in the machine); torch threads {t['threads']}",
        f"memory       {r['memory']['total_gb']} GiB ({r['memory']['available_gb']} GiB available); "
        f"/dev/shm {r['dev_shm_gb']} GiB",
        f"torch        {t['version']}; CUDA {t['cuda'] or 'none (CPU build)'}; cuDNN {t['cudnn'] or 'none'}; "
        f"torchvision {t['torchvision'] or 'not installed'}; OpenCV {t['opencv']}",
        f"gpus         {gpus}",
        f"jpeg helper  {'built' if r['native_jpeg_helper']['built'] else 'not built: ' + r['native_jpeg_helper']['why_not']}",
    ]
    if "choices" not in r:  # the machine alone: no recipe given
        return "\n".join(lines)
    c = r["choices"]
    lines.append(f"a run of {r['recipe']} would use:")
    for key in ("device", "precision", "profile", "channels_last", "loader_workers", "decoder"):
        lines.append(f"  {key:<13} {c[key]['value']}  ({c[key]['reason']})")
        if c[key].get("warning"):
            lines.append(f"  warning: {c[key]['warning']}")
    return "\n".join(lines)
