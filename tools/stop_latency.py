"""How long a training run takes to stop after SIGTERM (or SIGINT): signal -> checkpoint written -> process gone.

    python tools/stop_latency.py --config configs/fashion_mnist/resnet20.yaml --delays 20,47,90 [--signal INT]

Each round starts `resnet-repro train` into a fresh run folder, sends the signal `delay` seconds after the
process started (so it lands at an arbitrary point of an epoch, mid-step, during the loader's start-up or an
evaluation), then waits for the exit. It prints, per round: the seconds from the signal to the newest
checkpoint's write and to the exit, the exit status, and the step named in the "checkpoint saved" line.
Clusters grant ~30 s between SIGTERM and SIGKILL; one process should stop well within 10 s.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resnet_repro.bench import machine  # the machine facts every bench prints
from resnet_repro.bench.measure import Spread


def one_round(config: str, delay: float, signum: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="stop_latency_"))
    try:
        cmd = [sys.executable, "-m", "resnet_repro", "train", "--config", config, "--out", str(out / "run"), *extra]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(delay)
        if p.poll() is not None:
            raise SystemExit(f"the run ended before the signal ({delay} s): {p.stdout.read()[-2000:]}")
        t_sig = time.time()
        p.send_signal(signum)
        log, _ = p.communicate(timeout=600)
        t_exit = time.time()
        ckpts = sorted((out / "run" / "checkpoints").glob("ckpt-*.pt"), key=lambda q: q.stat().st_mtime)
        t_ckpt = ckpts[-1].stat().st_mtime if ckpts else float("nan")
        m = re.search(r"checkpoint saved at epoch (\d+) step (\d+)", log)
        return {"delay_s": delay, "signal": signal.Signals(signum).name, "exit_status": p.returncode,
                "signal_to_checkpoint_s": round(t_ckpt - t_sig, 2), "signal_to_exit_s": round(t_exit - t_sig, 2),
                "stopped_at": f"epoch {m.group(1)} step {m.group(2)}" if m else None,
                "checkpoint_after_signal": bool(ckpts) and t_ckpt >= t_sig}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fashion_mnist/resnet20.yaml")
    ap.add_argument("--delays", default="20,47,90", help="seconds after start, comma-separated")
    ap.add_argument("--signal", default="TERM", choices=["TERM", "INT", "USR1"])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signum = getattr(signal, "SIG" + args.signal)
    extra = [x for s in args.set for x in ("--set", s)]
    print(f"{machine.line(machine.describe())}; recipe {args.config}", flush=True)
    rows = []
    for d in (float(x) for x in args.delays.split(",")):
        row = one_round(args.config, d, signum, extra)
        rows.append(row)
        print(json.dumps(row) if args.json else
              f"signal at {d:>5.0f} s: checkpoint {row['signal_to_checkpoint_s']:>5.2f} s, exit "
              f"{row['signal_to_exit_s']:>5.2f} s after it, status {row['exit_status']}, {row['stopped_at']}",
              flush=True)
    worst = max(r["signal_to_exit_s"] for r in rows)
    print(f"worst signal-to-exit: {worst:.2f} s over {len(rows)} rounds; seconds from the signal to the exit: "
          f"{Spread.of(r['signal_to_exit_s'] for r in rows).text('.2f')}; to the checkpoint: "
          f"{Spread.of(r['signal_to_checkpoint_s'] for r in rows).text('.2f')}")
    return 0 if all(r["exit_status"] == 0 and r["checkpoint_after_signal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
