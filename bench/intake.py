"""Benchmark: `stratum process --passes pixel` vs a naive single-thread decode → crop → np.save loop.

Both use Pillow and NumPy on the same mixed-size JPEG/PNG folder, in one run;
the printed ratio is naive seconds / engine seconds (goal on 2 cores: ≥ 1.6×).

    python bench/intake.py [--n 200] [--workers N] [--repeat 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from _common import add_repeat, make_photos, rounds, table, workspace
from stratum_core.buckets import choose_bucket, cover_crop_box
from stratum_core.discover import discover
from stratum_core.engine import RunConfig, run
from stratum_core.progress import Progress

# (width, height) of typical camera / web images, landscape and portrait.
SIZES = ((1600, 1200), (1200, 1600), (2048, 1365), (1365, 2048), (1024, 1024), (800, 600),
         (3000, 2000), (640, 960), (1920, 1080), (1080, 1920), (2400, 1600), (512, 512))


def naive(input_dir: Path, output_dir: Path) -> float:
    """One thread: open, orient, convert, resize-to-cover + centre crop, float16 CHW, np.save."""
    start = time.perf_counter()
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
        bucket = choose_bucket(img.width, img.height)
        crop = img.resize((bucket.width, bucket.height), Image.Resampling.LANCZOS,
                          box=cover_crop_box(img.width, img.height, bucket))
        pixel = (np.asarray(crop).transpose(2, 0, 1).astype(np.float32) / 255.0).astype(np.float16)
        target = output_dir / path.relative_to(input_dir).with_suffix("")
        target.mkdir(parents=True, exist_ok=True)
        np.save(target / "pixel.npy", pixel)
    return time.perf_counter() - start


def engine(input_dir: Path, output_dir: Path, workers: int) -> float:
    start = time.perf_counter()
    found = discover(input_dir)
    config = RunConfig(output_dir=output_dir, passes=("metadata", "pixel"), workers=workers)
    summary = run(config, found.images, found.errors, Progress(len(found.images), every=3600, stream=sys.stderr))
    elapsed = time.perf_counter() - start
    if summary.failed_count or summary.passes["pixel"].done != len(found.images):
        raise SystemExit(f"engine run failed: {summary.format()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="number of source images (default 200)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="engine decode threads")
    parser.add_argument("--keep", type=Path, help="reuse/keep the source images in this folder")
    add_repeat(parser, 2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with workspace("intake") as work:
        input_dir = args.keep or work / "in"
        if not input_dir.is_dir() or not any(input_dir.rglob("*.*")):
            t = time.perf_counter()
            make_photos(input_dir, args.n, SIZES)
            print(f"made {args.n} images in {time.perf_counter() - t:.1f}s")
        n = sum(1 for p in input_dir.rglob("*") if p.is_file())
        cpu = {"naive": 0.0, "engine": 0.0}  # CPU seconds (all threads): a load-independent view

        def side(name: str, fn):
            def timed(_round: int) -> float:
                c = time.process_time()
                seconds = fn()
                cpu[name] += time.process_time() - c
                shutil.rmtree(work / name)
                return seconds
            return timed

        # Alternate the two: other load on a small machine hits both alike.
        s = rounds({"naive": side("naive", lambda: naive(input_dir, work / "naive")),
                    "engine": side("engine", lambda: engine(input_dir, work / "engine", args.workers))}, args.repeat)
        naive_s, engine_s = s["naive"], s["engine"]
        print(f"images: {n}, cores: {os.cpu_count()}, engine workers: {args.workers}, {args.repeat} rounds")
        print(table(("", "best s", "median s", "img/s"),
                    [("naive loop", naive_s.min, naive_s.median, n / naive_s.min),
                     ("stratum process", engine_s.min, engine_s.median, n / engine_s.min)]))
        print(f"CPU seconds per image: naive {cpu['naive'] / args.repeat / n * 1000:.0f} ms, "
              f"engine {cpu['engine'] / args.repeat / n * 1000:.0f} ms")
        print(f"speed-up: {naive_s.min / engine_s.min:.2f}x best, {naive_s.median / engine_s.median:.2f}x median "
              f"(goal >= 1.6x)")


if __name__ == "__main__":
    main()
