"""Shard partitions: one dynamic partition per registered shard (`ffhq-0003`), added by the sensors."""

import dagster as dg

SHARD_PARTITIONS_NAME = "shards"

shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD_PARTITIONS_NAME)
