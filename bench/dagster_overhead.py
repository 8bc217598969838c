"""What Dagster adds to one shard: `dagster job execute` vs `stratum process --shard-key`, same shard, same passes.

Default (CPU, a few minutes at most): a 1,000-image shard of small images through `metadata_job`
(the metadata pass: decode, crop to the bucket, write metadata.json) vs `stratum process --passes
metadata`. Both run as fresh subprocesses on fresh output folders, so process start-up, definition
loading and event logging are all counted. On a GPU machine with models, `--job enrich_job
--passes all` compares the full default job.

`--assets seg,depth,normal --smoke-sapiens` runs those assets of `--job` (default enrich_job then)
through `execute_in_process(asset_selection=…)` in a fresh process, as `quickstart` does, against
`stratum process --passes seg,depth,normal`, with the smoke Sapiens models of stratum_testing (CPU).

    python bench/dagster_overhead.py [--images 1000] [--job metadata_job --passes metadata] [--repeat 1]
    python bench/dagster_overhead.py --images 100 --assets seg,depth,normal --smoke-sapiens
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import add_repeat, dagster_home, rounds, workspace

BIN = Path(sys.executable).parent

# A fresh process that runs, for one shard, each `job:asset,asset` given, the way quickstart does.
RUN_SELECTION = """
import sys, dagster as dg
from stratum_dagster.definitions import defs
key = sys.argv[1]
for spec in sys.argv[2:]:
    job, names = spec.split(":")
    result = defs().resolve_job_def(job).execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key=key, asset_selection=[dg.AssetKey(n) for n in names.split(",")])
    if not result.success:
        sys.exit(1)
"""


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


def fresh_outputs(outputs: dict[str, Path], registry: Path) -> None:
    """Empty output folders that hold only the shard's record (copied from the registry)."""
    for out in outputs.values():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(registry / ".stratum", out / ".stratum")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images in the shard (default 1000)")
    parser.add_argument("--size", default="96x64", help="source image size WxH (default 96x64)")
    parser.add_argument("--job", default="metadata_job", help="Dagster job to run (default metadata_job)")
    parser.add_argument("--passes", default="metadata", help="the same passes for stratum process")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--assets", help="run only these assets of --job (default job then: enrich_job)")
    parser.add_argument("--smoke-sapiens", action="store_true", help="use stratum_testing smoke Sapiens models")
    add_repeat(parser, 1)  # CLI and Dagster alternate, each round on fresh outputs (the shared machine is noisy)
    parser.add_argument("--per-pass-runs", action="store_true",
                        help="with --assets, also time one <pass>_job run per asset (one engine run, one decode, "
                             "per pass: what enrich_job did before passes shared a step)")
    args = parser.parse_args()
    if args.assets:
        args.passes = args.assets
        if args.job == "metadata_job":
            args.job = "enrich_job"

    from stratum_core import shards
    import dagster as dg

    with workspace("dagster") as root, dagster_home() as home:
        src = root / "in"
        write_images(src / "bench", args.images, tuple(int(v) for v in args.size.split("x")))
        outputs = {"cli": root / "out_cli", "dagster": root / "out_dagster", "per_pass": root / "out_per_pass"}
        [shard], _ = shards.register_group(src, root / "registry", "bench", shard_size=max(args.images, 1))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("shards", [shard.key])
        env = {**os.environ, "STRATUM_INPUT_DIR": str(src), "STRATUM_OUTPUT_DIR": str(outputs["dagster"])}
        if args.smoke_sapiens:
            from stratum_testing.sapiens_models import build_sapiens_models

            build_sapiens_models(root / "models")
            env.update(STRATUM_MODEL_DIR=str(root / "models"), HF_HUB_OFFLINE="1")
        cli_cmd = [str(BIN / "stratum"), "process", str(src), "-o", str(outputs["cli"]), "--passes", args.passes,
                   "--shard-key", shard.key, "--device", args.device]
        if args.assets:
            dagster_cmd = [sys.executable, "-c", RUN_SELECTION, shard.key, f"{args.job}:{args.assets}"]
            label = f"{args.job} assets {args.assets}"
        else:
            dagster_cmd = [str(BIN / "dagster"), "job", "execute", "-m", "stratum_dagster.definitions", "-j", args.job,
                           "--tags", json.dumps({"dagster/partition": shard.key})]
            label = f"dagster job execute -j {args.job}"

        def cli(_round: int) -> float:
            fresh_outputs(outputs, root / "registry")  # every round starts from empty outputs, Dagster's too
            return timed(cli_cmd, env)

        sides = {"cli": cli, "dagster": lambda _round: timed(dagster_cmd, env)}
        if args.assets and args.per_pass_runs:
            sides["per_pass"] = lambda _round: timed(
                [sys.executable, "-c", RUN_SELECTION, shard.key, *(f"{n}_job:{n}" for n in args.assets.split(","))],
                {**env, "STRATUM_OUTPUT_DIR": str(outputs["per_pass"])})
        s = rounds(sides, args.repeat)
        cli_s, dagster_s = s["cli"].min, s["dagster"].min
        written = sum(1 for _ in outputs["dagster"].rglob("metadata.json"))
        print(f"shard {shard.key}: {args.images} images, {written} written by Dagster")
        print(f"stratum process --passes {args.passes}: {s['cli'].seconds()}")
        print(f"{label}:  {s['dagster'].seconds()}")
        print(f"Dagster adds {dagster_s - cli_s:+.2f} s per run ({100 * (dagster_s - cli_s) / cli_s:+.1f}%); "
              f"ratio {dagster_s / cli_s:.2f}x (best of {args.repeat}; medians "
              f"{s['dagster'].median / s['cli'].median:.2f}x)")
        if "per_pass" in s:
            print(f"one <pass>_job per asset ({args.assets}): {s['per_pass'].seconds()}; "
                  f"one shared step is {s['per_pass'].min / dagster_s:.2f}x faster")


if __name__ == "__main__":
    main()
