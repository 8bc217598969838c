"""The pass area's definitions: one asset, verify check and job per registered pass, plus enrich_job."""

from stratum_dagster.defs.passes.factory import build_pass_defs

defs = build_pass_defs()
