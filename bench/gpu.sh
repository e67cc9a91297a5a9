#!/usr/bin/env bash
# The one prepared GPU benchmark of issue 5: ResNet-50 v1 training throughput on a lent GPU (an H100), compute
# alone and end to end from JPEG shards, in about five minutes. Run from anywhere; it uses the machine's own
# torch / torchvision with PYTHONPATH=src (no install, no network):
#
#     set -o pipefail; PYTHONUNBUFFERED=1 bash bench/gpu.sh 2>&1 | tee $OUT/gpu.log
#
# Steps: (1) ~3,000 ImageNet-sized photo-like JPEGs (data/synthetic.py on every core, ~500x375, q90) as
# record shards; (2) `resnet-repro bench train` at batch 256: eager and compiled, bf16 and fp32, each with the
# synthetic on-device batch (compute) and, for bf16, end to end from the shards with CPU decode (cores - 2
# loader workers) and with GPU decode (nvJPEG); (3) the CUDA-only tests; (4) one Markdown table, printed last.
# Runs that would start after GPU_BENCH_BUDGET_S seconds are skipped and marked so in the table.
#
# Every size is an environment variable, so the same logic can be checked on a CPU in about a minute:
#     PYTHON=.venv/bin/python GPU_BENCH_IMAGES=16 GPU_BENCH_JPEG_WH=96x72 GPU_BENCH_BATCH=4 GPU_BENCH_SIZE=32 \
#     GPU_BENCH_STEPS=1 GPU_BENCH_WARMUP=1 GPU_BENCH_MODEL=resnet18 GPU_BENCH_COMPILE=0 GPU_BENCH_TESTS=0 \
#     GPU_BENCH_BUDGET_S=3000 GPU_BENCH_TIMEOUT_FACTOR=20 bash bench/gpu.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MODEL=${GPU_BENCH_MODEL:-resnet50}
IMAGES=${GPU_BENCH_IMAGES:-3000}        # training JPEGs to make
JPEG_WH=${GPU_BENCH_JPEG_WH:-500x375}   # their typical width x height (each drawn within +-20 %, a quarter portrait)
BATCH=${GPU_BENCH_BATCH:-256}           # per step, the reference recipe's batch
SIZE=${GPU_BENCH_SIZE:-224}             # train crop side, pixels
STEPS=${GPU_BENCH_STEPS:-60}            # timed steps per phase (60 x 256 = 15,360 images: ~5 passes over the shards)
WARMUP=${GPU_BENCH_WARMUP:-10}          # untimed steps first: cuDNN autotuning, torch.compile, loader start-up
COMPILE=${GPU_BENCH_COMPILE:-1}         # 0 skips the torch.compile runs
TESTS=${GPU_BENCH_TESTS:-1}             # 0 skips the CUDA-only tests
BUDGET=${GPU_BENCH_BUDGET_S:-300}       # seconds after which no further run starts
HARD=${GPU_BENCH_HARD_S:-$(( BUDGET + 60 ))}  # seconds by which every run has ended, so the table always prints
SLOW=${GPU_BENCH_TIMEOUT_FACTOR:-1}     # multiplies each run's time limit (a CPU dry run needs ~20)
CORES=$(nproc)
WORKERS=${GPU_BENCH_WORKERS:-$(( CORES > 3 ? CORES - 2 : 1 ))}  # the trainer and its pin-memory thread keep 2
WORK=${GPU_BENCH_DIR:-/tmp/resnet_repro_gpu_bench}
RESULTS=${OUT:-$WORK}/gpu_bench.jsonl
DATA=$WORK/jpegs
START=$SECONDS
mkdir -p "$WORK" "$(dirname "$RESULTS")"
: > "$RESULTS"

echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): $CORES CPU cores"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY - <<'EOF'
import torch
try:
    import torchvision
    tv = torchvision.__version__
except ImportError:
    tv = "absent"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"torchvision {tv}, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF

# Loader workers hand batches over in shared memory: 14 workers x 4 batches x 38.5 MB is ~2 GB of /dev/shm.
shm_mb=$(df -m --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
echo "/dev/shm: ${shm_mb:-?} MB free"
if [[ -n $shm_mb ]] && (( shm_mb < 8192 )) && [[ $(id -u) == 0 ]]; then
    mount -o remount,size=16g /dev/shm && echo "/dev/shm enlarged to 16 GB for the loader workers"
fi

echo "== making $IMAGES training JPEGs in $DATA"
$PY - "$DATA" "$IMAGES" "$JPEG_WH" <<'EOF' || { echo "could not make the JPEG shards"; exit 1; }
import sys, time
import os
from resnet_repro.data.records import RecordReader
from resnet_repro.data.synthetic import make_jpeg_shards
t = time.time()
w, h = (int(v) for v in sys.argv[3].split("x"))
root = make_jpeg_shards(sys.argv[1], int(sys.argv[2]), 0, 1000, (w, h), workers=os.cpu_count() or 1)
r = RecordReader(root, "train")
print(f"{len(r)} JPEGs, {r.sizes.mean() / 1e3:.0f} kB mean, in {time.time() - t:.0f} s")
EOF

# run NAME EXPECTED_S TIMEOUT_S ARGS...: one `bench train --json`, its JSON object (or its error) appended to RESULTS.
run() {
    local name=$1 expected=$2 limit=$3; shift 3
    local elapsed=$(( SECONDS - START ))
    if (( elapsed + expected > BUDGET )); then
        echo "== $name: skipped (${elapsed} s used, ~${expected} s more would pass the ${BUDGET} s budget)"
        echo "{\"run\": \"$name\", \"error\": \"skipped: time budget\"}" >> "$RESULTS"
        return
    fi
    echo "== $name: bench train $*"
    local t0=$SECONDS left=$(( HARD - elapsed - 5 ))
    limit=$(( limit * SLOW < left ? limit * SLOW : left ))
    timeout "$limit" $PY -m resnet_repro bench train --model "$MODEL" --batch-size "$BATCH" --steps "$STEPS" \
        --warmup "$WARMUP" --json "$@" > "$WORK/$name.json" 2> "$WORK/$name.err"
    local rc=$?
    $PY - "$name" "$rc" "$WORK/$name.json" "$WORK/$name.err" "$(( SECONDS - t0 ))" >> "$RESULTS" <<'EOF'
import json, sys
name, rc, out, err, wall = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
lines = open(out).read().strip().splitlines()
try:
    result = json.loads(lines[-1]) if rc == 0 and lines else None
except json.JSONDecodeError:
    result = None
if result is None:
    tail = [l.strip() for l in open(err).read().strip().splitlines() if l.strip()][-1:]
    result = {"error": ("timed out" if rc == 124 else f"exit {rc}") + ": " + " ".join(tail)[-300:]}
print(json.dumps({"run": name, "wall_s": wall, **result}))
EOF
    tail -n 1 "$RESULTS" | cut -c 1-400
    grep -i "warning" "$WORK/$name.err" | head -3
}

# Expected seconds per run: what the H100 took on 2026-11-26 (eager ~30, compiled ~70 with its compilation).
SHAPE=(--set "data.image_size=$SIZE")
run eager-bf16-cpu-decode 35 120 --precision bf16 --data "$DATA" --decode cpu --workers "$WORKERS" "${SHAPE[@]}"
run eager-bf16-gpu-decode 35 120 --precision bf16 --data "$DATA" --decode gpu --workers "$WORKERS" "${SHAPE[@]}"
run eager-fp32 35 90 --precision fp32 --synthetic "${SHAPE[@]}"
if [[ $COMPILE == 1 ]]; then
    run compiled-bf16-cpu-decode 75 200 --compile --precision bf16 --data "$DATA" --decode cpu --workers "$WORKERS" \
        "${SHAPE[@]}"
    run compiled-fp32 75 170 --compile --precision fp32 --synthetic "${SHAPE[@]}"
fi
# Optional: CPU-decode end to end with other worker counts (e.g. GPU_BENCH_SWEEP_WORKERS="10 12"), to see whether
# leaving the training process more cores shortens its steps.
for w in ${GPU_BENCH_SWEEP_WORKERS:-}; do
    run "eager-bf16-cpu-decode-w$w" 35 120 --precision bf16 --data "$DATA" --decode cpu --workers "$w" "${SHAPE[@]}"
done

if [[ $TESTS == 1 ]]; then
    if (( SECONDS - START + 40 <= HARD )); then
        echo "== CUDA-only tests (nvJPEG vs CPU decode, GPU vs CPU crop path, side-stream prefetch, no sync per step)"
        timeout $(( HARD - (SECONDS - START) )) $PY -m pytest -q -p no:cacheprovider tests/test_gpu_decode.py tests/test_prefetch.py \
            tests/test_bench_train.py -k "cuda or nvjpeg" -rfEs > "${OUT:-$WORK}/gpu_tests.log" 2>&1
        tail -n 25 "${OUT:-$WORK}/gpu_tests.log"
    else
        echo "== CUDA-only tests: skipped (time budget)"
    fi
fi

echo "== results ($(( SECONDS - START )) s in all; JSON lines in $RESULTS)"
$PY - "$RESULTS" "$MODEL" "$BATCH" "$SIZE" "$IMAGES" "$WORKERS" "$JPEG_WH" <<'EOF'
import json, sys
path, model, batch, size, images, workers, jpeg_wh = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
ok = [r for r in rows if "error" not in r]
card = ok[0]["device_name"] if ok else "?"
print(f"\n{model} v1, batch {batch}, {size}x{size}, channels_last - {card}, torch {ok[0]['torch'] if ok else '?'}; "
      f"{images} synthetic photo-like JPEGs ({jpeg_wh} q90), {workers} loader workers\n")
print("| run | precision | mode | compute img/s | model TFLOP/s | end-to-end img/s | decode | e2e / compute | data wait | peak GPU MB |")
print("|---|---|---|---:|---:|---:|---|---:|---:|---:|")
fmt = lambda v, f: "-" if v is None else format(v, f)
for r in rows:
    if "error" in r:
        print(f"| {r['run']} | | | {r['error'][:120]} | | | | | | |")
        continue
    e2e = r.get("end_to_end_images_per_s")
    print(f"| {r['run']} | {r['precision']} | {'compiled' if r['compile'] else 'eager'} | "
          f"{r['compute_images_per_s']:,.0f} | {r['compute_tflops']:.1f} | {fmt(e2e, ',.0f')} | "
          f"{r['decode'] + ' (' + str(r['workers']) + ' workers)' if e2e is not None else '-'} | "
          f"{fmt(r.get('end_to_end_over_compute'), '.3f')} | "
          f"{fmt(None if e2e is None else 100 * r['data_wait_fraction'], '.1f')}{'' if e2e is None else ' %'} | "
          f"{r['peak_memory_mb']:,.0f} |")
bf16 = [r for r in ok if r["precision"] == "bf16"]
best = max((r["compute_images_per_s"] for r in bf16), default=None)
print()
if best is not None:
    print(f"target bf16 compute >= 3,000 img/s: {'MET' if best >= 3000 else 'NOT MET'} (best {best:,.0f})")
for r in ok:
    if r.get("end_to_end_over_compute") is not None:
        ratio = r["end_to_end_over_compute"]
        print(f"target end to end >= 0.95 x compute, {r['run']}: {'MET' if ratio >= 0.95 else 'NOT MET'} ({ratio:.3f})")
EOF
