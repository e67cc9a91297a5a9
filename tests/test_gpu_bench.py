"""tools/gpu.sh, the prepared GPU run: its CPU dry run end to end (the JSON lines it writes, the table it prints,
GPU phases skipped with their reason), the time budget, and the target verdicts from made-up rows."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def tool(name: str, monkeypatch):
    """tools/NAME.py as a module. Registered under its name, as when tools/gpu_bench.py runs as a script and
    imports gpu_bench_table from its own folder."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def dry_run(tmp_path, *extra, out=None):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    if out is not None:
        env["OUT"] = str(out)
    p = subprocess.run(["bash", str(REPO / "tools" / "gpu.sh"), "--dry-run", "--results", str(tmp_path / "results"),
                        "--work", str(tmp_path / "work"), *extra], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    (path,) = (tmp_path / "results").iterdir()
    return path, [json.loads(line) for line in path.read_text().splitlines()], p.stdout


def test_the_dry_run_writes_a_dated_row_per_measurement_with_the_device_in_each(tmp_path):
    path, rows, out = dry_run(tmp_path)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{4}-[a-z0-9-]+\.jsonl", path.name), path.name
    assert path.name.startswith(rows[0]["date"][:10])
    device = rows[0]["device_name"]
    assert device and all(r["device_name"] == device and r["dry_run"] is True and r["run"] for r in rows)
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    assert by_kind["machine"][0]["cores"] == os.cpu_count() and by_kind["data"][0]["images"] == 48

    (eager,) = [r for r in by_kind["compute"] if r.get("compile_mode") is None]
    assert eager["images_per_s"] > 0 and eager["peak_memory_mb"] > 0
    cpu = [r for r in by_kind["end_to_end"] if r["decode"] == "cpu"]
    assert sorted(r["affinity"] for r in cpu) == ["none", "plan"]  # the two layouts compared
    for r in cpu:
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_fraction"] < 1 and "loader worker(s)" in r["core_plan"]
        assert r["over_compute"] == pytest.approx(r["images_per_s"] / eager["images_per_s"])
    # Every GPU phase is a row that says why it did not run.
    (gpu,) = [r for r in by_kind["end_to_end"] if r["decode"] == "gpu"]
    compiled = [r for r in by_kind["compute"] if r.get("compile_mode")]
    assert {r["compile_mode"] for r in compiled} == {"default", "reduce-overhead", "max-autotune",
                                                     "max-autotune-no-cudagraphs"}
    for r in [gpu, *compiled, *by_kind["tests"], *by_kind["gpu_decode"]]:
        assert "needs CUDA" in r["skipped"] and "images_per_s" not in r

    loader = by_kind["loader"]
    assert [r["workers"] for r in loader] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["per_worker_vs_decode_limit"] > 0 for r in loader)
    assert loader[0]["per_worker_vs_parallel_limit"] is None and loader[1]["per_worker_vs_parallel_limit"] > 0
    assert loader[0]["vs_n_times_one"] == pytest.approx(1.0)
    assert loader[1]["vs_n_times_one"] == pytest.approx(loader[1]["images_per_s"] / (2 * loader[0]["images_per_s"]))

    assert "| run | img/s | x compute |" in out and f"{len(rows)} rows in {path}" in out
    assert "target compiled compute >= 6,000 img/s: not measured" in out
    assert "layout, CPU decode, eager:" in out


def test_phases_past_the_budget_are_rows_that_say_so_and_out_gets_a_copy(tmp_path):
    (tmp_path / "out").mkdir()
    path, rows, out = dry_run(tmp_path, "--budget-s", "1", out=tmp_path / "out")
    assert (tmp_path / "out" / path.name).read_text() == path.read_text()  # a lent machine returns only $OUT
    skipped = {r["run"]: r["skipped"] for r in rows if "skipped" in r}
    assert "budget" in skipped["eager-fp32"] and "budget" in skipped["loader-scaling"]
    assert not any("images_per_s" in r for r in rows)
    assert "| run |" in out  # the table prints whatever ran


def test_target_verdicts_from_rows(monkeypatch):
    gbt = tool("gpu_bench_table", monkeypatch)
    gb = tool("gpu_bench", monkeypatch)
    row = lambda kind, **f: {"kind": kind, "run": "r", "device_name": "H", "date": "d", **f}  # noqa: E731
    rows = [row("compute", compile_mode=None, images_per_s=4000.0),
            row("compute", compile_mode="default", images_per_s=5900.0),
            row("compute", compile_mode="max-autotune", images_per_s=6100.0),
            row("end_to_end", compile_mode=None, decode="cpu", affinity="plan", images_per_s=3900.0,
                over_compute=0.975),
            row("end_to_end", compile_mode=None, decode="cpu", affinity="none", images_per_s=3500.0,
                over_compute=0.875),
            row("end_to_end", compile_mode="default", decode="gpu", affinity="plan", images_per_s=5000.0,
                over_compute=0.847),
            row("gpu_decode", phase="decode_threads", images_per_s=4000.0, batch_ms=64.0, threads=2, batch_size=256,
                images_per_s_per_batch=[3900.0, 4100.0]),
            row("loader", workers=1, images_per_s=1300.0, vs_n_times_one=1.0, per_worker_vs_decode_limit=1.0),
            row("loader", workers=8, images_per_s=9900.0, vs_n_times_one=0.952, per_worker_vs_decode_limit=0.95),
            row("loader", workers=14, images_per_s=15000.0, vs_n_times_one=0.824, per_worker_vs_decode_limit=0.82,
                per_worker_vs_parallel_limit=0.99, decode_limit_parallel_per_s=1082.0, decode_limit_per_s=1300.0)]
    lines = gbt.targets(rows)
    assert "target compiled compute >= 6,000 img/s (best: max-autotune): MET (6,100, goal 6,000)" in lines
    assert "target end to end, GPU decode >= 0.95 x compiled compute: NOT MET (0.847, goal 0.950)" in lines
    assert "target end to end, CPU decode >= 0.95 x eager compute: MET (0.975, goal 0.950)" in lines
    assert any(line.startswith("layout, CPU decode, eager: pinned (core plan) wins") for line in lines)
    assert "target loader N workers >= 0.9 N x one (worst N): NOT MET (0.824, goal 0.900)" in lines
    assert "target loader per worker >= 0.85 x decode limit (worst N): NOT MET (0.820, goal 0.850)" in lines
    text = gbt.table(rows, dict(gb.FULL), dry=False)
    assert text.count("\n| r ") == len(rows) and "peak GPU MB" in text
    assert "| r (no trainer) | 4,000 | | | | 64.0 ms per batch of 256, 2 threads; batches 3,900-4,100 img/s |" in text
    assert "0.82 x the one-core decode limit (1,300 img/s) per worker; 0.82 x N x one worker; 0.99 x what 14 cores " \
           "decoding at once give each (1,082 img/s); " in text


def test_a_layout_wins_only_beyond_the_spread_of_its_rounds(monkeypatch):
    """On the H200 (2026-12-04) one round each put whichever layout ran first 10-16 % behind, so a verdict needs
    rounds, and it names a winner only where the two layouts' rounds do not overlap."""
    gbt = tool("gpu_bench_table", monkeypatch)

    def e2e(affinity, rounds):
        return {"kind": "end_to_end", "run": affinity, "compile_mode": None, "decode": "cpu", "affinity": affinity,
                "images_per_s": sorted(rounds)[len(rounds) // 2], "over_compute": 0.99, "images_per_s_rounds": rounds}

    overlap = gbt.targets([e2e("plan", [4700.0, 4836.0, 4850.0]), e2e("none", [4318.0, 4832.0, 4770.0])])
    (line,) = [ln for ln in overlap if ln.startswith("layout, CPU decode, eager:")]
    assert "neither wins" in line and "4,836 pinned vs 4,770 unpinned" in line and "4,318-4,832 unpinned" in line
    apart = gbt.targets([e2e("plan", [4300.0, 4350.0, 4400.0]), e2e("none", [4800.0, 4875.0, 4900.0])])
    (line,) = [ln for ln in apart if ln.startswith("layout, CPU decode, eager:")]
    assert line.startswith("layout, CPU decode, eager: unpinned wins (4,350 pinned vs 4,875 unpinned img/s, medians")
    # The H200's own rounds: every pinned round at or above every unpinned one.
    h200 = gbt.targets([e2e("plan", [4836.0, 4836.0, 4836.0]), e2e("none", [4318.0, 4832.0, 4770.0])])
    assert any(ln.startswith("layout, CPU decode, eager: pinned (core plan) wins (4,836 pinned vs 4,770")
               for ln in h200)
    one = gbt.targets([e2e("plan", [4349.0]), e2e("none", [4875.0])])
    assert any(ln.endswith("unpinned wins (4,349 pinned vs 4,875 unpinned img/s, one round each)") for ln in one)
