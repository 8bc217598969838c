"""`python -m stratum_dagster.quickstart IN OUT`: register shards and run enrich_job on each, locally.

Uses the Dagster instance in $DAGSTER_HOME (SQLite by default). Passes that cannot run on this
machine (no weights, no caption server) are left out of the run, with exactly what to fetch or
start; metadata (enrich_job) and pixel (pixel_job) always run, so the dataset is usable from the first call.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("stratum.quickstart")



def runnable_passes(stratum, caption_server) -> tuple[list[str], dict[str, str]]:
    """The default passes that can run here, and advice for each one that cannot."""
    from stratum_core.passes import DEFAULT_PASSES, build_passes, upstream_passes
    from stratum_core.preflight import check_pass
    from stratum_dagster.resources import pass_config

    options = stratum._options("cpu")
    advice: dict[str, str] = {}
    ready: list[str] = []
    for name in DEFAULT_PASSES:
        upstream = [u for u in upstream_passes(name) if u not in ready]
        if upstream:
            advice[name] = f"needs the {', '.join(upstream)} pass first"
            continue
        args = caption_server.to_args() if name == "caption" else []
        config = pass_config(name, args, caption_server.environ())
        readiness = check_pass(build_passes([name], options, {name: config})[0])
        if readiness.ready:
            ready.append(name)
        else:
            advice[name] = readiness.advice
    return ready, advice


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stratum_dagster.quickstart", description=__doc__)
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--ollama-url", default=os.environ.get("STRATUM_OLLAMA_URL"),
                        help="default http://localhost:11434/api/generate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("dagster", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "DAGSTER_HOME" not in os.environ:
        log.error("set DAGSTER_HOME (scripts/quickstart.sh uses ./.dagster_home)")
        return 2
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    input_dir, output_dir = args.input_dir.resolve(), args.output_dir.resolve()
    if not input_dir.is_dir():
        log.error("no such folder: %s", input_dir)
        return 2
    # The code location's resources read these (dg.EnvVar) when the job runs.
    os.environ["STRATUM_INPUT_DIR"], os.environ["STRATUM_OUTPUT_DIR"] = str(input_dir), str(output_dir)

    import dagster as dg

    from stratum_core.shards import register_all, shard_keys
    from stratum_core.status import dataset_status
    from stratum_dagster.definitions import defs
    from stratum_dagster.partitions import SHARD_PARTITIONS_NAME
    from stratum_dagster.resources import CaptionServerResource, StratumResource

    registration = register_all(input_dir, output_dir)
    for error in registration.errors:
        log.warning("refused %s: %s", error.source, error.message)
    keys = shard_keys(output_dir)
    if not keys:
        log.error("no images found in %s", input_dir)
        return 2
    caption_server = CaptionServerResource(url=args.ollama_url)
    ready, advice = runnable_passes(StratumResource(input_root=str(input_dir), output_root=str(output_dir)),
                                    caption_server)
    for name, what in advice.items():
        log.warning("%-7s not run: %s", name, what)
    selection = ["metadata", *ready]
    log.info("running enrich_job (%s) and pixel_job on %d shard(s): %s", ",".join(selection), len(keys),
             ", ".join(keys))

    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(SHARD_PARTITIONS_NAME,
                                    [k for k in keys if not instance.has_dynamic_partition(SHARD_PARTITIONS_NAME, k)])
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if args.ollama_url:
        run_config["resources"] = {"caption_server": {"config": {"url": args.ollama_url}}}
    failed_runs = 0
    for key in keys:
        for job_name, assets in (("enrich_job", selection), ("pixel_job", ["pixel"])):
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, partition_key=key, run_config=run_config,
                asset_selection=[dg.AssetKey(n) for n in assets], raise_on_error=False)
            failed_runs += not result.success
            log.info("shard %s %s: %s (run %s)", key, job_name, "ok" if result.success else "FAILED", result.run_id)
    sys.stdout.write(dataset_status(output_dir).format() + "\n")
    if advice:
        sys.stdout.write("\nNot run here:\n" + "".join(f"  {n}: {a}\n" for n, a in advice.items()))
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
