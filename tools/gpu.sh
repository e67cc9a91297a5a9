#!/usr/bin/env bash
# The one prepared GPU run (issue 15): ResNet-50 v1 compute eager and compiled, end to end with CPU decoding (core
# plan pinned and not) and GPU decoding (decode-ahead, 4 workers), torch.compile modes, loader scaling, the
# CUDA-only tests; one table printed last, one JSON line per row in tools/results/DATE-TIME-DEVICE.jsonl (copied to
# $OUT when set, with the phase logs as one gpu-bench-logs.tar.gz). About 8-9 minutes on one H100 or H200 with 16
# cores, data making included: no phase starts that would end after 480 s, and each is stopped by 540 s (7.3 min on
# the H200 on 2026-12-04 with the earlier 380 s budget). From the repository root:
#
#     set -o pipefail; PYTHONUNBUFFERED=1 bash tools/gpu.sh 2>&1 | tee $OUT/gpu.log
#
# On a machine lent for 15 minutes, that is one run (start ~35 s) and little else: --budget-s N shortens it.
# It uses the machine's own python3 (torch, torchvision, OpenCV, numpy) and the installed package: where
# resnet_repro does not import, this tree is installed first (pip install -e, no dependencies, no build isolation:
# no network), which also builds the native region-decode helper if gcc and libjpeg's headers are there (else
# gpu_bench.py tries gcc itself, and else the crops decode whole images, and the machine row says so). Phases and
# sizes: tools/gpu_bench.py.
#
# CPU dry run (tiny sizes, GPU phases skipped with the reason; tests/test_gpu_bench.py runs it):
#     PYTHON=.venv/bin/python bash tools/gpu.sh --dry-run --results /tmp/gpu-dry --work /tmp/gpu-dry-work
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The figures must be this tree's: install it where the package is missing, stop where another copy is installed.
where=$("$PY" -c "import resnet_repro, os; print(os.path.dirname(os.path.realpath(resnet_repro.__file__)))" 2>/dev/null)
if [[ -z $where ]]; then
    echo "resnet_repro is not installed for $PY: installing this tree (pip install -e ., no dependencies)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || {
        echo "tools/gpu.sh: could not install the package; install it (pip install -e .) and run again" >&2; exit 1; }
elif [[ $where != "$(realpath src/resnet_repro)" ]]; then
    echo "tools/gpu.sh: $PY imports resnet_repro from $where, not from this tree ($PWD): install this tree" \
         "(pip install -e .) or set PYTHON to the python that has it" >&2
    exit 1
fi
case " $* " in
    *" --dry-run "*) ;;
    *)  # Loader workers hand batches over in /dev/shm (14 workers x 4 batches x 38.5 MB is ~2 GB); a container's
        # default 64 MB would stop them. Enlarge it where we may.
        shm_mb=$(df -m --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
        if [[ -n $shm_mb ]] && (( shm_mb < 8192 )) && [[ $(id -u) == 0 ]]; then
            mount -o remount,size=16g /dev/shm && echo "/dev/shm enlarged to 16 GB for the loader workers"
        fi ;;
esac
exec "$PY" tools/gpu_bench.py "$@"
