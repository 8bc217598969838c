"""The resources every stratum asset, check and sensor uses, bound from the environment.

Read by Dagster when a run or a tick starts (never at import): STRATUM_INPUT_DIR, STRATUM_OUTPUT_DIR,
STRATUM_HUB_REPO; the caption server's variables and HF_TOKEN are read by the resources themselves.
"""

import dagster as dg

from stratum_dagster.resources import CaptionServerResource, HubResource, StratumResource

RESOURCES = {
    "stratum": StratumResource(input_root=dg.EnvVar("STRATUM_INPUT_DIR"),
                               output_root=dg.EnvVar("STRATUM_OUTPUT_DIR")),
    "caption_server": CaptionServerResource(),
    # No EnvVar for the token: an unset EnvVar fails the run, and HF_TOKEN is optional (HubResource.hub_token).
    "hub": HubResource(repo_id=dg.EnvVar("STRATUM_HUB_REPO")),
}


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=RESOURCES)
