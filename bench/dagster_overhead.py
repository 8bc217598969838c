"""What Dagster adds to one shard: `dagster job execute` vs `stratum process --shard-key`, same shard, same passes.

Default (CPU, a few minutes at most): a 1,000-image shard of small images through `metadata_job`
(the metadata pass: decode, crop to the bucket, write metadata.json) vs `stratum process --passes
metadata`. Both run as fresh subprocesses on fresh output folders, so process start-up, definition
loading and event logging are all counted. On a GPU machine with models, `--job enrich_job
--passes all` compares the full default job.

    python bench/dagster_overhead.py [--images 1000] [--job metadata_job --passes metadata]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent


def write_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i:05d}.jpg", quality=90)


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images in the shard (default 1000)")
    parser.add_argument("--size", default="96x64", help="source image size WxH (default 96x64)")
    parser.add_argument("--job", default="metadata_job", help="Dagster job to run (default metadata_job)")
    parser.add_argument("--passes", default="metadata", help="the same passes for stratum process")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from stratum_core import shards
    import dagster as dg

    root = Path(tempfile.mkdtemp(prefix="stratum-bench-dagster-"))
    try:
        src, home = root / "in", root / "dagster_home"
        write_images(src / "bench", args.images, tuple(int(v) for v in args.size.split("x")))
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        outputs = {"cli": root / "out_cli", "dagster": root / "out_dagster"}
        for out in outputs.values():
            [shard], _ = shards.register_group(src, out, "bench", shard_size=max(args.images, 1))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("shards", [shard.key])
        env = {**os.environ, "DAGSTER_HOME": str(home), "STRATUM_INPUT_DIR": str(src),
               "STRATUM_OUTPUT_DIR": str(outputs["dagster"])}
        cli_s = timed([str(BIN / "stratum"), "process", str(src), "-o", str(outputs["cli"]), "--passes", args.passes,
                       "--shard-key", shard.key, "--device", args.device], env)
        dagster_s = timed([str(BIN / "dagster"), "job", "execute", "-m", "stratum_dagster.definitions", "-j", args.job,
                           "--tags", json.dumps({"dagster/partition": shard.key})], env)
        written = sum(1 for _ in outputs["dagster"].rglob("metadata.json"))
        print(f"shard {shard.key}: {args.images} images, {written} written by Dagster")
        print(f"stratum process --passes {args.passes}: {cli_s:.2f} s")
        print(f"dagster job execute -j {args.job}:  {dagster_s:.2f} s")
        print(f"Dagster adds {dagster_s - cli_s:+.2f} s per run ({100 * (dagster_s - cli_s) / cli_s:+.1f}%); "
              f"ratio {dagster_s / cli_s:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
