"""Make an ImageNet-style prepared data set of photo-like JPEGs (numpy + OpenCV only, no downloads).

    python tools/make_jpeg_shards.py --out /tmp/jpeg_shards --train 2048 --val 256 --classes 100 --workers 8

Then: resnet-repro bench loader --data /tmp/jpeg_shards --workers 1,2. See resnet_repro.data.sources.synthetic.
"""
from __future__ import annotations

import argparse
import os

from resnet_repro.data.sources.synthetic import make_jpeg_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2048, help="training images")
    p.add_argument("--val", type=int, default=256, help="validation images")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--size", default="500x375", help="typical WIDTHxHEIGHT (each image varies by +-20 %%)")
    p.add_argument("--fixed-size", action="store_true", help="every image exactly --size")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (FFCV's ImageNet files: 90)")
    p.add_argument("--train-shards", type=int, default=8)
    p.add_argument("--val-shards", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes making images")
    a = p.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    out = make_jpeg_shards(a.out, a.train, a.val, a.classes, (w, h), a.seed, a.train_shards, a.val_shards,
                           a.quality, not a.fixed_size, a.workers)
    print(f"wrote {out}: {a.train} train + {a.val} val JPEGs about {w}x{h}, quality {a.quality}")


if __name__ == "__main__":
    main()
