"""`bench train` (bench/train.py) and the trainer's no-host-sync step (train.train_step, train.RunningSums).

Speed itself is measured by the bench command, never asserted here: these tests check that the figures are
computed right (a fake clock), that both phases run end to end on the CPU, and that a training step reads
nothing back from the device (counted reads do not grow with the number of steps).
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from resnet_repro.bench import e2e, measure
from resnet_repro.bench import train as bt
from resnet_repro import runtime
from resnet_repro.training import loop, setup, state
from resnet_repro.recipe import load_config

KEYS = {"compute_images_per_s", "end_to_end_images_per_s", "data_wait_fraction", "peak_memory_mb",
        "compute_tflops", "train_flops_per_image", "end_to_end_over_compute"}


def test_step_timer_rate_and_wait_from_marks(monkeypatch):
    """Steps at [0, 1], [1.5, 2.5], [3, 4] seconds: 3 steps in 4 s, 1 s of it between steps."""
    clock = iter([0.0, 1.0, 1.5, 2.5, 3.0, 4.0])
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    timer = measure.StepTimer(torch.device("cpu"))
    for _ in range(6):
        timer.mark()
    r = timer.result(batch_size=8)
    assert r["images_per_s"] == pytest.approx(3 * 8 / 4.0) and r["wait_fraction"] == pytest.approx(0.25)
    assert r["step_ms"] == pytest.approx(4000 / 3) and r["steps"] == 3


def test_synthetic_compute_phase_on_cpu():
    r = bt.bench_train(bt.TrainOptions("resnet20", batch_size=4, steps=2, warmup=1), log=lambda *a: None)
    assert r["compute_images_per_s"] > 0 and r["compute_step_ms"] > 0 and r["peak_memory_mb"] > 0
    assert r["end_to_end_images_per_s"] is None and r["data_wait_fraction"] is None
    # ResNet-20 at 32x32: 41 M multiply-adds forward (paper: ~41 M), x 3 passes x 2 FLOPs each.
    assert r["train_flops_per_image"] == 6 * r["train_flops_per_image"] // 6
    assert 40e6 < r["train_flops_per_image"] / 6 < 42e6
    assert r["compute_tflops"] == pytest.approx(r["compute_images_per_s"] * r["train_flops_per_image"] / 1e12)


def test_a_wide_cifar_net_is_benched_as_named(cli):
    """--model names the net the config is checked for: model.width was refused against the default ResNet-50."""
    code, out, err = cli("bench", "train", "--model", "resnet20", "--synthetic", "--device", "cpu", "--precision",
                         "fp32", "--set", "model.width=2", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                         "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["model"] == "resnet20" and r["width"] == 2
    assert 3.9 < r["train_flops_per_image"] / 6 / 41e6 < 4.0  # about 4x ResNet-20's 41 M multiply-adds
    code, _, err = cli("bench", "train", "--model", "resnet50", "--synthetic", "--set", "model.width=2")
    assert code == 2 and "model.width" in err and "resnet50" in err


def test_a_recipe_sets_what_the_command_line_leaves_open(cli, tmp_path):
    """With --config, the model, the batch (of the machine profile, pinned here so the test is the same on every
    CPU) and the input of the recipe's prepared data (grey-scale here) are what `train` would run; flags still win;
    without a recipe, ResNet-50 at batch 256 and 3 channels, the ImageNet reference."""
    from conftest import write_image_dataset

    grey = tmp_path / "grey"
    write_image_dataset(grey, {"train": 8}, size=12, num_classes=4)
    recipe = str(REPO / "configs" / "fashion_mnist" / "resnet20.yaml")
    base = ("bench", "train", "--synthetic", "--device", "cpu", "--precision", "fp32", "--steps", "1", "--warmup", "0",
            "--json", "--config", recipe, "--set", f"data.path={grey}")
    code, out, err = cli(*base, "--set", "train.profile=cpu")
    assert code == 0, err
    r = json.loads(out)
    assert (r["model"], r["batch_size"], r["in_channels"], r["image_size"]) == ("resnet20", 64, 1, 28)
    code, out, err = cli(*base, "--set", "train.profile=cpu_bf16", "--batch-size", "8")
    assert code == 0, err
    assert (json.loads(out)["model"], json.loads(out)["batch_size"]) == ("resnet20", 8)
    opts = bt._with_recipe_sizes(bt.TrainOptions(), load_config(None, []))
    assert (opts.model, opts.batch_size) == ("resnet50", 256)
    opts = bt._with_recipe_sizes(bt.TrainOptions(overrides=["model.name=resnet20", " data.batch_size =32"]),
                                 load_config(None, ["model.name=resnet20", "data.batch_size=32"]))
    assert (opts.model, opts.batch_size) == ("resnet20", 32)
    r = bt.bench_train(bt.TrainOptions("resnet20", batch_size=2, steps=1, warmup=0, device="cpu",
                                       overrides=["model.in_channels=1", "model.num_classes=4"]), log=lambda *a: None)
    assert r["in_channels"] == 1


def test_real_and_synthetic_in_one_run_via_the_cli(texture_data, cli):
    code, out, err = cli("bench", "train", "--model", "resnet20", "--data", texture_data, "--batch-size", "16",
                         "--steps", "2", "--warmup", "1", "--workers", "1", "--rounds", "2", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert KEYS <= set(r)
    assert r["end_to_end_images_per_s"] > 0 and 0 <= r["data_wait_fraction"] < 1
    assert r["end_to_end_over_compute"] == pytest.approx(r["end_to_end_images_per_s"] / r["compute_images_per_s"])
    assert len(r["compute_images_per_s_rounds"]) == len(r["end_to_end_images_per_s_rounds"]) == 2
    assert r["image_size"] == 16 and r["decode"] == "cpu" and r["workers"] == 1


@pytest.mark.hardware
@pytest.mark.parametrize("cpu, precision", [({"cpu_capability": "AVX512", "cpu_avx512_bf16": True}, "bf16"),
                                            ({"cpu_capability": "AVX2", "cpu_avx512_bf16": False, "cpu_amx": False},
                                             "fp32")])
def test_text_output_and_recipe_data_settings(texture_data, cli, monkeypatch, cpu, precision):
    # Each CPU class faked (runtime.FAKE_ENV): the expectation is the branch's, not this host's.
    monkeypatch.setenv(runtime.FAKE_ENV, json.dumps({**cpu, "onednn_max_isa": "", "gpus": []}))
    recipe = REPO / "configs" / "fashion_mnist" / "resnet20.yaml"
    code, out, err = cli("bench", "train", "--model", "resnet20", "--data", texture_data, "--config", recipe,
                         "--set", "data.workers=0", "--batch-size", "8", "--steps", "1", "--warmup", "0")
    assert code == 0, err
    assert "compute" in out and "end to end" in out and "data wait" in out and "peak memory" in out
    # The recipe's precision (auto) and memory format (auto) as train would choose them on that machine.
    (head,) = [ln for ln in out.splitlines() if ln.startswith("bench train resnet20: batch 8 at ")]
    assert f", {precision}, " in head and ("channels_last" if precision == "bf16" else "NCHW") in head


def test_bad_arguments_are_user_errors(texture_data, cli):
    code, _, err = cli("bench", "train", "--model", "resnet7", "--synthetic")
    assert code == 2 and "unknown model" in err
    code, _, err = cli("bench", "train", "--model", "resnet20", "--data", texture_data, "--batch-size", "1000")
    assert code == 2 and "fewer than one batch" in err


def test_end_to_end_variants_after_one_compute_phase(texture_data, cli):
    code, out, err = cli("bench", "train", "--model", "resnet20", "--data", texture_data, "--batch-size", "16",
                         "--steps", "2", "--warmup", "1", "--e2e", "cpu:1:none", "--e2e", "cpu:2", "--json")
    assert code == 0, err
    r = json.loads(out)
    rows = r["end_to_end"]
    assert [(v["decode"], v["workers"], v["affinity"]) for v in rows] == [("cpu", 1, "none"), ("cpu", 2, "plan")]
    assert all(v["images_per_s"] > 0 and 0 <= v["data_wait_fraction"] < 1 for v in rows)
    assert all(v["over_compute"] == pytest.approx(v["images_per_s"] / r["compute_images_per_s"]) for v in rows)
    assert "2 loader worker(s)" in rows[1]["core_plan"] and "not pinned" in rows[1]["core_plan"]  # a CPU device
    # The first variant's figures are the top-level ones, as with a single --decode / --workers.
    assert r["end_to_end_images_per_s"] == rows[0]["images_per_s"] and r["workers"] == 1


def test_an_e2e_variant_can_name_the_share_nvjpeg_decodes():
    assert e2e.parse_e2e("gpu:8:plan:0.75") == {"decode": "gpu", "workers": 8, "affinity": "plan", "share": 0.75}
    assert e2e.parse_e2e("gpu:8::0.5")["affinity"] == "plan" and e2e.parse_e2e("gpu:4")["share"] is None
    assert e2e.share_text({"gpu_decode_share": 0.75}) == ", 75 % on the GPU"
    assert e2e.share_text({"gpu_decode_share": 1.0}) == e2e.share_text({"gpu_decode_share": None}) == ""


def test_bad_variants_and_worker_counts_are_user_errors(texture_data, cli):
    for args, words in ((["--e2e", "tpu"], "--e2e 'tpu'"), (["--e2e", "cpu:2:everywhere"], "affinity"),
                        (["--e2e", "gpu:lots"], "workers"), (["--workers", "many"], "workers"),
                        (["--e2e", "cpu:2:plan:0.5"], "gpu decoding only"), (["--e2e", "gpu:2:plan:1.5"], "(0, 1]"),
                        (["--e2e", "gpu:2:plan:most"], "'most'"), (["--e2e", "gpu:2:plan:0.5:x"], "SHARE"),
                        (["--e2e", "cpu:99999999999"], "more than 512"),  # was: started that many processes
                        (["--e2e", "gpu:1", "--device", "cpu"], "needs a CUDA device")):  # was torch's traceback
        code, _, err = cli("bench", "train", "--model", "resnet20", "--data", texture_data, *args)
        assert code == 2 and words in err and "Traceback" not in err, (args, err)
    code, _, err = cli("bench", "train", "--model", "resnet20", "--e2e", "cpu:1")  # was: exit 0, nothing timed
    assert code == 2 and "--e2e needs --data" in err, err
    code, _, err = cli("bench", "prepare", "--src", texture_data / "nope")  # was: FileNotFoundError's traceback
    assert code == 2 and "folder not found" in err, err


@pytest.mark.parametrize("mode, graphs", [("default", False), ("reduce-overhead", True), ("max-autotune", True),
                                          ("max-autotune-no-cudagraphs", False)])
def test_compile_modes_reach_torch_compile_and_graph_modes_mark_each_step(mode, graphs, monkeypatch):
    """torch.compile itself is replaced (compiling a model on 2 CPU cores takes minutes): the mode it receives,
    and whether every step (warm-up included) tells CUDA graph trees that a new iteration begins."""
    modes, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    r = bt.bench_train(bt.TrainOptions("resnet20", batch_size=2, steps=2, warmup=1, compile=mode),
                       log=lambda *a: None)
    assert modes == [None if mode == "default" else mode]
    assert len(marks) == (3 if graphs else 0)
    assert r["compile"] is True and r["compile_mode"] == mode
    with pytest.raises(ValueError, match="compile mode 'fastest'"):
        bt.bench_train(bt.TrainOptions("resnet20", batch_size=2, steps=1, warmup=0, compile="fastest"))


# --- No host synchronisation per step ---------------------------------------------------------------------------

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def count_reads(monkeypatch):
    """Counts every Tensor method that copies a value back to the host (on a GPU: waits for the device)."""
    counts = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, **k):
            counts["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


def test_running_sums_read_nothing_until_total(count_reads):
    sums = state.RunningSums(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    for _ in range(50):
        sums.add(torch.tensor(0.5), logits, y, bad=1)
    assert count_reads["n"] == 0
    loss_sum, correct, n, bad = sums.total()
    assert (loss_sum, correct, n, bad) == (pytest.approx(50 * 0.5 * 3), 100, 150, 50)


def test_train_step_reads_nothing_back(count_reads):
    model = torch.nn.Linear(4, 3)
    opt = setup.make_optimizer(model, load_config().optim, 0.1, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    autocast, _ = runtime.autocast_for("fp32", torch.device("cpu"))
    for _ in range(5):
        loss, logits = loop.train_step(model, torch.randn(8, 4), torch.randint(0, 3, (8,)),
                                       torch.nn.CrossEntropyLoss(), opt, scaler, autocast)
    assert count_reads["n"] == 0 and not loss.requires_grad and logits.shape == (8, 3)


def test_reads_per_epoch_do_not_grow_with_steps(texture_data, tmp_path, count_reads):
    """A whole `train` epoch with 4 steps and with 16: the same number of host reads (log lines, epoch end,
    evaluation, checkpoint), none per step."""
    counts = []
    for batch in (64, 16):
        cfg = load_config(None, [f"data.path={texture_data}", f"data.batch_size={batch}", "data.eval_batch_size=32",
                                 "data.workers=0", "data.normalize=scale", "model.name=resnet20", "train.epochs=1",
                                 "train.precision=fp32", "train.precise_bn_batches=0", "train.log_interval=1000"])
        count_reads["n"] = 0
        loop.train(cfg, tmp_path / f"b{batch}")
        counts.append(count_reads["n"])
    assert counts[0] == counts[1], counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_synchronising_call_in_a_cuda_step():
    """torch's sync debug mode turns any synchronising call (a read-back, a pageable copy) into an error."""
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).to(dev)
    model(torch.randn(2, 3, 8, 8, device=dev))
    opt = setup.make_optimizer(model, load_config().optim, 0.1, dev)
    for precision in ("bf16", "fp16"):
        scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        autocast, _ = runtime.autocast_for(precision, dev)
        sums = state.RunningSums(dev)
        x, y = torch.randn(4, 3, 8, 8, device=dev), torch.randint(0, 5, (4,), device=dev)
        loop.train_step(model, x, y, torch.nn.CrossEntropyLoss(), opt, scaler, autocast)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                loss, logits = loop.train_step(model, x, y, torch.nn.CrossEntropyLoss(), opt, scaler, autocast)
                sums.add(loss, logits, y, 0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert sums.total()[2] == 12
