"""Benchmark: caption throughput through the engine against a fake Ollama with a fixed latency per request.

For each concurrency N the run captions `rounds · N` images; the ideal (latency-bound)
rate is N / latency images per second. Two ratios to that ideal are printed:
`steady` over the server's busy window (first request received → last answer sent),
i.e. how well the engine keeps N requests in flight, and `run` over the whole run
(server check, first decodes before any request, last writes included), which also
pays the fixed start-up cost and so rises with --rounds. Goal: ≥ 0.9 at N = 16.

    python bench/caption.py [--latency 2.0] [--rounds 8] [--concurrency 1 4 16] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stratum_core.discover import discover  # noqa: E402
from stratum_core.engine import RunConfig, run  # noqa: E402
from stratum_core.passes.base import PassOptions  # noqa: E402
from stratum_core.passes.caption import CaptionConfig  # noqa: E402
from stratum_testing.ollama import FakeOllama  # noqa: E402

# Small sources in two buckets: the caption lane, not decoding, should be the bottleneck.
SIZES = ((256, 256), (192, 280))


def make_images(folder: Path, n: int) -> Path:
    """Photo-like sources (a smooth colour field plus mild noise), so the JPEGs sent are of a realistic size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        field = Image.fromarray(rng.integers(30, 225, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(field, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def measure(root: Path, concurrency: int, latency: float, rounds: int, batch_size: int,
            workers: int) -> dict[str, float]:
    """One engine run of metadata + caption; returns images, seconds, rate, ideal, both ratios, peak in flight."""
    n = rounds * concurrency
    images = discover(make_images(root / f"in-{concurrency}", n)).images
    fake = FakeOllama(captions="A grey noise field.", latency=latency)
    with fake as url:
        config = RunConfig(root / f"out-{concurrency}", ("metadata", "caption"), workers=workers,
                           options=PassOptions(batch_size=batch_size), progress_every=3600,
                           pass_configs={"caption": CaptionConfig(url=url, concurrency=concurrency)})
        summary = run(config, images)
    if summary.passes["caption"].done != n:
        raise SystemExit(f"only {summary.passes['caption'].done} of {n} captions written: {summary.format()}")
    ideal = concurrency / latency
    busy = fake.last_answer_at - fake.first_request_at
    return {"images": n, "seconds": summary.elapsed, "rate": n / summary.elapsed, "ideal": ideal,
            "steady": n / busy / ideal, "run": n / summary.elapsed / ideal, "peak": fake.max_in_flight}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per request at the fake server")
    parser.add_argument("--rounds", type=int, default=8, help="images per request slot")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=8, help="engine batch size (default 8, as the CLI)")
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="stratum-bench-caption-"))
    try:
        print(f"fake Ollama, {args.latency:g} s per request, {args.rounds} rounds, batch size {args.batch_size}")
        print(f"{'N':>4} {'images':>7} {'seconds':>8} {'img/s':>7} {'ideal':>7} {'steady':>7} {'run':>6} "
              f"{'peak':>5}")
        for concurrency in args.concurrency:
            r = measure(root, concurrency, args.latency, args.rounds, args.batch_size, args.workers)
            print(f"{concurrency:>4} {r['images']:>7} {r['seconds']:>8.2f} {r['rate']:>7.2f} {r['ideal']:>7.2f} "
                  f"{r['steady']:>7.3f} {r['run']:>6.3f} {r['peak']:>5}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
