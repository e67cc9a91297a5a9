"""The prepared GPU run of issue 15 (started by tools/gpu.sh): ResNet-50 v1 compute, end to end with CPU and GPU
JPEG decoding, torch.compile modes, loader scaling and the CUDA-only tests, in about 8 minutes on one H100 or H200
with 16 cores, data making included. It prints one table and writes one JSON object per row to
tools/results/DATE-TIME-DEVICE.jsonl (and a copy to $OUT when that is set); every row names the device.

Phases, in order of what the issue needs most; one starts only if its expected time fits the budget, and each
runs as its own process under a time limit, so a crash or a hang costs one row, never the table:

 1. machine: CPU and its class, cores, GPUs (resnet_repro.bench.machine), versions, /dev/shm; the native
    region-decode helper built with gcc if it is not there
 2. data: photo-like ~500x375 q90 JPEG shards (data/sources/synthetic.py, every core)
 3. eager bf16: compute, then end to end with CPU decode (workers from the core plan, pinned and not pinned:
    which layout wins), GPU decode (4 workers, decode-ahead on a side stream) and GPU decode of half of each batch
    (data.gpu_decode_share 0.5: the core plan's workers decode the other half); the five alternate over 3
    rounds and each reports its median round, because on the H200 (2026-12-04) a single round put whichever
    layout ran first 10-16 % behind (pinned 4,349 vs unpinned 4,875 img/s in one order; 4,836 vs 4,770 over
    alternating rounds)
 4. compiled bf16 (torch.compile default mode): the same
 5. the CUDA-only tests (nvJPEG vs the CPU decoder, GPU vs CPU crop path, decode-ahead on CUDA, no sync per step)
 6. GPU decoding without a trainer, step by step (`bench gpu-decode`): nvJPEG alone, split over 2 threads, with
    the crops, a whole decode-ahead batch (on the H200 GPU decoding fed 0.82 x eager compute, workers or not)
 7. loader scaling: `bench loader` with 1, 2, 4, 8 and auto (cores - 2) workers, no trainer
 8. compile modes, compute only: reduce-overhead, max-autotune-no-cudagraphs, max-autotune

--dry-run: the same logic on a CPU in about a minute (tiny data and model, a second or two per phase); the GPU
phases become rows that say why they were skipped. The test suite runs it (tests/test_gpu_bench.py).

It imports the installed package (tools/gpu.sh installs this tree where it is not) and, run as a script, its
table from gpu_bench_table.py next to it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from resnet_repro.bench import machine  # the machine facts every bench prints
from resnet_repro.bench.e2e import share_text  # ", 50 % on the GPU" for a split GPU-decode row

from gpu_bench_table import table  # next to this file: Python puts a script's own folder first on its path

REPO = Path(__file__).resolve().parents[1]

# Sizes: the full run's (an H100 or H200 with 16 cores) and the dry run's. Expected seconds per phase are from the
# 2026-12-04 H200 run (data 24 s; eager phase 38 s and compiled 77 s with one round, so ~3x the end-to-end part with
# three; reduce-overhead 51 s), plus a margin, plus 15-20 s for the split-decode variant added since.
# max-autotune-no-cudagraphs outlasted 169 s there (one convolution autotuned for 10 s over 21 choices), so within
# the budget both max-autotune modes are rows saying they did not fit.
FULL = dict(images=2560, jpeg_wh=(500, 375), model="resnet50", batch=256, size=224, steps=50, warmup=10, rounds=3,
            gpu_workers=4, gpu_share=0.5, loader_batch=64, loader_batches=200, loader_workers="1,2,4,8,auto",
            budget_s=480,
            expect={"data": 35, "eager": 115, "compiled": 180, "tests": 45, "gpu_decode": 40, "loader": 70,
                    "reduce-overhead": 70, "max-autotune-no-cudagraphs": 300, "max-autotune": 300},
            limit={"eager": 220, "compiled": 300, "tests": 120, "gpu_decode": 120, "loader": 150, "mode": 240})
DRY = dict(images=48, jpeg_wh=(96, 72), model="resnet20", batch=8, size=32, steps=2, warmup=1, rounds=2,
           gpu_workers=1, gpu_share=0.5, loader_batch=8, loader_batches=4, loader_workers="1,2", budget_s=600,
           expect={"data": 5, "eager": 20, "compiled": 0, "tests": 0, "gpu_decode": 0, "loader": 30,
                   "reduce-overhead": 0, "max-autotune-no-cudagraphs": 0, "max-autotune": 0},
           limit={"eager": 300, "compiled": 0, "tests": 0, "gpu_decode": 0, "loader": 300, "mode": 0})
COMPILE_MODES = ("reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; GPU phases skipped (stated)")
    p.add_argument("--results", default=str(REPO / "tools" / "results"), help="folder for the JSON lines file")
    p.add_argument("--work", default="/tmp/resnet_repro_gpu_bench", help="scratch folder (data, raw outputs)")
    p.add_argument("--budget-s", type=float, help="no phase starts that would end after this (default 480; "
                                                  "the dry run 600)")
    a = p.parse_args(argv)
    sizes = dict(DRY if a.dry_run else FULL)
    if a.budget_s:
        sizes["budget_s"] = a.budget_s
    return Bench(sizes, a.dry_run, Path(a.results), Path(a.work)).run()


class Bench:
    def __init__(self, sizes: dict, dry: bool, results: Path, work: Path):
        import torch

        self.s, self.dry, self.work, self.t0 = sizes, dry, work, time.monotonic()
        self.cuda = torch.cuda.is_available() and not dry
        self.facts = machine.describe()  # not self.machine: that is the phase
        self.device_name = (torch.cuda.get_device_name() if self.cuda else
                            f"{self.facts['cpu']} ({self.facts['cores']} cores{', dry run' if dry else ''})")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.date = now.strftime("%Y-%m-%d %H:%M UTC")
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")[:40]
        results.mkdir(parents=True, exist_ok=True)
        self.path = results / f"{now:%Y-%m-%d-%H%M}-{slug}.jsonl"
        self.rows: list[dict] = []
        # The lent machine returns only what is under $OUT: the rows and each phase's raw output go there too.
        out = os.environ.get("OUT")
        self.copy = Path(out) / self.path.name if out and Path(out).is_dir() else None
        self.logs = Path(out) / "gpu-bench-logs" if self.copy else work
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    # --- Rows and processes ---------------------------------------------------------------------------------

    def row(self, kind: str, run: str, **fields) -> dict:
        r = {"kind": kind, "run": run, "device_name": self.device_name, "date": self.date,
             "dry_run": self.dry, **fields}
        self.rows.append(r)
        for path in (self.path, self.copy):
            if path is not None:
                with open(path, "a") as f:
                    f.write(json.dumps(r) + "\n")
        return r

    def clip(self, limit: float) -> float:
        """A phase's time limit, cut so that every phase has ended a minute after the budget (the table prints)."""
        return max(5.0, min(limit, self.s["budget_s"] + 60 - self.elapsed()))

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, kind: str, run: str, expected: float) -> bool:
        """Whether a phase expected to take `expected` s still fits the budget; if not, a row says so."""
        if self.elapsed() + expected <= self.s["budget_s"]:
            return True
        why = (f"skipped: {self.elapsed():.0f} s used, ~{expected:.0f} s more would pass the "
               f"{self.s['budget_s']:.0f} s budget")
        print(f"== {run}: {why}", flush=True)
        self.row(kind, run, skipped=why)
        return False

    def command(self, name: str, args: list[str], limit: float) -> tuple[dict | None, str]:
        """Run `python -m resnet_repro ARGS`; its last stdout line as JSON, or None and why. The process and its
        children (loader workers) are killed at `limit` seconds (less if the budget's end comes first)."""
        cmd = [sys.executable, "-m", "resnet_repro"] + args
        limit = self.clip(limit)
        print(f"== {name}: resnet-repro {' '.join(args)}", flush=True)
        t = time.monotonic()
        rc, out, err = self.process(name, cmd, limit)
        lines = out.strip().splitlines()
        if rc == 0 and lines:
            try:
                result = json.loads(lines[-1])
                result["wall_s"] = round(time.monotonic() - t, 1)
                return result, ""
            except json.JSONDecodeError:
                pass
        tail = [ln.strip() for ln in err.splitlines() if ln.strip()][-1:]
        why = f"timed out after {limit:.0f} s" if rc is None else f"exit {rc}"
        why += ": " + tail[0][-300:] if tail else ""
        print(f"   {why} (stderr: {self.logs / (name + '.err')})", flush=True)
        return None, why

    def process(self, name: str, cmd: list[str], limit: float) -> tuple[int | None, str, str]:
        """(exit status or None if killed at the limit, stdout, stderr); both also kept in the logs folder."""
        limit = self.clip(limit)
        out_path, err_path = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its whole session: loader workers too
                proc.wait()
                rc = None
        return rc, out_path.read_text(), err_path.read_text()

    # --- Phases ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        print(f"== {self.date} on {platform.node()}: {machine.line(self.facts)}; device: {self.device_name}"
              f"{' (DRY RUN: tiny sizes, GPU phases skipped)' if self.dry else ''}", flush=True)
        self.machine()
        data = self.data()
        if data is not None:
            self.train_phase("eager", data, compile_mode=None)
            self.train_phase("compiled", data, compile_mode="default")
            self.cuda_tests()
            self.gpu_decode(data)
            self.loader(data)
            self.compile_modes()
        print(f"== done in {self.elapsed():.0f} s; {len(self.rows)} rows in {self.path}", flush=True)
        print(table(self.rows, self.s, self.dry))
        if self.copy is not None:  # the lent machine returns at most 8 files from $OUT: the phase logs as one
            shutil.make_archive(str(self.logs), "gztar", self.logs.parent, self.logs.name)
            shutil.rmtree(self.logs)
            print(f"phase logs: {self.logs}.tar.gz", flush=True)
        return 0

    def machine(self) -> None:
        import torch

        try:
            import torchvision
            tv = torchvision.__version__
        except ImportError:
            tv = None
        shm = shutil.disk_usage("/dev/shm").free // 2**20 if Path("/dev/shm").is_dir() else None
        helper = self.native_helper()
        smi = None
        if shutil.which("nvidia-smi"):
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True)
            smi = q.stdout.strip() or None
        r = self.row("machine", "machine", host=platform.node(), **self.facts, python=platform.python_version(),
                     torch=torch.__version__, cuda=torch.version.cuda, torchvision=tv, nvidia_smi=smi,
                     dev_shm_free_mb=shm, native_helper=helper)
        print("   " + ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("kind", "run", "date", "dry_run")),
              flush=True)
        if shm is not None and shm < 8192:
            print(f"   warning: /dev/shm has {shm} MB free; loader workers hand batches over there (14 workers x 4 "
                  "batches x 38.5 MB is ~2 GB)", flush=True)

    def native_helper(self) -> str:
        """Region decoding needs data/decode/_jpeg_region.c built for this machine: build it with gcc if it is
        missing (the working tree arrives without build outputs; gpu.sh has this tree installed, so the package
        imports from src/). The dry run only reports."""
        check = [sys.executable, "-c", "from resnet_repro.data.decode import jpeg_region as j; "
                 "print('available' if j.available() else 'unavailable: ' + j.unavailable_reason())"]
        state = subprocess.run(check, capture_output=True, text=True).stdout.strip()
        if state == "available" or self.dry:
            return state
        src = REPO / "src" / "resnet_repro" / "data" / "decode" / "_jpeg_region.c"
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            return f"not built (no C compiler): crops decode whole images with OpenCV; {state}"
        b = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(src.with_suffix(".so")), str(src), "-ljpeg"],
                           capture_output=True, text=True)
        if b.returncode != 0:
            err = (b.stderr.strip().splitlines() or ["?"])[0][:200]
            return f"not built ({err}): crops decode whole images with OpenCV"
        state = subprocess.run(check, capture_output=True, text=True).stdout.strip()
        return f"built with {Path(cc).name}: {state}"

    def data(self) -> Path | None:
        """The JPEG shards, made by tools/make_jpeg_shards.py in its own process (on every core; this process has
        CUDA and torch's threads up, which forked image makers would inherit)."""
        from resnet_repro.data.shards.reader import RecordReader

        root = self.work / ("jpegs-dry" if self.dry else "jpegs")
        n, (w, h) = self.s["images"], self.s["jpeg_wh"]
        t = time.monotonic()

        def made() -> bool:
            try:
                return len(RecordReader(root, "train")) == n
            except Exception:  # noqa: BLE001 - absent or unreadable: make it again
                return False

        if not made():
            shutil.rmtree(root, ignore_errors=True)
            cmd = [sys.executable, str(REPO / "tools" / "make_jpeg_shards.py"), "--out", str(root), "--train", str(n),
                   "--val", "0", "--classes", "10" if self.dry else "1000", "--size", f"{w}x{h}",
                   "--workers", str(self.facts["usable_cores"])]
            print(f"== data: {' '.join(cmd[1:])}", flush=True)
            rc, _, err = self.process("data", cmd, 300)
            if rc != 0 or not made():
                tail = [ln for ln in err.splitlines() if ln.strip()][-1:]
                why = f"could not make the JPEG shards ({'timed out' if rc is None else f'exit {rc}'}: {tail})"
                self.row("data", "data", error=why)
                print(f"   {why}", flush=True)
                return None
        kb = float(RecordReader(root, "train").sizes.mean()) / 1e3
        self.row("data", "data", images=n, jpeg_wh=[w, h], mean_kb=round(kb, 1), seconds=round(time.monotonic() - t, 1))
        print(f"== data: {n} JPEGs ~{w}x{h} q90, {kb:.0f} kB mean, in {time.monotonic() - t:.0f} s ({root})",
              flush=True)
        return root

    def train_phase(self, name: str, data: Path, compile_mode: str | None) -> None:
        run = f"{name}-bf16" if self.cuda else f"{name}-fp32"
        if not self.cuda and not (self.dry and compile_mode is None):
            self.row("compute", run, compile_mode=compile_mode, skipped="needs CUDA" + (
                " (compiling the model on a CPU takes minutes)" if self.dry else "; on a CPU use --dry-run"))
            return
        if not self.fits("compute", run, self.s["expect"][name]):
            return
        s = self.s
        variants = ["cpu:auto:plan", "cpu:auto:none"] + ([f"gpu:{s['gpu_workers']}:plan",
                                                          f"gpu:auto:plan:{s['gpu_share']}"] if self.cuda else [])
        args = ["bench", "train", "--model", s["model"], "--batch-size", str(s["batch"]), "--steps", str(s["steps"]),
                "--warmup", str(s["warmup"]), "--rounds", str(s["rounds"]), "--precision",
                "bf16" if self.cuda else "fp32", "--data", str(data), "--set", f"data.image_size={s['size']}", "--json"]
        args += [x for v in variants for x in ("--e2e", v)]
        if compile_mode:
            args += ["--compile-mode", compile_mode]
        if self.dry:
            args += ["--device", "cpu"]
        result, why = self.command(run, args, s["limit"][name])
        if result is None:
            self.row("compute", run, compile_mode=compile_mode, error=why)
            return
        self.compute_row(run, compile_mode, result)
        for e in result["end_to_end"]:
            self.row("end_to_end",
                     f"{run} {e['decode']} decode{share_text(e)}, {e['workers']} workers, affinity {e['affinity']}",
                     compile_mode=compile_mode, compute_images_per_s=result["compute_images_per_s"],
                     peak_memory_mb=result["peak_memory_mb"], **e)
        if not self.cuda:
            self.row("end_to_end", f"{run} gpu decode", compile_mode=compile_mode, decode="gpu",
                     skipped="needs CUDA and torchvision (nvJPEG)")

    def cuda_tests(self) -> None:
        if not self.cuda:
            self.row("tests", "cuda-tests", skipped="needs CUDA")
            return
        if not self.fits("tests", "cuda-tests", self.s["expect"]["tests"]):
            return
        files = ["tests/test_gpu_decode.py", "tests/test_prefetch.py", "tests/test_bench_train.py",
                 "tests/test_decode_ahead.py"]
        print("== cuda-tests: " + " ".join(files), flush=True)
        t = time.monotonic()
        # No -q: pyproject's addopts has one, and a second (-qq) drops the "N failed, M passed" line the row reads
        # (both H200 runs of 2026-12-04 summarised as "exit 1").
        rc, out, err = self.process("cuda-tests", [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                                   "-rfEs", *files, "-k", "cuda or nvjpeg"], self.s["limit"]["tests"])
        text = out + err
        lines = [ln for ln in text.splitlines() if ln.strip()]
        summary = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\d+ (passed|failed)", ln)),
                       "timed out" if rc is None else f"exit {rc}")
        failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        self.row("tests", "cuda-tests", summary=summary, failed=failed, returncode=rc,
                 seconds=round(time.monotonic() - t, 1))
        print("   " + summary + "".join("\n   " + f for f in failed), flush=True)

    def gpu_decode(self, data: Path) -> None:
        if not self.cuda:
            self.row("gpu_decode", "gpu-decode", skipped="needs CUDA and torchvision (nvJPEG)")
            return
        if not self.fits("gpu_decode", "gpu-decode", self.s["expect"]["gpu_decode"]):
            return
        s = self.s
        result, why = self.command("gpu-decode", ["bench", "gpu-decode", "--data", str(data), "--batch-size",
                                                  str(s["batch"]), "--batches", "10", "--threads", "2", "--set",
                                                  f"data.image_size={s['size']}", "--json"], s["limit"]["gpu_decode"])
        if result is None:
            self.row("gpu_decode", "gpu-decode", error=why)
            return
        for phase, rate in result["images_per_s"].items():
            self.row("gpu_decode", f"gpu-decode {phase}", phase=phase, images_per_s=rate,
                     batch_ms=result["batch_ms"][phase], images_per_s_per_batch=result["images_per_s_per_batch"][phase],
                     threads=result["threads"], batch_size=result["batch_size"], mean_kb=result["mean_kb"])

    def loader(self, data: Path) -> None:
        if not self.fits("loader", "loader-scaling", self.s["expect"]["loader"]):
            return
        s = self.s
        args = ["bench", "loader", "--data", str(data), "--workers", s["loader_workers"], "--batch-size",
                str(s["loader_batch"]), "--batches", str(s["loader_batches"]), "--device",
                "cuda" if self.cuda else "cpu", "--json"]
        if self.dry:
            args += ["--set", f"data.image_size={s['size']}"]
        result, why = self.command("loader-scaling", args, s["limit"]["loader"])
        if result is None:
            self.row("loader", "loader-scaling", error=why)
            return
        one = next((r for r in result["runs"] if r["workers"] == 1), None)
        for r in result["runs"]:
            self.row("loader", f"loader {r['workers']} workers", workers=r["workers"], images_per_s=r["images_per_s"],
                     images_per_s_per_worker=r["images_per_s_per_worker"],
                     per_worker_vs_decode_limit=r["per_worker_vs_decode_limit"],
                     vs_n_times_one=r["images_per_s"] / (r["workers"] * one["images_per_s"]) if one else None,
                     decode_limit_per_s=result["decode_limit_per_s"], region_decode=result["region_decode"],
                     core_plan=r["core_plan"], main_cpu_ms_per_image=r["main_cpu_ms_per_image"],
                     rss_growth_mb_per_worker=r["rss_growth_mb_per_worker"], timed_images=r["timed_images"],
                     images_per_s_windows=r["images_per_s_windows"],
                     decode_limit_parallel_per_s=r.get("decode_limit_parallel_per_s"),
                     per_worker_vs_parallel_limit=r.get("per_worker_vs_parallel_limit"),
                     batch_size=result["batch_size"], device=result["device"])

    def compile_modes(self) -> None:
        s = self.s
        for mode in COMPILE_MODES:
            run = f"compiled-{'bf16' if self.cuda else 'fp32'}-{mode}"
            if not self.cuda:
                self.row("compute", run, compile_mode=mode, skipped="needs CUDA")
                continue
            if not self.fits("compute", run, s["expect"][mode]):
                continue
            result, why = self.command(run, ["bench", "train", "--model", s["model"], "--batch-size", str(s["batch"]),
                                              "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
                                              "--precision", "bf16", "--synthetic", "--set",
                                              f"data.image_size={s['size']}", "--compile-mode", mode, "--json"],
                                       s["limit"]["mode"])
            if result is None:
                self.row("compute", run, compile_mode=mode, error=why)
                continue
            self.compute_row(run, mode, result)

    def compute_row(self, run: str, compile_mode: str | None, result: dict) -> None:
        """The row of a `bench train --json` result's compute phase."""
        self.row("compute", run, compile_mode=compile_mode, precision=result["precision"],
                 images_per_s=result["compute_images_per_s"], step_ms=result["compute_step_ms"],
                 step_ms_min=result["compute_step_ms_min"], step_ms_max=result["compute_step_ms_max"],
                 tflops=result["compute_tflops"], peak_memory_mb=result["peak_memory_mb"],
                 model=result["model"], batch_size=result["batch_size"], image_size=result["image_size"],
                 torch=result["torch"], wall_s=result["wall_s"])


if __name__ == "__main__":
    sys.exit(main())
