"""Shard sensors: register new images as shards, and mirror filesystem status into Dagster."""
