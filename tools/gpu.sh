#!/usr/bin/env bash
# The one prepared GPU run (issue 15): ResNet-50 v1 compute eager and compiled, end to end with CPU decoding (core
# plan pinned and not) and GPU decoding (decode-ahead, 4 workers), torch.compile modes, loader scaling, the
# CUDA-only tests; one table printed last, one JSON line per row in bench/results/DATE-TIME-DEVICE.jsonl (copied to
# $OUT when set). About 8 minutes on one H100 with 16 cores, data making included. From the repository root:
#
#     set -o pipefail; PYTHONUNBUFFERED=1 bash bench/gpu.sh 2>&1 | tee $OUT/gpu.log
#
# It uses the machine's own python3 (torch, torchvision, OpenCV, numpy) with PYTHONPATH=src: no install, no
# network. The native region-decode helper is built with gcc if libjpeg's headers are there (else the crops decode
# whole images, and the machine row says so). Phases and sizes: bench/gpu_bench.py.
#
# CPU dry run (tiny sizes, GPU phases skipped with the reason; tests/test_gpu_bench.py runs it):
#     PYTHON=.venv/bin/python bash bench/gpu.sh --dry-run --results /tmp/gpu-dry --work /tmp/gpu-dry-work
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
case " $* " in
    *" --dry-run "*) ;;
    *)  # Loader workers hand batches over in /dev/shm (14 workers x 4 batches x 38.5 MB is ~2 GB); a container's
        # default 64 MB would stop them. Enlarge it where we may.
        shm_mb=$(df -m --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
        if [[ -n $shm_mb ]] && (( shm_mb < 8192 )) && [[ $(id -u) == 0 ]]; then
            mount -o remount,size=16g /dev/shm && echo "/dev/shm enlarged to 16 GB for the loader workers"
        fi ;;
esac
exec "$PY" bench/gpu_bench.py "$@"
