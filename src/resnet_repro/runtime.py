"""Run-time choices made from the hardware: device, precision (and its autocast), memory format, recipe profile.

Each choice is a pure function of detected facts (`Hardware`), never of a timing, so one machine always makes
the same choice, a resumed run makes the one its first part made, and tests fake the facts to cover every branch.
`resnet-repro env` prints the facts and the choices; `train` logs the choices with their reasons.

Why precision depends on the machine: bf16 autocast is fast only where the hardware computes in bf16.
- CPU: AVX-512 BF16 or AMX. Without them (AVX2-only CPUs: most laptops, many servers) oneDNN emulates bf16
  and a ResNet step runs ~17x slower than fp32 (measured on a 2-core AMD EPYC, AVX2: 18.5 vs 325 img/s).
- CUDA: compute capability >= 8.0 (A100, H100, RTX 30xx+). 7.x (V100, T4, RTX 20xx) has fast fp16 but no bf16:
  fp16 autocast with a GradScaler. Below 7.0 (P100, the reference recipe's Titan XP, 6.1): fp32; TF32 only
  exists from 8.0 on, so there is nothing to switch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
from dataclasses import dataclass, field

import torch

from .data.cores import available_cpus

# oneDNN's ISA names in increasing order (ONEDNN_MAX_CPU_ISA caps the convolutions' kernels at one of them).
# bf16 arithmetic in hardware starts at AVX512_CORE_BF16.
_ONEDNN_ISAS = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT"]


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_gb: float


@dataclass(frozen=True)
class Hardware:
    """The facts the choices depend on. `detect()` reads them; tests build them by hand."""

    cpu_model: str = ""
    cpu_capability: str = "DEFAULT"  # torch's ATen dispatch level (ATEN_CPU_CAPABILITY caps it): AVX2, AVX512, ...
    cpu_avx512_bf16: bool = False  # in the CPU (cpuid), whatever the dispatchers are allowed to use
    cpu_amx: bool = False
    onednn_max_isa: str = ""  # ONEDNN_MAX_CPU_ISA, if set
    cores: int = 1  # usable by this process (its affinity mask)
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    @property
    def cpu_native_bf16(self) -> bool:
        """bf16 arithmetic in hardware AND both dispatchers allowed to use it (ATen for the element-wise ops,
        oneDNN for the convolutions). `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 BF16
        machine therefore reads as "no native bf16", the same as an AVX2-only CPU."""
        if not (self.cpu_avx512_bf16 or self.cpu_amx):
            return False
        if not self.cpu_capability.upper().startswith("AVX512"):
            return False
        isa = self.onednn_max_isa.upper()
        if isa and isa in _ONEDNN_ISAS and _ONEDNN_ISAS.index(isa) < _ONEDNN_ISAS.index("AVX512_CORE_BF16"):
            return False
        return True

    @property
    def cpu_class(self) -> str:
        """One phrase for logs and result tables, e.g. "AVX2, no native bf16"."""
        units = [u for u, on in (("AVX-512 BF16", self.cpu_avx512_bf16), ("AMX", self.cpu_amx)) if on]
        if self.cpu_native_bf16:
            return f"{self.cpu_capability}, native bf16 ({' + '.join(units)})"
        if units:
            return f"{self.cpu_capability}, bf16 units ({' + '.join(units)}) switched off by the dispatch caps"
        return f"{self.cpu_capability}, no native bf16"


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux), for logs and benchmark rows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect() -> Hardware:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(p.name, (p.major, p.minor), round(p.total_memory / 2**30, 1)))
    cpu = getattr(torch, "cpu", None)
    return Hardware(
        cpu_model=cpu_model(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_avx512_bf16=bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        cpu_amx=bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        cores=len(available_cpus()),
        gpus=tuple(gpus))


class DeviceError(RuntimeError):
    """A device the machine does not have; the message says what to use instead."""


def device_type(name: str, hw: Hardware) -> str:
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; an explicit 'cuda' without one is an error."""
    kind = name.split(":")[0]
    if kind == "auto":
        return "cuda" if hw.gpus else "cpu"
    if kind == "cuda" and not hw.gpus:
        raise DeviceError(f"config key 'train.device': {name!r}, but this machine has no CUDA GPU that torch can use "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use "
                          "train.device=cpu or auto, or install a CUDA build of torch")
    return kind


def pick_device(name: str, local_rank: int = 0, hw: Hardware | None = None) -> torch.device:
    kind = device_type(name, hw or detect())
    if kind == "cuda":
        index = int(name.split(":")[1]) if ":" in name else local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name if name != "auto" else kind)


@dataclass(frozen=True)
class Choice:
    value: object
    reason: str
    warning: str = ""


def choose_precision(requested: str, kind: str, hw: Hardware, gpu: int = 0) -> Choice:
    """The training precision for `requested` (auto | fp32 | bf16 | fp16) on a device of type `kind`."""
    if kind == "cuda":
        g = hw.gpus[gpu] if gpu < len(hw.gpus) else Gpu("?", (0, 0), 0.0)
        cc = f"{g.name}, compute capability {g.capability[0]}.{g.capability[1]}"
        if requested == "auto":
            if g.capability >= (8, 0):
                return Choice("bf16", f"auto: {cc} computes bf16 natively")
            if g.capability >= (7, 0):
                return Choice("fp16", f"auto: {cc} has fast fp16 but no bf16; fp16 autocast with a GradScaler")
            return Choice("fp32", f"auto: {cc} has neither fast fp16 nor bf16 (TF32 starts at 8.0)")
        warning = ""
        if requested == "bf16" and g.capability < (8, 0):
            warning = (f"precision bf16 pinned on {cc}: bf16 needs compute capability >= 8.0 and is emulated or "
                       "unsupported here; precision auto would use " + ("fp16" if g.capability >= (7, 0) else "fp32"))
        return Choice(requested, f"pinned by the config on {cc}", warning)
    if kind != "cpu":
        return Choice("fp32" if requested == "auto" else requested, f"device type {kind}: no rule, fp32 unless pinned")
    cls = hw.cpu_class
    if requested == "auto":
        if hw.cpu_native_bf16:
            return Choice("bf16", f"auto: CPU {cls}")
        return Choice("fp32", f"auto: CPU {cls}, where bf16 would be emulated (many times slower than fp32)")
    warning = ""
    if requested in ("bf16", "fp16") and not hw.cpu_native_bf16:
        warning = (f"precision {requested} pinned on a CPU without native bf16/fp16 ({cls}): it is emulated and "
                   "many times slower than fp32 (~17x for bf16 on AVX2); precision auto would use fp32")
    return Choice(requested, f"pinned by the config on a CPU ({cls})", warning)


def choose_channels_last(setting: str, kind: str) -> Choice:
    """NHWC on GPUs (tensor cores want it); NCHW on CPUs, where oneDNN's NCHW kernels ran ResNet-20 fp32 faster
    (2-core AMD EPYC, AVX2: 473 vs 395 img/s at batch 128, 28x28; `resnet-repro bench train` with and without
    --no-channels-last)."""
    if setting in ("true", "false"):
        return Choice(setting == "true", "pinned by the config")
    if kind == "cuda":
        return Choice(True, "auto: channels_last on a GPU")
    return Choice(False, "auto: NCHW on a CPU (oneDNN's NCHW kernels measured faster for these nets)")


def profile_for(kind: str, hw: Hardware) -> Choice:
    """The recipe profile for this machine class (a recipe's `profiles:` section; see config.py): 'cuda', 'cpu_bf16'
    (native bf16), or 'cpu'. From the hardware only, so a pinned precision never changes the training budget."""
    if kind == "cuda":
        return Choice("cuda", "a CUDA GPU")
    if hw.cpu_native_bf16:
        return Choice("cpu_bf16", f"a CPU with native bf16 ({hw.cpu_class})")
    return Choice("cpu", f"a CPU without native bf16 ({hw.cpu_class})")


def autocast_for(precision: str, device: torch.device):
    """A zero-argument context factory for a resolved precision ('auto' is resolved here for callers that
    only have a device, such as evaluating a checkpoint: bf16 on CUDA >= 8.0 or native-bf16 CPUs, ...)."""
    if precision == "auto":
        precision = choose_precision("auto", device.type, detect(), device.index or 0).value
    if precision == "fp32":
        return contextlib.nullcontext, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), precision


def as_dict(hw: Hardware) -> dict:
    d = dataclasses.asdict(hw)
    d["cpu_native_bf16"] = hw.cpu_native_bf16
    d["cpu_class"] = hw.cpu_class
    return d
