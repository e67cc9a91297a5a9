"""The machine a benchmark's figures come from: every bench prints it first and stores it with its JSON.

A throughput figure without its machine cannot be compared (airbench records its hardware with each result).
What decides our figures: the CPU model and its ISA class (runtime.py: whether bf16 runs natively), the cores this
process may use (data/loading/cores.py: its affinity mask, which a container or taskset narrows below the
machine's count), and the GPUs torch sees, with their compute capability.
"""
from __future__ import annotations

import os

from .. import runtime


def describe(hw: runtime.Hardware | None = None) -> dict:
    """The facts, JSON-able; `hw`: runtime.detect()'s, when the caller has them already."""
    hw = hw or runtime.detect()
    gpus = [{"name": g.name, "capability": f"{g.capability[0]}.{g.capability[1]}", "memory_gb": g.memory_gb}
            for g in hw.gpus]
    return {"cpu": hw.cpu_model, "cpu_class": hw.cpu_class, "cores": os.cpu_count(), "usable_cores": hw.cores,
            "gpus": gpus}


def line(info: dict) -> str:
    """One log line from `describe()`'s facts."""
    kinds: dict[str, int] = {}
    for g in info["gpus"]:
        what = f"{g['name']} (compute capability {g['capability']}, {g['memory_gb']} GiB)"
        kinds[what] = kinds.get(what, 0) + 1
    gpus = ", ".join(f"{n} x {what}" if n > 1 else what for what, n in kinds.items()) or "no CUDA GPU"
    return (f"machine: {info['cpu']} ({info['cpu_class']}), {info['cores']} CPU cores ({info['usable_cores']} "
            f"usable); {gpus}")
