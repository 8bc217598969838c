"""The code location's definitions, one module per area (shards, passes, publish, resources), loaded by
`dg.load_from_defs_folder` in `stratum_dagster.definitions`."""
