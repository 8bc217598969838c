"""The stratum code location: `defs` merges the shard, pass and publish areas and binds the resources.

Settings come from the environment (read by Dagster at run time, never at import):
STRATUM_INPUT_DIR, STRATUM_OUTPUT_DIR, optional STRATUM_MODEL_DIR, STRATUM_HUB_REPO, and optional
HF_TOKEN (the hub resource reads it when a job runs; unset, huggingface_hub's saved login is used).
Any resource field can be overridden per run (launchpad or `--config`).
STRATUM_EXECUTOR (in_process | celery | k8s) picks the executor of every run (stratum_dagster/execution.py).
"""

import dagster as dg

from stratum_dagster.defs.passes import assets as pass_area
from stratum_dagster.defs.passes.factory import EXECUTOR
from stratum_dagster.defs.publish import assets as publish_area
from stratum_dagster.defs.shards import sensors as shard_area
from stratum_dagster.defs.sources import observations as source_area
from stratum_dagster.resources import CaptionServerResource, HubResource, StratumResource

RESOURCES = {
    "stratum": StratumResource(input_root=dg.EnvVar("STRATUM_INPUT_DIR"),
                               output_root=dg.EnvVar("STRATUM_OUTPUT_DIR")),
    "caption_server": CaptionServerResource(),
    # No EnvVar for the token: an unset EnvVar fails the run, and HF_TOKEN is optional (HubResource.hub_token).
    "hub": HubResource(repo_id=dg.EnvVar("STRATUM_HUB_REPO")),
}

defs = dg.Definitions.merge(shard_area.defs, pass_area.defs, publish_area.defs, source_area.defs,
                            # the executor of every run, the implicit asset job's (catalog, backfills) included
                            dg.Definitions(resources=RESOURCES, executor=EXECUTOR))
