"""Shard partitions: one dynamic partition per registered shard (`ffhq-0003`), added by the sensors.

`python -m stratum_dagster.partitions OUTPUT_DIR` adds every shard registered under OUTPUT_DIR
(`stratum shards register`) to the instance in $DAGSTER_HOME at once, without a running daemon, e.g.
before `dagster job execute` / `dg launch`; `shard_partitions_sensor` does the same on every tick.
With $STRATUM_INPUT_DIR set (as for the code location) it also records each new partition's first
source observation, as the sensors do: a run started at once still records its sources' version.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import dagster as dg

SHARD_PARTITIONS_NAME = "shards"

shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD_PARTITIONS_NAME)


def add_registered_shards(instance: dg.DagsterInstance, output_dir: Path) -> list[str]:
    """Add the registered shards the instance does not know yet as partitions; returns their keys."""
    from stratum_core.shards import shard_keys

    known = set(instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME))
    new = [k for k in shard_keys(output_dir) if k not in known]
    if new:
        instance.add_dynamic_partitions(SHARD_PARTITIONS_NAME, new)
    return new


def observe_first(instance: dg.DagsterInstance, input_dir: Path, output_dir: Path, keys: list[str]) -> None:
    """Record the first observation of the new partitions' sources (what the adding sensors report in
    their tick), so a run of one started before `source_images_sensor`'s next tick records their version."""
    from stratum_dagster.defs.sources.observations import first_observations
    from stratum_dagster.resources import StratumResource

    stratum = StratumResource(input_root=str(input_dir), output_root=str(output_dir))
    for event in first_observations(stratum, keys, budget_s=float("inf")):
        instance.report_runless_asset_event(event)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.stderr.write("usage: python -m stratum_dagster.partitions OUTPUT_DIR  (uses $DAGSTER_HOME, and "
                         "$STRATUM_INPUT_DIR when set)\n")
        return 2
    output_dir, input_root = Path(args[0]), os.environ.get("STRATUM_INPUT_DIR")
    with dg.DagsterInstance.get() as instance:
        new = add_registered_shards(instance, output_dir)
        if new and input_root:
            observe_first(instance, Path(input_root), output_dir, new)
        total = len(instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME))
    sys.stdout.write(f"{len(new)} shards added as partitions, {total} in all\n")
    if new and not input_root:
        sys.stdout.write("their sources are first observed on source_images_sensor's next tick "
                         "(set STRATUM_INPUT_DIR to record them now)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
