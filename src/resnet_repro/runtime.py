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
import json
import os
import platform
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .data.loading.cores import available_cpus

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


# Tests only: JSON of Hardware fields that replace the detected ones, e.g.
# {"cpu_capability": "AVX512", "cpu_avx512_bf16": true, "cpu_amx": true} makes an AVX2 machine choose as an AVX-512
# BF16 one (its bf16 is then emulated: slow, but the same numbers). .ci/run uses it to run the hardware-dependent
# tests as the other CPU class. Never set it for a real run: config.yaml would record facts this machine lacks.
FAKE_ENV = "RESNET_REPRO_FAKE_HARDWARE"


def detect(gpus: bool = True) -> Hardware:
    """This machine's facts. `gpus=False` (a run whose recipe says device cpu) asks torch only how many GPUs there
    are, which opens no CUDA context: reading their properties would, and a CPU run would then carry (and
    checkpoint) every GPU's RNG state."""
    found = []
    if gpus and torch.cuda.device_count():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append(Gpu(p.name, (p.major, p.minor), round(p.total_memory / 2**30, 1)))
    cpu = getattr(torch, "cpu", None)
    hw = Hardware(
        cpu_model=cpu_model(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_avx512_bf16=bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        cpu_amx=bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        cores=len(available_cpus()),
        gpus=tuple(found))
    return _faked(hw)


def _faked(hw: Hardware) -> Hardware:
    """`hw` with the fields RESNET_REPRO_FAKE_HARDWARE gives (see FAKE_ENV) replaced."""
    text = os.environ.get(FAKE_ENV, "").strip()
    if not text:
        return hw
    try:
        fake = json.loads(text)
        names = {f.name for f in dataclasses.fields(Hardware)}
        if not isinstance(fake, dict) or not set(fake) <= names:
            raise ValueError(f"keys must be among {', '.join(sorted(names))}")
        if "gpus" in fake:
            fake["gpus"] = tuple(Gpu(g["name"], tuple(g["capability"]), float(g.get("memory_gb", 0))) for g in fake["gpus"])
        return dataclasses.replace(hw, **fake)
    except (ValueError, TypeError, KeyError) as e:
        raise DeviceError(f"{FAKE_ENV}={text!r}: not a JSON object of Hardware fields ({e}); unset it") from None


def wants_gpus(device: str) -> bool:
    """Whether a run with train.device `device` may use a GPU (and so may read the GPUs' properties)."""
    return not device.startswith("cpu")


class DeviceError(RuntimeError):
    """A device the machine does not have; the message says what to use instead."""


def device_type(name: str, hw: Hardware) -> str:
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; an explicit 'cuda' without one is an error, and so is a
    name that is none of auto, cpu, cuda, cuda:N (torch.device would raise its own error later, naming neither the
    key nor what to give)."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise DeviceError(f"device {name!r} (config key 'train.device', or --device): give auto, cpu, cuda or "
                          "cuda:N")
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


def choose_channels_last(setting: str, kind: str, precision: str) -> Choice:
    """The memory format for a device of type `kind` computing in `precision` (resolved, never auto). NHWC on GPUs
    (tensor cores want it) and on CPUs computing in bf16, where oneDNN's AMX / AVX-512 BF16 kernels ran ResNet-20
    faster in NHWC (AVX-512 BF16 + AMX Xeon, 2 cores, batch 128: 1,730 vs 1,453 img/s at 28x28, 2,473 vs 1,857 at
    24, 4,640 vs 3,815 at 16). NCHW for fp32 on CPUs, where oneDNN's NCHW kernels ran ResNet-20 faster on the AVX2
    class (2-core AMD EPYC: 473 vs 395 img/s at 28x28). All from `resnet-repro bench train --model resnet20
    --batch-size 128 --synthetic` with --channels-last / --no-channels-last."""
    if setting in ("true", "false"):
        return Choice(setting == "true", "pinned by the config")
    if kind == "cuda":
        return Choice(True, "auto: channels_last on a GPU")
    if kind == "cpu" and precision == "bf16":
        return Choice(True, "auto: channels_last for bf16 on a CPU (oneDNN's bf16 kernels measured faster in NHWC)")
    return Choice(False, f"auto: NCHW for {precision} on a CPU (oneDNN's NCHW kernels measured faster for these nets)")


def profile_for(kind: str, hw: Hardware) -> Choice:
    """The recipe profile for this machine class (a recipe's `profiles:` section; see recipe.py): 'cuda', 'cpu_bf16'
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far, MiB: on a GPU what PyTorch's allocator held (the figure that limits the batch size), on
    a CPU this process's peak resident set (Linux reports KiB; loader workers are processes of their own)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def facts(hw: Hardware) -> dict:
    """The facts a run records next to the choices they made (config.yaml's `chosen_on`, every checkpoint): `env`'s
    CPU model, class and capability, and the GPUs."""
    return {"host": socket.gethostname(), "cpu_model": hw.cpu_model, "cpu_class": hw.cpu_class,
            "cpu_capability": hw.cpu_capability, "cpu_native_bf16": hw.cpu_native_bf16,
            "onednn_max_isa": hw.onednn_max_isa, "cores": hw.cores,
            "gpus": [f"{g.name} (compute capability {g.capability[0]}.{g.capability[1]})" for g in hw.gpus]}


def as_dict(hw: Hardware) -> dict:
    d = dataclasses.asdict(hw)
    d["cpu_native_bf16"] = hw.cpu_native_bf16
    d["cpu_class"] = hw.cpu_class
    return d


# --- The run's hardware-made choices, settled once and recorded ----------------------------------------------

# The config keys whose `auto` the hardware resolves. A run records the resolved values (config.yaml, every
# checkpoint) with the facts that chose them; a resume takes them from the record instead of choosing again.
HARDWARE_KEYS = ("train.device", "train.precision", "train.channels_last", "train.profile", "data.workers")


def load_recipe(path, overrides: list[str] | None = None, hardware: Hardware | None = None,
                recorded_profile: str | None = None):
    """recipe.load_config with the recipe profile chosen here, where the hardware is read: a resumed run's
    `recorded_profile` (the record wins over the machine), else the one for this machine's class (profile_for)."""
    from .recipe import load_config

    def choose(cfg) -> str:
        if recorded_profile not in (None, "", "auto"):
            return recorded_profile
        hw = hardware or detect(gpus=wants_gpus(cfg.train.device))
        return profile_for(device_type(cfg.train.device, hw), hw).value

    return load_config(path, overrides, profile=choose)


def cannot_honour(key: str, value, hw: Hardware, kind: str = "cpu", gpu: int = 0) -> str:
    """Why this machine cannot run `key: value` as a run recorded it ('' when it can): a device it lacks, or a
    precision its hardware does not compute (it would be emulated, many times slower, or not run at all)."""
    if key == "train.device" and str(value).startswith("cuda") and not hw.gpus:
        return "this machine has no CUDA GPU that torch can use"
    if key != "train.precision" or value == "fp32":
        return ""
    if kind == "cuda":
        g = hw.gpus[gpu] if gpu < len(hw.gpus) else Gpu("?", (0, 0), 0.0)
        need = (8, 0) if value == "bf16" else (7, 0)
        if g.capability < need:
            return (f"{g.name} has compute capability {g.capability[0]}.{g.capability[1]}; {value} needs "
                    f"{need[0]}.{need[1]} or more")
        return ""
    if not hw.cpu_native_bf16:
        return f"this CPU ({hw.cpu_class}) would emulate {value}, many times slower than fp32"
    return ""


@dataclass
class Settled:
    """The run's hardware-made choices: `values` (HARDWARE_KEYS -> the value the config holds, never auto), why
    each (`reasons`), the recorded ones this run replaces by a pinned value (`overrides`: key -> {recorded, now}),
    and warnings to log."""
    values: dict
    reasons: dict
    overrides: dict
    warnings: list


def settle(asked: dict, recorded: dict | None, hw: Hardware, workers_auto: Callable[[str], int],
           chosen_on: dict | None = None, gpu: int = 0) -> Settled:
    """The hardware-made choices of a run whose config asks `asked` (HARDWARE_KEYS -> value, maybe auto) on machine
    `hw`. `recorded`: the run's own (a resume): a key the config leaves at auto, or pins to the same value, keeps
    its recorded value, never chosen again; one this machine cannot honour raises DeviceError naming the key and
    the --set that overrides it; a different pinned value is an override (recorded by the caller).
    `workers_auto(device type)`: the loader worker count "auto" gives here (data/loading/cores.py)."""
    recorded = {k: v for k, v in (recorded or {}).items() if k in HARDWARE_KEYS and v not in ("auto", None)}
    where = ""
    if chosen_on:
        where = f" (chosen on {chosen_on.get('host', '?')}: {chosen_on.get('cpu_model', '?')}, " \
                f"{chosen_on.get('cpu_class', '?')}" + (f", {', '.join(chosen_on['gpus'])}" if chosen_on.get('gpus')
                                                        else "") + ")"
    s = Settled({}, {}, {}, [])
    kind = "cpu"
    for key in HARDWARE_KEYS:  # the device first: the other choices depend on its type
        want = asked[key]
        if key in recorded and (want == "auto" or str(want).lower() == str(recorded[key]).lower()):
            value = recorded[key]
            why = cannot_honour(key, value, hw, kind, gpu)
            if why:
                instead = _instead(key, kind, hw, gpu)
                raise DeviceError(f"{key}: this run recorded {value}{where}, but {why}; to go on here with "
                                  f"{instead}, add --set {key}={instead} (the override is recorded in metrics.jsonl)")
            s.values[key], s.reasons[key] = value, f"recorded by the run{where}"
        else:
            if key in recorded:
                s.overrides[key] = {"recorded": recorded[key], "now": want}
            precision = s.values.get("train.precision", "fp32")  # settled before the memory format
            s.values[key], s.reasons[key] = _choose(key, want, kind, hw, workers_auto, gpu, s.warnings, precision)
            if key in recorded:
                s.reasons[key] = f"overrides the recorded {recorded[key]}: {s.reasons[key]}"
        if key == "train.device":
            kind = str(s.values[key]).split(":")[0]
    return s


def _instead(key: str, kind: str, hw: Hardware, gpu: int) -> str:
    if key == "train.device":
        return "cpu"
    return choose_precision("auto", kind, hw, gpu).value


def _choose(key: str, want, kind: str, hw: Hardware, workers_auto, gpu: int, warnings: list,
            precision: str) -> tuple[object, str]:
    """(value, reason) of one hardware-made choice that no record decides (`precision`: the run's, settled before
    the memory format that depends on it)."""
    if key == "train.device":
        kind = device_type(want, hw)  # raises for a CUDA device this machine lacks
        if want != "auto":
            return want, "pinned by the config"
        return kind, "auto: " + ("a CUDA GPU" if hw.gpus else "no CUDA GPU")
    if key == "train.precision":
        c = choose_precision(want, kind, hw, gpu)
        if c.warning:
            warnings.append(c.warning)
        return c.value, c.reason
    if key == "train.channels_last":
        c = choose_channels_last(want, kind, str(precision))
        return ("true" if c.value else "false"), c.reason
    if key == "train.profile":
        # auto is left only by a recipe without profiles: the name then records the machine class only
        machine = profile_for(kind, hw)
        if want in ("auto", machine.value):
            return machine.value, machine.reason
        return want, "pinned by the config"
    if want == "auto":
        return workers_auto(kind), f"auto: from the {hw.cores} usable core(s) (data/loading/cores.py)"
    return want, "pinned by the config"
