"""One factory over the pass registry: each pass becomes a shard-partitioned asset, a verify check and a job."""


import logging
import warnings

import dagster as dg

from stratum_core.artifacts import BY_NAME
from stratum_core.passes import DEFAULT_PASSES, MODEL_PASSES, REGISTRY, PassUnavailable, pass_class
from stratum_dagster.defs.passes.reporting import run_metadata, verify_shard
from stratum_dagster.partitions import shard_partitions
from stratum_dagster.resources import CaptionServerResource, StratumResource

log = logging.getLogger("stratum.dagster")

GPU_POOL = "gpu"
CAPTION_POOL = "caption"

# Carried by every GPU step and run: the Kubernetes run launcher / k8s_job_executor request one GPU,
# and Celery routes the step to a GPU host's queue.
GPU_K8S_CONFIG = {"container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"},
                                                     "limits": {"nvidia.com/gpu": "1"}}}}
GPU_OP_TAGS = {"dagster-k8s/config": GPU_K8S_CONFIG, "dagster-celery/queue": "gpu"}
CAPTION_OP_TAGS = {"dagster-celery/queue": "caption"}
GPU_RUN_TAGS = {"dagster-k8s/config": GPU_K8S_CONFIG}

# An infrastructure error (dead server, out of memory, missing weights) raises; the jobs retry the step.
INFRASTRUCTURE_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def upstream_passes(name: str) -> list[str]:
    """Passes whose artifacts `name` reads (t5 → caption, depth/normal → seg)."""
    try:
        needs = pass_class(name).needs
    except PassUnavailable:
        log.warning("the %s pass is not available in this build; its asset has no upstream", name)
        return []
    return list(dict.fromkeys(BY_NAME[n].pass_name for n in needs))


def _describe(name: str) -> str:
    try:
        doc = (pass_class(name).__doc__ or "").strip()
    except PassUnavailable:
        doc = ""
    return (doc.splitlines()[0] if doc else f"The {name} pass") + " — for every image of one shard."


def _placement(name: str) -> dict:
    """Pool, tags and op tags: GPU passes share the `gpu` pool, caption has its own."""
    if name in MODEL_PASSES:
        return {"pool": GPU_POOL, "tags": {"stratum/device": "gpu"}, "op_tags": GPU_OP_TAGS}
    if name == "caption":
        return {"pool": CAPTION_POOL, "tags": {"stratum/device": "server"}, "op_tags": CAPTION_OP_TAGS}
    return {"tags": {"stratum/device": "cpu"}}


def build_pass_asset(name: str) -> dg.AssetsDefinition:
    """The shard-partitioned asset of one pass: run it over the shard, report counts and provenance."""

    @dg.asset(name=name, partitions_def=shard_partitions, deps=upstream_passes(name), group_name="passes",
              description=_describe(name), **_placement(name))
    def _pass_asset(context: dg.AssetExecutionContext, stratum: StratumResource,
                    caption_server: CaptionServerResource) -> dg.MaterializeResult:
        shard_run = stratum.run_pass(name, context.partition_key, caption_server)
        return dg.MaterializeResult(metadata=run_metadata(shard_run, stratum))

    return _pass_asset


def build_verify_check(name: str) -> dg.AssetChecksDefinition:
    """`verify` over the shard's artifacts of this pass."""

    def _verify_check(context: dg.AssetCheckExecutionContext, stratum: StratumResource) -> dg.AssetCheckResult:
        return verify_shard(stratum, name, context.partition_key)

    # Partitioned checks are a preview feature in Dagster 1.13; the check must be per shard, so we use it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=name, name="verify_check", partitions_def=shard_partitions,
            description=f"Every {name} artifact of the shard parses and has the right shape, dtype and values.",
        )(_verify_check)


def build_pass_job(name: str) -> dg.JobDefinition:
    return dg.define_asset_job(f"{name}_job", selection=[name],
                               executor_def=dg.in_process_executor, op_retry_policy=INFRASTRUCTURE_RETRY,
                               tags=GPU_RUN_TAGS if name in MODEL_PASSES else None,
                               description=f"The {name} pass over one shard.")


enrich_job = dg.define_asset_job(
    "enrich_job", selection=["metadata", *DEFAULT_PASSES],
    executor_def=dg.in_process_executor, op_retry_policy=INFRASTRUCTURE_RETRY, tags=GPU_RUN_TAGS,
    description="metadata and the default passes (everything but pixel) over one shard.")

PASS_JOBS: dict[str, dg.JobDefinition] = {n: build_pass_job(n) for n in REGISTRY}


def build_pass_defs() -> dg.Definitions:
    """Assets, checks and jobs for every registered pass, plus `enrich_job` (metadata + default passes)."""
    return dg.Definitions(
        assets=[build_pass_asset(n) for n in REGISTRY],
        asset_checks=[build_verify_check(n) for n in REGISTRY],
        jobs=[enrich_job, *PASS_JOBS.values()],
    )
