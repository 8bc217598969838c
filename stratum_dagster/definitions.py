"""The stratum code location: every module under `defs/` (shards, passes, publish, resources), loaded
with `dg.load_from_defs_folder`, and the executor of every run.

Settings come from the environment (read by Dagster at run time, never at import):
STRATUM_INPUT_DIR, STRATUM_OUTPUT_DIR, optional STRATUM_MODEL_DIR, STRATUM_HUB_REPO, and optional
HF_TOKEN (the hub resource reads it when a job runs; unset, huggingface_hub's saved login is used);
the resources are bound in `defs/resources.py`. Any resource field can be overridden per run
(launchpad or `--config`). STRATUM_EXECUTOR (in_process | celery | k8s) picks the executor of every run
(stratum_dagster/execution.py).
"""

from pathlib import Path

import dagster as dg

from stratum_dagster.defs.passes.factory import EXECUTOR
from stratum_dagster.defs.resources import RESOURCES  # noqa: F401  (the resources, for callers that bind them)


@dg.definitions
def defs() -> dg.Definitions:
    """The code location (`dg dev`, `dagster dev -m stratum_dagster.definitions`); in Python, `defs()`."""
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        # the executor of every run, the implicit asset job's (catalog, backfills) included
        dg.Definitions(executor=EXECUTOR))
