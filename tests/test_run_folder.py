"""Run folders and outputs: one writer, one run, nothing lost, nothing overwritten; one clear line otherwise.

Tiny runs: ResNet-20 on 96 8x8 texture images (batch 8: 12 steps per epoch), one CPU thread, deterministic,
in-process through resnet_repro.cli.main unless a second process is the point. Every error case asserts the
exit status, that the message names the file or key, and that the files already there are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (REPO, TIMING, png, texture_images, tiny_run_recipe, write_fashion_mnist_src,
                      write_image_dataset)
from conftest import assert_one_clear_line as one_line
from resnet_repro import checkpoint, folder_lock
from resnet_repro.data.shards import records


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its SHA-256: "nothing changed" is equality of two snapshots."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_dataset(tmp_path_factory.mktemp("rf") / "data", {"train": 96, "val": 23}, size=8)


@pytest.fixture(scope="module")
def recipe(data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rf_recipe") / "recipe.yaml"
    path.write_text(tiny_run_recipe(data, epochs=1, log_interval=4, checkpoint_every_steps=0))
    return path


@pytest.fixture(scope="module")
def finished(recipe, tmp_path_factory) -> Path:
    """A finished one-epoch run (shared; tests that must change it copy it)."""
    from resnet_repro.cli import main

    out = tmp_path_factory.mktemp("rf_finished") / "run"
    assert main(["train", "--config", str(recipe), "--out", str(out)]) == 0
    return out


def train(cli, recipe, out, *extra):
    return cli("train", "--config", recipe, "--out", out, *extra)


# --- 1. One writer per run folder -------------------------------------------------------------------------------

HOLDER = """\
import sys
from resnet_repro.folder_lock import {fn}
with {fn}(sys.argv[1], "a test holder"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


def start_holder(path: Path, fn: str = "hold_folder") -> subprocess.Popen:
    """Another process that holds the lock of `path` until its stdin closes; returns once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, "-c", HOLDER.format(fn=fn), str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_train_into_a_folder_in_use_is_refused_and_the_lock_dies_with_its_holder(recipe, tmp_path, cli):
    out = tmp_path / "run"
    holder = start_holder(out)
    try:
        code, _, err = train(cli, recipe, out)
        one_line(code, err, out / "run.lock", f"a test holder (pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written by the refused run
    finally:
        holder.kill()  # kill -9: the kernel releases the lock; the file stays and names the dead holder
        holder.wait()
    code, _, err = train(cli, recipe, out)
    assert code == 0, err
    assert f"{out / 'run.lock'} was left by a test holder (pid {holder.pid}" in err and "taking it over" in err
    assert (out / "final.pt").is_file() and not (out / "run.lock").exists()  # released on exit


def test_a_finished_holder_releases_the_folder(tmp_path):
    with folder_lock.hold_folder(tmp_path, "first"):
        with pytest.raises(folder_lock.LockError, match="in use: first \\(pid"):
            with folder_lock.hold_folder(tmp_path, "second"):
                pass
    with folder_lock.hold_folder(tmp_path, "second"):  # released on leaving the block, also after an error
        pass


def test_the_lock_is_not_inherited_by_forked_workers(tmp_path):
    # DataLoader workers are forked while the trainer holds the lock; a worker outliving a killed trainer must
    # not keep the folder locked, so a forked child must not hold the locked descriptor.
    with folder_lock.hold_folder(tmp_path, "parent"):
        fds = list(folder_lock._HELD)
        assert len(fds) == 1
        pid = os.fork()
        if pid == 0:
            try:
                os.fstat(fds[0])
                os._exit(3)  # still open in the child: it would hold the lock
            except OSError:
                os._exit(4)
            finally:
                os._exit(5)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
        os.fstat(fds[0])  # and still open (and locked) in the parent


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(recipe, finished, cli):
    before = snapshot(finished)
    code, _, err = train(cli, recipe, finished)
    one_line(code, err, finished, "final.pt", "results.json", "metrics.jsonl", "--resume auto")
    assert snapshot(finished) == before


def test_only_this_runs_checkpoints_are_pruned_and_resumed(recipe, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", "train.max_steps=4")
    assert code == 0, err
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    own = checkpoint.load(out / "checkpoints" / "ckpt-0000-000004.pt")
    assert own["run_id"] == run_id and checkpoint.read_sidecar(out / "checkpoints" / "ckpt-0000-000004.pt")[1] == run_id
    # Another run's checkpoints, newer by name, copied into this folder: never resumed from, never pruned.
    foreign = {**own, "run_id": "someone-else", "epoch": 9}
    for step in (1, 2, 3, 4):
        checkpoint.save_file(out / "checkpoints" / f"ckpt-0009-00000{step}.pt", foreign)
    code, out_text, err = train(cli, recipe, out, "--set", "train.max_steps=12", "--allow-change", "train.max_steps",
                                "--resume", "auto")
    assert code == 0, err
    assert "ckpt-0000-000004.pt at epoch 0 step 4" in out_text
    assert "belongs to run someone-else" in err
    names = [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")]
    assert [n for n in names if n.startswith("ckpt-0009")] == [f"ckpt-0009-00000{s}.pt" for s in (1, 2, 3, 4)]
    assert "ckpt-0001-000000.pt" in names


def test_pruning_keeps_other_runs_checkpoints(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, {"model": {}, "run_id": "a"}, 0, step, keep=2)
    for step in (4, 5, 6):
        checkpoint.save(tmp_path, {"model": {}, "run_id": "b"}, 0, step, keep=2)
    assert [p.name[5:16] for p in checkpoint.list_checkpoints(tmp_path)] == \
        ["0000-000002", "0000-000003", "0000-000005", "0000-000006"]
    assert checkpoint.load_latest(tmp_path, run_id="a")[0].name == "ckpt-0000-000003.pt"


def test_resume_auto_without_a_checkpoint_of_this_run_keeps_the_folder(recipe, finished, tmp_path, cli):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "checkpoints")
    before = snapshot(out)
    code, _, err = train(cli, recipe, out, "--resume", "auto")
    one_line(code, err, out / "checkpoints", "final.pt")
    assert snapshot(out) == before


def test_torchrun_into_a_folder_in_use_fails_on_every_rank_without_hanging(recipe, tmp_path):
    out = tmp_path / "run"
    holder = start_holder(out)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "resnet_repro", "train", "--config", str(recipe), "--out", str(out)],
                           capture_output=True, text=True, env=env, timeout=300)  # a hang guard, not a timing
    finally:
        holder.stdin.close()
        holder.wait()
    assert r.returncode != 0
    # rank 0 found the lock held; rank 1 got the same message instead of waiting for rank 0 forever
    assert r.stderr.count(f"error: {out} is in use") == 2, r.stderr[-3000:]


def test_two_prepares_into_one_out_cannot_both_run(tmp_path, cli):
    src = tmp_path / "src"
    write_fashion_mnist_src(src)
    out = tmp_path / "fm"
    holder = start_holder(out, "hold_output")
    try:
        code, _, err = cli("prepare", "fashion-mnist", "--src", src, "--out", out)
        one_line(code, err, tmp_path / "fm.lock", f"(pid {holder.pid}")
        assert not out.exists() and not (tmp_path / "fm.partial").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    code, _, err = cli("prepare", "fashion-mnist", "--src", src, "--out", out)
    assert code == 0, err
    assert (out / "manifest.json").is_file() and not (tmp_path / "fm.lock").exists()


# --- 3. No command writes over its own input ---------------------------------------------------------------------

def test_export_and_evaluate_never_write_over_their_input(finished, data, cli):
    before = snapshot(finished)
    final = finished / "final.pt"
    for target in (final, Path(str(final) + ".sha256")):
        code, _, err = cli("export", final, "--out", target)
        one_line(code, err, target, "own input")
        code, _, err = cli("evaluate", "--checkpoint", final, "--workers", "0", "--out", target)
        one_line(code, err, target, "own input")
    code, _, err = cli("evaluate", "--checkpoint", final, "--data", data, "--workers", "0", "--out",
                       data / "manifest.json")
    one_line(code, err, data / "manifest.json", "own input")
    assert snapshot(finished) == before


# --- 4. A bad val image; the checkpoint before the evaluation ------------------------------------------------------

@pytest.fixture(scope="module")
def bad_val_data(tmp_path_factory) -> Path:
    """The texture data set with val sample 7 stored as bytes no decoder reads (consistent hashes)."""
    root = tmp_path_factory.mktemp("badval") / "data"
    root.mkdir()
    entries = {}
    for k, (split, n) in enumerate({"train": 96, "val": 23}.items()):
        images, labels = texture_images(n, 8, k, 4)
        samples = [records.Sample(f"{split}_{i:05d}", png(img), "png", int(lab))
                   for i, (img, lab) in enumerate(zip(images, labels))]
        if split == "val":
            samples[7] = records.Sample("val_00007", b"\x89PNG\r\n\x1a\n damaged", "png", samples[7].label)
        entries[split] = records.write_split(root, split, samples, 2, k)
    records.write_manifest(root, {"format": records.FORMAT, "dataset": "synthetic-textures",
                                  "classes": ["0", "1", "2", "3"], "image": {"height": 8, "width": 8, "channels": 1},
                                  "encoding": {"ext": "png", "lossless": True}, "splits": entries})
    return root


def test_a_bad_val_image_is_replaced_and_counted_and_evaluate_names_it(recipe, bad_val_data, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", f"data.path={bad_val_data}")
    assert code == 0, err
    assert "key val_00007: cannot decode; using a replacement sample" in err
    (line,) = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["val_bad_samples"] == 1 and line["bad_samples"] == 0
    assert json.loads((out / "results.json").read_text())["val_bad_samples"] == 1
    for workers in ("0", "1"):  # in a loader worker too: one line, not the worker's traceback
        code, _, err = cli("evaluate", "--checkpoint", out / "final.pt", "--workers", workers)
        one_line(code, err, bad_val_data, "key val_00007", "shard val-0000")


def test_the_epoch_checkpoint_is_saved_before_its_evaluation(recipe, finished, tmp_path, cli, monkeypatch):
    from resnet_repro.training import finish

    def broken_val_pass(*args, **kwargs):
        raise RuntimeError("val pass failed")

    out = tmp_path / "run"
    monkeypatch.setattr(finish, "evaluate", broken_val_pass)  # the per-epoch val pass (_evaluate) is finish.py's
    with pytest.raises(RuntimeError, match="val pass failed"):
        train(cli, recipe, out)
    assert [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")] == ["ckpt-0001-000000.pt"]
    assert not (out / "metrics.jsonl").exists()
    monkeypatch.undo()
    code, out_text, err = train(cli, recipe, out, "--resume", "auto")
    assert code == 0, err
    assert "epoch 1 was checkpointed but not evaluated and logged: doing that first" in out_text
    assert "step" not in "".join(ln for ln in out_text.splitlines() if ln.startswith("epoch "))  # no retraining
    strip = lambda run: [{k: v for k, v in json.loads(ln).items() if k not in TIMING}  # noqa: E731
                         for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(finished)  # the line an uninterrupted run logs
    assert checkpoint.load(out / "final.pt")["model"].keys() == checkpoint.load(finished / "final.pt")["model"].keys()
    for k, v in checkpoint.load(finished / "final.pt")["model"].items():
        assert torch.equal(v, checkpoint.load(out / "final.pt")["model"][k]), k


# --- 5. A failed resume leaves the folder as it was; a torn metrics line ----------------------------------------

def test_a_rejected_resume_changes_nothing(recipe, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", "train.max_steps=4")
    assert code == 0, err
    before = snapshot(out)
    code, _, err = train(cli, recipe, out, "--set", "model.name=resnet32", "--set", "train.max_steps=8",
                         "--resume", "auto")
    one_line(code, err, "ckpt-0000-000004.pt", "model.name: 'resnet20' -> 'resnet32'", out / "config.yaml")
    assert snapshot(out) == before  # config.yaml still the run's own: the printed resume command still works
    code, _, err = train(cli, out / "config.yaml", out, "--set", "train.max_steps=8", "--allow-change",
                         "train.max_steps", "--resume", "auto")
    assert code == 0, err


def test_a_metrics_line_torn_by_a_crash_is_dropped_with_a_warning(recipe, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", "train.epochs=2", "--set", "train.max_steps=16")
    assert code == 0, err
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.1')  # the start of a line, as a crash mid-write leaves it
    code, _, err = train(cli, recipe, out, "--set", "train.epochs=2", "--allow-change", "train.max_steps",
                         "--resume", "auto")
    assert code == 0, err
    assert f"{out / 'metrics.jsonl'} line 3: cut off" in err
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec.get("epoch", rec.get("event")) for rec in lines] == [1, "resume", 2]  # the allowed change, recorded


# --- 7. Raising train.max_steps on resume ------------------------------------------------------------------------

def test_raising_max_steps_continues_the_partial_epoch(recipe, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", "train.epochs=5", "--set", "train.max_steps=6")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["steps"] == 6
    code, text, err = train(cli, recipe, out, "--set", "train.epochs=5", "--set", "train.max_steps=16",
                            "--allow-change", "train.max_steps", "--resume", "auto")
    assert code == 0, err
    assert "ckpt-0000-000006.pt at epoch 0 step 6" in text  # the rest of epoch 0, not a skip to epoch 1
    steps = [ln.split()[3] for ln in text.splitlines() if ln.startswith("epoch ")]
    assert steps == ["8/12", "12/12", "4/4"]  # log_interval 4: steps 7-12 of epoch 0, then 4 of epoch 1
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec.get("epoch", rec.get("event")) for rec in lines] == ["resume", 1, 2]  # the allowed change at epoch 0 step 6
    assert json.loads((out / "results.json").read_text())["steps"] == 16


# --- 6. One clear line ---------------------------------------------------------------------------------------------

@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A folder this process cannot write in (mode bits do not bind root: then a read-only system folder)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys/kernel")):
        try:
            (candidate / ".probe").touch()
            (candidate / ".probe").unlink()
        except OSError:
            yield candidate
            break
    else:
        pytest.skip("no folder here is read-only for this user")
    ro.chmod(0o755)


def test_read_only_or_file_valued_out(recipe, finished, readonly_dir, tmp_path, cli):
    final = finished / "final.pt"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # train
    code, _, err = train(cli, recipe, readonly_dir / "run")
    one_line(code, err, readonly_dir / "run")
    code, _, err = train(cli, recipe, a_file)
    one_line(code, err, a_file, "is a file")
    # evaluate: refused before the evaluation runs (no result line printed)
    for target, why in ((readonly_dir / "e.json", "cannot write"), (tmp_path, "is a folder"),
                        (a_file / "e.json", "is a file")):
        code, out, err = cli("evaluate", "--checkpoint", final, "--workers", "0", "--out", target)
        one_line(code, err, target, why)
        assert "top-1" not in out and "protocol" not in out
        code, _, err = cli("export", final, "--out", target)
        one_line(code, err, target, why)
    # report
    for target in (readonly_dir / "report", a_file):
        code, _, err = cli("report", finished, "--out", target, "--quiet")
        one_line(code, err, target)
    assert a_file.read_text() == "x"


def test_disk_full_names_the_file_and_leaves_no_temp_file(recipe, finished, tmp_path, cli):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    # A checkpoint: its temp file is made a link to /dev/full, where every write fails with ENOSPC.
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "ckpt-0001-000000.pt.tmp").symlink_to("/dev/full")
    code, _, err = train(cli, recipe, out)
    one_line(code, err, out / "checkpoints" / "ckpt-0001-000000.pt", "No space left on device")
    assert list((out / "checkpoints").iterdir()) == []  # no temp file, no checkpoint that looks whole
    # results.json at the end of a run
    out = tmp_path / "run2"
    out.mkdir()
    (out / "results.json.tmp").symlink_to("/dev/full")
    code, _, err = train(cli, recipe, out)
    one_line(code, err, out / "results.json", "No space left on device")
    assert not (out / "results.json").exists() and not (out / "results.json.tmp").exists()
    # evaluate --out and export --out
    target = tmp_path / "e.json"
    Path(str(target) + ".tmp").symlink_to("/dev/full")
    code, _, err = cli("evaluate", "--checkpoint", finished / "final.pt", "--workers", "0", "--out", target)
    one_line(code, err, target, "No space left on device")
    assert not target.exists() and not Path(str(target) + ".tmp").exists()



def test_export_disk_full_leaves_no_file(finished, tmp_path, cli, monkeypatch):
    # safetensors replaces a link at its target path with a file of its own, so /dev/full cannot stand in here:
    # its writer is replaced by one that fails the way a full disk makes it fail, after a partial write.
    import errno

    import resnet_repro.export as export_module

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_module, "save_file", full_disk)
    target = tmp_path / "w.safetensors"
    code, _, err = cli("export", finished / "final.pt", "--out", target)
    one_line(code, err, target, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_resume_from_final_weights_says_what_they_are(recipe, finished, tmp_path, cli):
    out = tmp_path / "new"
    code, _, err = train(cli, recipe, out, "--resume", finished / "final.pt")
    one_line(code, err, finished / "final.pt", "final weights", "--resume auto")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA")
def test_cuda_without_cuda(recipe, finished, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", "train.device=cuda")
    one_line(code, err, "train.device", "train.device=cpu")
    assert not out.exists()
    code, _, err = cli("evaluate", "--checkpoint", finished / "final.pt", "--device", "cuda")
    one_line(code, err, "--device")


@pytest.mark.parametrize("item, key", [("model.num_classes=10", "model.num_classes"),
                                       ("model.in_channels=3", "model.in_channels")])
def test_model_shape_that_disagrees_with_the_data(recipe, data, tmp_path, cli, item, key):
    out = tmp_path / "run"
    code, _, err = train(cli, recipe, out, "--set", item)
    one_line(code, err, key, data)
    assert not out.exists()


def test_predict_refuses_empty_huge_and_negative_topk(finished, tmp_path, cli):
    final = finished / "final.pt"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code, _, err = cli("predict", "--checkpoint", final, empty)
    one_line(code, err, empty, "empty")
    import struct
    import zlib

    def png_header(w, h):  # a valid PNG signature and IHDR; the pixel data never comes
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + \
            struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))

    for w, h in ((60000, 60000), (8000, 8000)):  # 3600 MP, and 64 MP: above predict's 50 MP limit
        big = tmp_path / f"big{w}.png"
        big.write_bytes(png_header(w, h))
        code, _, err = cli("predict", "--checkpoint", final, big)
        one_line(code, err, big, f"{w}x{h}", "50 MP limit")
    ok = tmp_path / "ok.png"
    ok.write_bytes(png(texture_images(1, 8)[0][0]))
    code, _, err = cli("predict", "--checkpoint", final, ok, "--topk", "-1")
    one_line(code, err, "--topk -1")
    code, out, err = cli("predict", "--checkpoint", final, ok, "--topk", "2")
    assert code == 0 and out.count("%") == 2, err


def test_report_on_a_damaged_config_and_on_a_run_stopped_before_its_first_epoch(finished, tmp_path, cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "config.yaml").write_text("data: {path: [unclosed\n")
    code, _, err = cli("report", run, "--quiet")
    one_line(code, err, run / "config.yaml", "not valid YAML")
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(finished / "config.yaml", early / "config.yaml")
    code, _, err = cli("report", early, "--quiet")
    one_line(code, err, early / "metrics.jsonl", "stopped before its first epoch", "--resume auto")
    assert "is " + str(early) + " a run folder" not in err


def test_report_names_the_data_set_of_an_unfinished_run_whose_data_path_leads_nowhere_from_here(finished, data,
                                                                                            tmp_path, cli):
    """run.json records the data set and its folder when the run starts: before results.json exists, report
    names the data set though the run's relative data.path finds nothing from where report runs."""
    import shutil

    record = json.loads((finished / "run.json").read_text())
    assert record["dataset"] == "synthetic-textures" and record["data_folder"] == str(data.resolve())
    assert record["classes"] == 4
    run = tmp_path / "unfinished"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("results.json", "final.pt*", "report"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["path"] = "data/relative_to_where_training_ran"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = cli("report", run)
    assert code == 0, err
    md = (run / "report" / "report.md").read_text()
    assert "on synthetic-textures" in md
    # run.json's class count reaches the unfinished run's row: a top-5 of 4 classes holds every label.
    row = next(line for line in md.splitlines() if line.startswith("| **this run (not finished)**"))
    assert "| n/a (4 classes) |" in row, row
    (run / "run.json").write_text(json.dumps({"run_id": record["run_id"]}) + "\n")  # a run from before
    code, out, err = cli("report", run)
    assert code == 0, err
    assert "on unknown data" in (run / "report" / "report.md").read_text()


def test_a_checkpoint_copied_without_its_checksum_says_what_to_do(finished, tmp_path, cli):
    import shutil

    copy = tmp_path / "final.pt"
    shutil.copy(finished / "final.pt", copy)
    code, _, err = cli("evaluate", "--checkpoint", copy, "--workers", "0")
    one_line(code, err, copy, "copy it together with its final.pt.sha256")
    assert "did not complete" not in err


def test_config_given_as_a_folder(finished, tmp_path, cli):
    code, _, err = train(cli, finished, tmp_path / "run")
    one_line(code, err, finished, "is a folder", finished / "config.yaml")
    assert "not found" not in err


def test_torchvision_weights_never_advise_weights_only_false(data, tmp_path, cli):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    bad = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, bad)
    code, out, err = cli("evaluate", "--torchvision-weights", bad, "--model", "resnet18", "--data", data,
                         "--workers", "0")
    one_line(code, err, bad, "weights-only")
    assert "weights_only=False" not in err and "unpickled code ran" not in out


def test_sigterm_during_the_final_evaluation_is_answered(recipe, tmp_path, cli, monkeypatch):
    from resnet_repro.training import finish

    real = finish.update_bn_stats

    def precise_bn_then_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # preemption while the final phase runs
        return real(*args, **kwargs)

    monkeypatch.setattr(finish, "update_bn_stats", precise_bn_then_a_signal)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code, out_text, err = train(cli, recipe, tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) is previous  # train() gives the handlers back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 0, err
    assert "signal SIGTERM during the final precise BN / evaluation: finishing them rather than stopping" in out_text
    assert (tmp_path / "run" / "results.json").is_file()
