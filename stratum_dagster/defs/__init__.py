"""Per-area Dagster definitions (shards, passes, publish), merged in `stratum_dagster.definitions`."""
