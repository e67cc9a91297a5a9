#!/usr/bin/env bash
# The prepared loader benchmark of issue 3 for a lent GPU machine (16 idle cores): the input pipeline against
# the one-core JPEG decode limit, worker scaling, torchvision side by side, and the CUDA colour tests.
#
#     set -o pipefail; PYTHONUNBUFFERED=1 bash bench/loader_gpu.sh 2>&1 | tee $OUT/loader_gpu.log
#
# Uses the machine's own python3 (torch, torchvision, OpenCV) with PYTHONPATH=src; JSON results go to $OUT.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
WORK=${LOADER_BENCH_DIR:-/tmp/resnet_repro_loader_bench}
RES=${OUT:-$WORK}
IMAGES=${LOADER_BENCH_IMAGES:-3072}
CORES=$(nproc)
MAXW=$(( CORES > 3 ? CORES - 2 : 1 ))   # the main process and its pin-memory thread keep two cores
mkdir -p "$WORK" "$RES"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'): $CORES CPU cores"
$PY -c "import torch, cv2; import torchvision as tv; print('torch', torch.__version__, 'torchvision', tv.__version__, 'opencv', cv2.__version__, 'GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
echo "== CUDA / CPU colour agreement and the augmentation tests"
$PY -m pytest -q -p no:cacheprovider tests/test_color.py tests/test_augment.py tests/test_bench_loader.py 2>&1 | tail -n 15
echo "== DCT-reduced decode vs full decode + area resize of the same (grid-snapped) box, levels of 255"
$PY - <<'PYEOF'
import numpy as np, cv2
from resnet_repro.data.synthetic import photo_like_image, encode_jpeg
from resnet_repro.data.augment import decode_box, decode
for kind in ("grainy", "smooth"):
    rng = np.random.default_rng(2)
    img = photo_like_image(rng, 1600, 1200) if kind == "grainy" else \
        cv2.resize(photo_like_image(rng, 400, 300), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    data = encode_jpeg(img)
    full = decode(data, 3)
    for box, f in [((100, 150, 1000, 1000), 4), ((0, 0, 1200, 1600), 4), ((300, 200, 500, 700), 2),
                   ((50, 60, 1190, 1500), 4), ((3, 5, 1197, 1590), 4)]:
        got = decode_box(data, 3, box, (1200, 1600), (224, 224))
        y, x, bh, bw = box
        y0, x0, y1, x1 = (int(round(v / f)) * f for v in (y, x, y + bh, x + bw))
        d = np.abs(got.astype(int) - cv2.resize(full[y0:y1, x0:x1], (224, 224), interpolation=cv2.INTER_AREA).astype(int))
        print(f"{kind} box {box} 1/{f}: mean {d.mean():.2f} p99 {np.percentile(d, 99):.0f} max {d.max()}")
PYEOF
echo "== $IMAGES photo-like JPEGs ~500x375 q90"
time $PY bench/make_jpeg_shards.py --out "$WORK/jpegs" --train "$IMAGES" --val 64 --classes 100 --workers "$CORES"
echo "== synthetic vs real photos (scikit-image's bundled photos, random 500x375 crops/rescales, q90): decode rate"
$PY - <<'PYEOF'
import time, cv2, numpy as np
from resnet_repro.data.records import RecordReader
cv2.setNumThreads(1)
def rate(blobs, reps=3):
    t = time.perf_counter()
    for _ in range(reps):
        for b in blobs:
            cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    return reps * len(blobs) / (time.perf_counter() - t)
import os
r = RecordReader(os.environ.get("LOADER_BENCH_DIR", "/tmp/resnet_repro_loader_bench") + "/jpegs", "train")
syn = [r[i][1] for i in range(200)]
try:
    from skimage import data as sk
    photos = [getattr(sk, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")]
    rng = np.random.default_rng(0)
    real = []
    for k in range(100):
        p = photos[k % len(photos)]
        p = p if p.ndim == 3 else np.repeat(p[..., None], 3, -1)
        s = rng.uniform(0.7, 1.0)
        h, w = p.shape[:2]
        ch, cw = int(h * s), int(min(w, h * s * 4 / 3))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = cv2.resize(np.ascontiguousarray(p[y:y + ch, x:x + cw, :3]), (500, 375), interpolation=cv2.INTER_CUBIC)
        real.append(cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    print(f"synthetic: {np.mean([len(b) for b in syn]) / 1e3:.0f} kB, {rate(syn):.0f} img/s; real photos 500x375: "
          f"{np.mean([len(b) for b in real]) / 1e3:.0f} kB, {rate(real):.0f} img/s (one core)")
except ImportError:
    print("scikit-image absent: no real-photo comparison")
PYEOF
echo "== bench loader: seed recipe (tf_cnn crop + tf_cnn colour), colour ops on the GPU"
$PY -m resnet_repro bench loader --data "$WORK/jpegs" --workers "1,2,4,8,$MAXW" --batch-size 64 --batches 40 \
    --device cuda --compare torchvision --json > "$RES/bench_loader_tf_cnn.json"
$PY - "$RES/bench_loader_tf_cnn.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"decode limit {r['decode_limit_per_s']:.0f} img/s (samples {[round(v) for v in r['decode_limit_samples_per_s']]})")
one = r["runs"][0]["images_per_s"]
for x in r["runs"]:
    print(f"workers {x['workers']:2d}: {x['images_per_s']:6.0f} img/s, {x['images_per_s_per_worker']:5.0f}/worker = "
          f"{x['per_worker_vs_decode_limit']:.2f} x limit, scaling {x['images_per_s'] / (one * x['workers']):.2f}, "
          f"build {x['worker_compute_images_per_s']:.0f}/s, peak RSS {x['peak_rss_mb_per_worker']:.0f} MB, "
          f"growth {x['rss_growth_mb_per_worker']:+.1f} MB")
print("torchvision", r.get("torchvision_pipeline"), r.get("torchvision_images_per_s"), "ratio", r.get("vs_torchvision"))
PYEOF
echo "== bench loader: fb.resnet.torch recipe (inception crop + jitter + lighting)"
$PY -m resnet_repro bench loader --data "$WORK/jpegs" --workers "1,$MAXW" --batch-size 64 --batches 40 --device cuda \
    --set data.crop=inception --set data.color=jitter --set data.lighting=0.1 --set data.normalize=meanstd \
    --compare torchvision 2>&1 | tee "$RES/bench_loader_inception.txt"
echo "== done in ${SECONDS}s"
