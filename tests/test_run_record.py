"""A run's hardware-made choices are part of its record (issue 19): config.yaml and every checkpoint hold the
resolved device, precision, memory format, profile and loader workers with the facts that chose them; a resume
keeps them (or stops, naming the --set that overrides one), refuses a changed recipe value unless
--allow-change names it, and records overrides and changes in metrics.jsonl; `evaluate` uses the recorded
precision; ranks run rank 0's choices; a CPU run never opens a CUDA context to read the GPUs.

Each CPU class is faked (runtime.FAKE_ENV), so every branch runs on any host.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import assert_one_clear_line as one_line
from conftest import tiny_run_recipe, write_image_dataset
from resnet_repro import checkpoint, dist, runtime

pytestmark = pytest.mark.hardware  # bf16 and fp16 steps run on this CPU's kernels: .ci/run checks both classes

SPR = json.dumps({"cpu_model": "faked Xeon (AVX-512 BF16)", "cpu_capability": "AVX512", "cpu_avx512_bf16": True,
                  "cpu_amx": True, "onednn_max_isa": "", "gpus": []})
AVX2 = json.dumps({"cpu_model": "faked EPYC (AVX2)", "cpu_capability": "AVX2", "cpu_avx512_bf16": False,
                   "cpu_amx": False, "onednn_max_isa": "", "gpus": []})
# The tiny run's recipe with the hardware-made choices left to the hardware (as the shipped recipes do), and two
# profiles that differ in the run length: a resume that took the machine's profile instead of the recorded one
# would train 3 epochs.
PROFILES = "profiles:\n  cpu: {train: {epochs: 3}}\n  cpu_bf16: {train: {epochs: 2}}\n  cuda: {train: {epochs: 2}}\n"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    data = write_image_dataset(tmp_path_factory.mktemp("rr") / "data", {"train": 96, "val": 23}, size=8)
    path = tmp_path_factory.mktemp("rr_recipe") / "recipe.yaml"
    text = tiny_run_recipe(data, epochs=2, log_interval=12, checkpoint_every_steps=0).replace("epochs: 2, ", "")
    text = text.replace("precision: fp32", "precision: auto").replace("channels_last: false", "channels_last: auto")
    path.write_text(text.replace("workers: 0", "workers: auto") + PROFILES)
    return path


def crash_after_epoch_1(out: Path) -> None:
    """What a crash in epoch 2 leaves: epoch 1's checkpoint and metrics line, nothing after."""
    for name in ("final.pt", "final.pt.sha256", "results.json", "model.safetensors",
                 "checkpoints/ckpt-0002-000000.pt", "checkpoints/ckpt-0002-000000.pt.sha256"):
        (out / name).unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text(lines[0])


def crashed_copy(run: Path, out: Path) -> Path:
    """A copy of the finished `run` at `out`, as a crash in its epoch 2 would have left it (the shared run stays)."""
    shutil.copytree(run, out)
    crash_after_epoch_1(out)
    return out


def events(out: Path) -> list[dict]:
    return [rec for rec in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "event" in rec]


@pytest.fixture(scope="module")
def bf16_run(recipe, tmp_path_factory) -> Path:
    """Two epochs trained on a (faked) native-bf16 CPU with precision, memory format and workers on auto."""
    from resnet_repro.cli import main

    out = tmp_path_factory.mktemp("rr_bf16") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(runtime.FAKE_ENV, SPR)
        assert main(["train", "--config", str(recipe), "--out", str(out)]) == 0
    return out


def test_config_yaml_and_checkpoints_record_the_resolved_choices_and_the_hardware(bf16_run):
    saved = yaml.safe_load((bf16_run / "config.yaml").read_text())
    train, data = saved["train"], saved["data"]
    assert (train["device"], train["precision"], train["channels_last"], train["profile"]) == \
        ("cpu", "bf16", "true", "cpu_bf16")
    assert isinstance(data["workers"], int) and data["workers"] >= 1  # auto resolved to a count
    assert saved["chosen_on"]["cpu_model"] == "faked Xeon (AVX-512 BF16)"
    assert "native bf16" in saved["chosen_on"]["cpu_class"] and saved["chosen_on"]["gpus"] == []
    for path in checkpoint.list_checkpoints(bf16_run / "checkpoints") + [bf16_run / "final.pt"]:
        ck = checkpoint.load(path)
        assert ck["config"]["train"]["precision"] == "bf16" and ck["config"]["train"]["channels_last"] == "true"
        assert ck["chosen_on"]["cpu_model"] == "faked Xeon (AVX-512 BF16)"
    ck = checkpoint.load(checkpoint.list_checkpoints(bf16_run / "checkpoints")[-1])
    assert ck["hardware"]["cpu_capability"] == "AVX512"


def test_a_resume_where_bf16_is_not_native_is_refused_then_overridden_and_recorded(bf16_run, recipe, tmp_path, cli,
                                                                                  monkeypatch):
    out = crashed_copy(bf16_run, tmp_path / "run")
    monkeypatch.setenv(runtime.FAKE_ENV, AVX2)
    before = snapshot(out)
    code, _, err = cli("train", "--config", recipe, "--out", out, "--resume", "auto")
    one_line(code, err, "train.precision", "recorded bf16", "faked Xeon", "--set train.precision=fp32")
    assert snapshot(out) == before
    code, text, err = cli("train", "--config", recipe, "--out", out, "--resume", "auto", "--set",
                          "train.precision=fp32")
    assert code == 0, err
    assert "override: train.precision fp32 instead of the recorded bf16" in text
    (event,) = events(out)
    assert (event["at_epoch"], event["at_step"]) == (1, 0)
    assert event["overrides"] == {"train.precision": {"recorded": "bf16", "now": "fp32"}}
    assert event["hardware"]["cpu_model"] == "faked EPYC (AVX2)"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # The recorded profile won over this machine's (cpu: 3 epochs), and the other choices stayed as recorded.
    assert (saved["train"]["profile"], saved["train"]["epochs"], saved["train"]["precision"]) == ("cpu_bf16", 2, "fp32")
    assert saved["train"]["channels_last"] == "true"  # recorded with bf16; a pinned precision does not re-choose it
    assert json.loads((out / "results.json").read_text())["epochs"] == 2
    assert saved["chosen_on"]["cpu_model"] == "faked EPYC (AVX2)"  # an override: the facts of the machine it ran on
    assert "auto" not in [saved["train"][k] for k in ("device", "precision", "channels_last", "profile")] + \
        [saved["data"]["workers"]]
    assert [rec.get("epoch", rec.get("event")) for rec in map(json.loads, (out / "metrics.jsonl").read_text()
                                                              .splitlines())] == [1, "resume", 2]


def test_resuming_a_checkpoint_into_a_new_folder_keeps_the_checkpoints_record(bf16_run, recipe, tmp_path, cli,
                                                                              monkeypatch):
    ckpt = bf16_run / "checkpoints" / "ckpt-0001-000000.pt"
    monkeypatch.setenv(runtime.FAKE_ENV, AVX2)
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "new", "--resume", ckpt)
    one_line(code, err, "train.precision", "recorded bf16", "--set train.precision=fp32")
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "new", "--resume", ckpt, "--set",
                       "train.precision=fp32")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())
    assert (saved["train"]["profile"], saved["train"]["precision"]) == ("cpu_bf16", "fp32")


def test_a_changed_recipe_value_is_refused_unless_allowed_and_then_takes_effect(recipe, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", recipe, "--out", out, "--set", "train.profile=cpu_bf16", "--set",
                       "train.precision=fp32")
    assert code == 0, err
    crash_after_epoch_1(out)
    before = snapshot(out)
    changed = ["--set", "optim.momentum=0.5", "--set", "optim.weight_decay=0.001", "--set", "optim.nesterov=false"]
    code, _, err = cli("train", "--config", recipe, "--out", out, "--resume", "auto", *changed)
    one_line(code, err, "optim.momentum: 0.9 -> 0.5", "optim.weight_decay: 0.0001 -> 0.001",
             "--allow-change optim.momentum", "--allow-change optim.nesterov", out / "config.yaml")
    assert snapshot(out) == before
    allow = ["--allow-change", "optim.momentum", "--allow-change", "optim.weight_decay", "--allow-change",
             "optim.nesterov"]
    code, text, err = cli("train", "--config", recipe, "--out", out, "--resume", "auto", *changed, *allow)
    assert code == 0, err
    assert "allowed change (--allow-change optim.momentum): 0.9 -> 0.5, in effect from this step" in text
    (event,) = events(out)
    assert event["allowed_changes"]["optim.momentum"] == {"saved": 0.9, "now": 0.5} and event["at_epoch"] == 1
    groups = checkpoint.load(out / "checkpoints" / "ckpt-0002-000000.pt")["optimizer"]["param_groups"]
    assert [(g["momentum"], g["nesterov"]) for g in groups] == [(0.5, False)] * len(groups)
    assert groups[0]["weight_decay"] == 0.001  # the decayed group (BN and biases keep 0: optim.no_wd_bn_bias)


def test_a_bf16_run_resumed_in_fp16_starts_a_loss_scale_instead_of_failing(bf16_run, recipe, tmp_path, cli,
                                                                           monkeypatch):
    out = crashed_copy(bf16_run, tmp_path / "run")
    monkeypatch.setenv(runtime.FAKE_ENV, SPR)
    code, _, err = cli("train", "--config", recipe, "--out", out, "--resume", "auto", "--set", "train.precision=fp16")
    assert code == 0, err  # the disabled scaler saved {}: no 'does not fit'
    assert checkpoint.load(out / "checkpoints" / "ckpt-0002-000000.pt")["scaler"]["scale"] > 0


@pytest.mark.parametrize("fake, recorded", [(SPR, "bf16"), (AVX2, "fp32")])
def test_evaluate_uses_the_recorded_precision_unless_told(fake, recorded, recipe, tmp_path, cli, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(runtime.FAKE_ENV, fake)
    code, _, err = cli("train", "--config", recipe, "--out", out, "--set", "train.profile=cpu_bf16", "--set",
                       "train.epochs=1", "--set", "data.workers=0")
    assert code == 0, err
    other = AVX2 if fake == SPR else SPR  # evaluated on the other class, whose auto would choose otherwise
    monkeypatch.setenv(runtime.FAKE_ENV, other)
    code, text, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0", "--json")
    assert code == 0, err
    assert json.loads(text)["precision"] == recorded
    code, text, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", "0", "--json", "--precision",
                          "fp32", "--memory-format", "channels_last")
    assert code == 0, err
    assert json.loads(text)["precision"] == "fp32"


def test_a_rank_that_cannot_honour_rank_0s_choice_stops_every_rank_naming_itself(monkeypatch):
    """Rank 1 of two on an AVX2 host, rank 0 (faked by the collectives) chose bf16 on its native-bf16 CPU."""
    from resnet_repro.training import setup
    from resnet_repro.recipe import load_config

    cfg = load_config(None, ["train.device=cpu", "train.precision=auto"])
    rank0 = {"values": {"train.device": "cpu", "train.precision": "bf16", "train.channels_last": "true",
                        "train.profile": "cpu_bf16", "data.workers": 1},
             "reasons": {}, "overrides": {}, "warnings": [], "config": cfg.to_dict(), "host": "node-a",
             "chosen_on": {}}
    gathered = []
    monkeypatch.setattr(dist, "broadcast_object", lambda obj, src=0: rank0)
    monkeypatch.setattr(dist, "all_gather_object", lambda obj: gathered.append(obj) or ["", obj])
    hw = runtime.Hardware(cpu_model="EPYC", cpu_capability="AVX2", cores=2)
    with pytest.raises(runtime.DeviceError) as e:
        setup._settle_on_rank0(cfg, hw, dist.DistEnv(rank=1, world=2), None)
    message = str(e.value)
    assert message.startswith("rank 1 on ") and "train.precision=bf16" in message and "node-a" in message
    assert "\n" not in message
    # Its own hardware would have chosen fp32; it runs rank 0's choice instead when it can honour it.
    spr = runtime.Hardware(cpu_capability="AVX512", cpu_avx512_bf16=True, cores=2)
    answer = setup._settle_on_rank0(cfg, spr, dist.DistEnv(rank=1, world=2), None)
    assert answer["values"]["train.precision"] == "bf16"


def test_a_cpu_run_never_reads_the_gpus_properties(recipe, tmp_path, cli, monkeypatch):
    """On a GPU host (faked: two GPUs counted) a run with train.device cpu must not open a CUDA context, which
    reading a GPU's properties does (and the run would then checkpoint every GPU's RNG state)."""
    def no_context(*args, **kwargs):
        raise AssertionError("a CPU run read a GPU's properties (this opens a CUDA context)")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", no_context)
    assert runtime.detect(gpus=False).gpus == ()
    code, _, err = cli("train", "--config", recipe, "--out", tmp_path / "run", "--set", "train.profile=cpu_bf16",
                       "--set", "train.epochs=1", "--set", "train.precision=fp32", "--set", "data.workers=0")
    assert code == 0, err
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "ckpt-0001-000000.pt")["ranks"][0]["rng"]["cuda"] == []


@pytest.mark.parametrize("recorded, hw, names", [
    ({"train.device": "cuda"}, runtime.Hardware(cpu_capability="AVX2"), ["train.device", "--set train.device=cpu"]),
    ({"train.device": "cuda", "train.precision": "bf16"},
     runtime.Hardware(gpus=(runtime.Gpu("Tesla V100", (7, 0), 16.0),)),
     ["train.precision", "Tesla V100", "7.0", "--set train.precision=fp16"])])
def test_a_recorded_choice_this_machine_lacks_is_refused_naming_the_override(recorded, hw, names):
    asked = {"train.device": "auto", "train.precision": "auto", "train.channels_last": "auto",
             "train.profile": "auto", "data.workers": 2}
    with pytest.raises(runtime.DeviceError) as e:
        runtime.settle(asked, recorded, hw, lambda kind: 1)
    assert all(n in str(e.value) for n in names) and "\n" not in str(e.value)
    # Pinned by --set, the other value is an override the caller records.
    override = {"train.device": "cpu"} if "train.device" in names[0] else {"train.precision": "fp16"}
    s = runtime.settle({**asked, **override}, recorded, hw, lambda kind: 1)
    key, value = next(iter(override.items()))
    assert s.values[key] == value and s.overrides[key] == {"recorded": recorded[key], "now": value}
