"""Benchmark: caption throughput through the engine against a fake Ollama with a fixed latency per request.

For each concurrency N the run captions `rounds · N` images; the ideal (latency-bound)
rate is N / latency images per second. Two ratios to that ideal are printed:
`steady` over the server's busy window (first request received → last answer sent),
i.e. how well the engine keeps N requests in flight, and `run` over the whole run
(server check, first decodes before any request, last writes included), which also
pays the fixed start-up cost and so rises with --rounds. Goal: ≥ 0.9 at N = 16.

    python bench/caption.py [--latency 2.0] [--rounds 8] [--concurrency 1 4 16] [--batch-size 8] [--repeat 1]

With `--repeat N` each row is the fastest of N runs, with the median run's seconds beside it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from _common import Samples, add_repeat, table, workspace
from stratum_core.discover import discover
from stratum_core.engine import RunConfig, run
from stratum_core.passes.base import PassOptions
from stratum_core.passes.caption import CaptionConfig
from stratum_testing.ollama import FakeOllama

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
    add_repeat(parser, 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with workspace("caption") as root:
        print(f"fake Ollama, {args.latency:g} s per request, {args.rounds} rounds, batch size {args.batch_size}")
        rows = []
        for concurrency in args.concurrency:
            runs = [measure(root / f"round{r}", concurrency, args.latency, args.rounds, args.batch_size, args.workers)
                    for r in range(args.repeat)]
            r = min(runs, key=lambda run: run["seconds"])
            median = Samples([run["seconds"] for run in runs]).median
            rows.append((concurrency, r["images"], r["seconds"], median, r["rate"], r["ideal"], f"{r['steady']:.3f}",
                         f"{r['run']:.3f}", r["peak"]))
        print(table(("N", "images", "seconds", "median s", "img/s", "ideal", "steady", "run", "peak"), rows))


if __name__ == "__main__":
    main()
