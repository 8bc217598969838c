"""Shard partitions: one dynamic partition per registered shard (`ffhq-0003`), added by the sensors.

`python -m stratum_dagster.partitions OUTPUT_DIR` adds every shard registered under OUTPUT_DIR
(`stratum shards register`) to the instance in $DAGSTER_HOME at once, without a running daemon, e.g.
before `dagster job execute` / `dg launch`; `shard_partitions_sensor` does the same on every tick.
"""

from __future__ import annotations

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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.stderr.write("usage: python -m stratum_dagster.partitions OUTPUT_DIR  (uses $DAGSTER_HOME)\n")
        return 2
    with dg.DagsterInstance.get() as instance:
        new = add_registered_shards(instance, Path(args[0]))
        total = len(instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME))
    sys.stdout.write(f"{len(new)} shards added as partitions, {total} in all\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
