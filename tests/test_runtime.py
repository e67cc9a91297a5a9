"""Run-time choices from faked hardware (runtime.py), recipe profiles (recipe.py), the ranks' meeting and stop
requests (stopping.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import FASHION_MNIST_RECIPE as RECIPE
from conftest import REPO
from resnet_repro import runtime, stopping
from resnet_repro.config import ConfigError
from resnet_repro.runtime import Gpu, Hardware

AVX2 = Hardware(cpu_model="AMD EPYC", cpu_capability="AVX2", cores=2)
SPR = Hardware(cpu_model="Intel Xeon Platinum 8480", cpu_capability="AVX512", cpu_avx512_bf16=True, cpu_amx=True,
               cores=2)
SKX = Hardware(cpu_model="Intel Xeon Gold 6148", cpu_capability="AVX512", cores=2)  # AVX-512 without BF16
SPR_AS_AVX2 = Hardware(cpu_model="Intel Xeon Platinum 8480", cpu_capability="AVX2", cpu_avx512_bf16=True,
                       cpu_amx=True, onednn_max_isa="AVX2", cores=2)


def gpu(cc: tuple[int, int], name="GPU") -> Hardware:
    return Hardware(cpu_capability="AVX2", gpus=(Gpu(name, cc, 16.0),))


@pytest.mark.parametrize("hw", [AVX2, SKX, SPR_AS_AVX2,
                                Hardware(cpu_capability="AVX2", cpu_avx512_bf16=True),  # ATen capped only
                                Hardware(cpu_capability="AVX512", cpu_avx512_bf16=True, onednn_max_isa="AVX512_CORE")])
def test_cpu_without_native_bf16_never_gets_bf16(hw):
    choice = runtime.choose_precision("auto", "cpu", hw)
    assert choice.value == "fp32" and "emulated" in choice.reason and not choice.warning
    assert not hw.cpu_native_bf16
    assert runtime.profile_for("cpu", hw).value == "cpu"


def test_cpu_with_native_bf16_gets_bf16_and_its_profile():
    for hw in (SPR, Hardware(cpu_capability="AVX512", cpu_avx512_bf16=True),
               Hardware(cpu_capability="AVX512", cpu_amx=True, onednn_max_isa="AVX512_CORE_AMX")):
        assert runtime.choose_precision("auto", "cpu", hw).value == "bf16"
        assert runtime.profile_for("cpu", hw).value == "cpu_bf16"


def test_pinned_bf16_on_a_cpu_without_native_bf16_warns():
    choice = runtime.choose_precision("bf16", "cpu", AVX2)
    assert choice.value == "bf16" and "emulated" in choice.warning and "fp32" in choice.warning
    assert not runtime.choose_precision("bf16", "cpu", SPR).warning
    assert runtime.choose_precision("fp32", "cpu", SPR).value == "fp32"


@pytest.mark.parametrize("cc, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"),
                                          ((7, 0), "fp16"), ((6, 1), "fp32"), ((3, 7), "fp32")])
def test_cuda_precision_follows_compute_capability(cc, expected):
    choice = runtime.choose_precision("auto", "cuda", gpu(cc))
    assert choice.value == expected and f"{cc[0]}.{cc[1]}" in choice.reason
    assert runtime.profile_for("cuda", gpu(cc)).value == "cuda"


def test_fp16_on_a_7x_gpu_gets_a_grad_scaler_in_training():
    # training/setup.py enables the GradScaler exactly when the precision is fp16; the choice on V100/T4 is fp16.
    assert runtime.choose_precision("auto", "cuda", gpu((7, 0), "Tesla V100")).value == "fp16"
    src = (REPO / "src" / "resnet_repro" / "training" / "setup.py").read_text()
    assert 'torch.amp.GradScaler(device.type, enabled=precision == "fp16")' in src


def test_pinned_bf16_on_an_old_gpu_warns():
    assert "8.0" in runtime.choose_precision("bf16", "cuda", gpu((7, 0))).warning
    assert not runtime.choose_precision("bf16", "cuda", gpu((8, 0))).warning


def test_cuda_without_a_gpu_is_an_error_naming_the_key():
    with pytest.raises(runtime.DeviceError, match="train.device"):
        runtime.device_type("cuda", AVX2)
    assert runtime.device_type("auto", AVX2) == "cpu"
    assert runtime.device_type("auto", gpu((8, 0))) == "cuda"


@pytest.mark.parametrize("precision, hw, expected", [
    ("auto", runtime.Hardware(cpu_capability="AVX512", cpu_avx512_bf16=True, cores=2), ("bf16", "true")),
    ("fp32", runtime.Hardware(cpu_capability="AVX512", cpu_avx512_bf16=True, cores=2), ("fp32", "false")),
    ("auto", runtime.Hardware(cpu_capability="AVX2", cores=2), ("fp32", "false"))])
def test_settle_chooses_the_memory_format_from_the_settled_precision(precision, hw, expected):
    asked = {"train.device": "cpu", "train.precision": precision, "train.channels_last": "auto",
             "train.profile": "auto", "data.workers": 1}
    s = runtime.settle(asked, None, hw, lambda kind: 1)
    assert (s.values["train.precision"], s.values["train.channels_last"]) == expected


def test_channels_last_auto_is_nhwc_on_gpu_and_for_cpu_bf16_and_nchw_for_cpu_fp32():
    assert runtime.choose_channels_last("auto", "cpu", "fp32").value is False
    assert runtime.choose_channels_last("auto", "cpu", "bf16").value is True
    assert runtime.choose_channels_last("auto", "cuda", "fp32").value is True
    assert runtime.choose_channels_last("false", "cpu", "bf16").value is False
    assert runtime.choose_channels_last("true", "cpu", "fp32").value is True
    assert runtime.choose_channels_last("false", "cuda", "bf16").value is False


@pytest.mark.hardware
def test_detect_reads_this_machine(monkeypatch):
    monkeypatch.delenv(runtime.FAKE_ENV, raising=False)
    hw = runtime.detect()
    assert hw.cores >= 1 and hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert runtime.as_dict(hw)["cpu_class"] == hw.cpu_class


@pytest.mark.hardware
def test_restricting_the_dispatchers_reads_as_no_native_bf16():
    code = "from resnet_repro import runtime; h = runtime.detect(); print(h.cpu_capability, h.cpu_native_bf16)"
    env = {**{k: v for k, v in os.environ.items() if k != runtime.FAKE_ENV}, "ATEN_CPU_CAPABILITY": "avx2",
           "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "False"]


# --- recipe profiles -------------------------------------------------------------------------------------------

PROFILED = """\
data: {batch_size: 32}
train: {epochs: 10}
profiles:
  cpu: {train: {epochs: 3}}
  cpu_bf16: {train: {epochs: 7}, data: {batch_size: 64}}
  cuda: {train: {epochs: 9}}
"""


def test_profile_is_chosen_from_the_hardware_and_recorded(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PROFILED)
    cfg = runtime.load_recipe(recipe, hardware=AVX2)
    assert (cfg.train.profile, cfg.train.epochs, cfg.data.batch_size) == ("cpu", 3, 32)
    cfg = runtime.load_recipe(recipe, hardware=SPR)
    assert (cfg.train.profile, cfg.train.epochs, cfg.data.batch_size) == ("cpu_bf16", 7, 64)
    cfg = runtime.load_recipe(recipe, hardware=gpu((8, 0)))
    assert (cfg.train.profile, cfg.train.epochs) == ("cuda", 9)
    # --set wins over the profile; a pinned profile wins over the hardware.
    cfg = runtime.load_recipe(recipe, ["train.epochs=4"], hardware=SPR)
    assert (cfg.train.profile, cfg.train.epochs) == ("cpu_bf16", 4)
    cfg = runtime.load_recipe(recipe, ["train.profile=cpu_bf16"], hardware=AVX2)
    assert (cfg.train.profile, cfg.train.epochs) == ("cpu_bf16", 7)
    # The resolved config names the profile and holds its values: saved as config.yaml, it loads the same anywhere.
    saved = tmp_path / "config.yaml"
    from resnet_repro.recipe import save_config

    save_config(runtime.load_recipe(recipe, hardware=AVX2), saved)
    again = runtime.load_recipe(saved, hardware=SPR)
    assert (again.train.profile, again.train.epochs) == ("cpu", 3)


def test_unknown_profile_is_an_error_listing_the_profiles(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PROFILED)
    with pytest.raises(ConfigError, match="'laptop' is not a profile.*cpu, cpu_bf16, cuda"):
        runtime.load_recipe(recipe, ["train.profile=laptop"], hardware=AVX2)


def test_default_recipe_profiles_are_complete():
    path = REPO / "configs" / "fashion_mnist" / "resnet20.yaml"
    for hw, name in ((AVX2, "cpu"), (SPR, "cpu_bf16"), (gpu((8, 0)), "cuda")):
        cfg = runtime.load_recipe(path, hardware=hw)
        assert cfg.train.profile == name and cfg.train.precision == "auto"


# --- stopping ----------------------------------------------------------------------------------------------------

def test_one_process_meets_after_every_step_and_reads_the_loss_only_at_log_steps():
    m = stopping.RankMeeting(1, torch.device("cpu"), log_interval=100)
    loss = torch.tensor(0.5)
    assert m(1, loss, False, False, False, True) == (None, False, False)
    assert m(2, loss, True, False, False, True) == (None, True, False)
    assert m(3, loss, False, True, True, True) == (0.5, False, True)


def test_ranks_meet_about_every_two_seconds_whatever_the_log_interval(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(stopping.time, "time", lambda: clock[0])
    m = stopping.RankMeeting(2, torch.device("cpu"), log_interval=1000)  # world 2, no process group: rank 0's view
    loss = torch.tensor(1.0)
    met = []
    for step in range(1, 30):
        clock[0] += 0.25  # a 0.25 s step: meetings every 8 steps after the first
        out = m(step, loss, step >= 20, False, False, True)
        if out is not None:
            met.append((step, out[1]))
    assert met[0] == (1, False) and [s for s, _ in met[1:]] == [8, 16, 24]
    assert met[-1] == (24, True)  # a stop asked at step 20 acts at step 24: 1 s later, not at the log step 1000
    assert m.period == 8


def test_a_second_ctrl_c_interrupts_at_once_and_restore_gives_the_signals_back():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        stop = stopping.StopRequest()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        stop.restore()
        assert {s: signal.getsignal(s) for s in old} == old
    finally:
        for s, h in old.items():
            signal.signal(s, h)


SPR_FAKE = json.dumps({"cpu_model": "faked Xeon", "cpu_capability": "AVX512", "cpu_avx512_bf16": True,
                       "cpu_amx": True, "onednn_max_isa": "", "gpus": []})
AVX2_FAKE = json.dumps({"cpu_model": "faked EPYC", "cpu_capability": "AVX2", "cpu_avx512_bf16": False,
                        "cpu_amx": False, "onednn_max_isa": "", "gpus": []})


@pytest.mark.parametrize("fake, precision, profile", [(SPR_FAKE, "bf16", "cpu_bf16"), (AVX2_FAKE, "fp32", "cpu")])
def test_env_command_prints_facts_and_choices(fake, precision, profile):
    # Each CPU class faked (runtime.FAKE_ENV), so the expectation is the branch's, not this host's.
    env = {**os.environ, runtime.FAKE_ENV: fake}
    out = subprocess.run([sys.executable, "-m", "resnet_repro", "env", "--json", "--config", RECIPE],
                         capture_output=True, text=True, check=True, cwd=REPO, env=env).stdout
    facts = json.loads(out)
    assert facts["hardware"]["cpu_model"].startswith("faked") and facts["torch"]["version"] == torch.__version__
    choice = facts["choices"]
    assert choice["precision"]["value"] == precision and choice["precision"]["reason"]
    assert choice["profile"]["value"] == profile
    assert {"loader_workers", "decoder", "channels_last"} <= set(choice)
    assert choice["channels_last"]["value"] is (precision == "bf16")  # NHWC for bf16 on a CPU, NCHW for fp32
    # The default recipe's 28x28 PNGs are cropped after a whole decode: no region decode, whatever the helper.
    assert "whole-image decode (data.crop=pad_crop" in choice["decoder"]["reason"]
    text = subprocess.run([sys.executable, "-m", "resnet_repro", "env", "--config", RECIPE], capture_output=True,
                          text=True, check=True, cwd=REPO, env=env).stdout
    assert f"precision     {precision}" in text and "faked" in text


@pytest.mark.hardware
def test_env_command_reads_this_machine(monkeypatch):
    monkeypatch.delenv(runtime.FAKE_ENV, raising=False)
    out = subprocess.run([sys.executable, "-m", "resnet_repro", "env", "--json"], capture_output=True, text=True,
                         check=True, cwd=REPO, env={k: v for k, v in os.environ.items() if k != runtime.FAKE_ENV}).stdout
    assert json.loads(out)["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_bad_fake_is_one_line(cli, monkeypatch):
    monkeypatch.setenv(runtime.FAKE_ENV, '{"cpu_speed": 9}')
    code, _, err = cli("env")
    assert code == 2 and err.count("\n") == 1 and runtime.FAKE_ENV in err and "cpu_speed" not in err.split(";")[-1]
