"""One factory over the pass registry: each pass becomes a shard-partitioned asset, a verify check and a job;
assets that can share an engine run are one multi-asset op, so a run decodes each image once."""


import warnings
from typing import Iterator

import dagster as dg

from stratum_core import provenance
from stratum_core.models import model_dir_from_env
from stratum_core.passes import DEFAULT_PASSES, MODEL_PASSES, REGISTRY, pass_class, upstream_passes
from stratum_dagster.defs.passes.reporting import verify_shard
from stratum_dagster.defs.passes.step import INPUT_CHECK, run_step, step_inputs
from stratum_dagster.defs.sources.observations import source_deps
from stratum_dagster.failures import dagster_failures
from stratum_dagster.partitions import shard_partitions
from stratum_dagster.execution import (CAPTION_POOL, CAPTION_QUEUE, CELERY_QUEUE_TAG, CPU_QUEUE, GPU_POOL,
                                       gpu_op_tags, gpu_run_tags, stratum_executor)
from stratum_dagster.resources import CaptionServerResource, StratumResource

IMAGE_STEP = "image_passes"  # the op of metadata and the model passes that read pixels

# Every op names its Celery queue (docs/scale-out.md lists the worker for each): GPU steps carry the GPU
# queue and the Kubernetes GPU request; a step without a GPU carries no GPU request, so under
# k8s_job_executor its pod gets none.
GPU_OP_TAGS = gpu_op_tags()
CAPTION_OP_TAGS = {CELERY_QUEUE_TAG: CAPTION_QUEUE}
CPU_OP_TAGS = {CELERY_QUEUE_TAG: CPU_QUEUE}

# An infrastructure error (dead server, out of memory) raises; the step is retried. Set on every asset and
# check (not only on the named jobs), so a run from the catalog, a backfill or a sensor retries the same way.
# A permanent error raises dg.Failure(allow_retries=False) and is not retried.
INFRASTRUCTURE_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def _describe(name: str) -> str:
    doc = (pass_class(name).__doc__ or "").strip()
    return (doc.splitlines()[0] if doc else f"The {name} pass") + " — for every image of one shard."


def _io_bound(name: str) -> bool:
    return pass_class(name).io_bound


def step_of(name: str) -> str:
    """The step (op) whose one engine run materialises this pass's asset.

    metadata and every model pass that reads pixels share IMAGE_STEP: one engine run, each image
    decoded once, models loaded once. A server-bound pass (caption) is its own step in its own pool,
    so the server never holds a GPU slot; a pass that reads a server-bound pass's artifacts (t5) is
    its own step too, so only it waits for (or fails with) the server and the image step does not.
    A CPU-only extra outside the default job (pixel) is its own step and takes no GPU slot.
    """
    if _io_bound(name) or any(_io_bound(u) for u in upstream_passes(name)):
        return name
    if name == "metadata" or name in MODEL_PASSES:
        return IMAGE_STEP
    return name


def steps() -> dict[str, list[str]]:
    """Step name → its passes, in registry (dependency) order."""
    grouped: dict[str, list[str]] = {}
    for name in REGISTRY:
        grouped.setdefault(step_of(name), []).append(name)
    return grouped


# Dagster kinds (the technology icons in the UI) of the modules a pass runs on.
RUNTIME_KINDS = {"torch": "pytorch", "onnxruntime": "onnx"}


def pass_kinds(name: str) -> set[str]:
    """A pass asset's kinds: the servers a server-bound pass talks to (caption: ollama, openai), the runtimes a
    model pass runs on (pytorch; pose: onnx or pytorch, its --pose-backend), else python."""
    from stratum_core.passes.caption import BACKENDS as CAPTION_SERVERS
    from stratum_core.passes.dwpose import BACKEND_MODULES as POSE_RUNTIMES

    cls = pass_class(name)
    if cls.io_bound:
        return set(CAPTION_SERVERS)
    modules = set(cls.requires_modules)  # the pass's optional modules (the one place this adapter reads them)
    if name == "pose":
        modules |= {m for runtime in POSE_RUNTIMES.values() for m in runtime}
    return {RUNTIME_KINDS[m] for m in modules if m in RUNTIME_KINDS} or {"python"}


def _pass_tags(name: str) -> dict[str, str]:
    if name in MODEL_PASSES:
        return {"stratum/device": "gpu"}
    return {"stratum/device": "server" if _io_bound(name) else "cpu"}


def _step_placement(step: str, names: list[str]) -> dict:
    """Pool, queue and op tags of a step, set once per op: any model pass puts it in the `gpu` pool and
    queue (with the GPU request tags); a server-bound pass in `caption`; otherwise no pool, the CPU queue.
    IMAGE_STEP runs first in a run (priority) so GPU results land, and the GPU is handed back, before the
    long caption step."""
    if any(n in MODEL_PASSES for n in names):
        tags = {**GPU_OP_TAGS, "dagster/priority": "1"} if step == IMAGE_STEP else GPU_OP_TAGS
        return {"pool": GPU_POOL, "op_tags": tags}
    if any(_io_bound(n) for n in names):
        return {"pool": CAPTION_POOL, "op_tags": CAPTION_OP_TAGS}
    return {"op_tags": CPU_OP_TAGS}


def build_step_assets(step: str, names: list[str],
                      retry_policy: dg.RetryPolicy | None = INFRASTRUCTURE_RETRY) -> dg.AssetsDefinition:
    """One op for the passes `names`, one asset each: a run materialising any subset of them (enrich_job,
    a per-pass job, a backfill) runs ONE engine run over the selected passes of the shard."""
    specs = [dg.AssetSpec(name, deps=[*upstream_passes(name), *source_deps(name)], description=_describe(name),
                          group_name="passes", tags=_pass_tags(name), kinds=pass_kinds(name),
                          code_version=provenance.code_version(name, model_dir_from_env())) for name in names]

    # Blocking: a failed check keeps the readers from running (in this step, see run_step, and downstream).
    check_specs = [dg.AssetCheckSpec(INPUT_CHECK, asset=u, blocking=True, description=(
        f"Before the step computes {', '.join(n for n in names if u in upstream_passes(n))}: every {u} artifact "
        f"of the shard that they read parses and has the right shape, dtype and values."))
        for u in step_inputs(names)]

    def _step(context: dg.AssetExecutionContext, stratum: StratumResource,
              caption_server: CaptionServerResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        yield from run_step(context, names, stratum, caption_server)

    with warnings.catch_warnings():  # partitioned checks are a preview feature (see build_verify_check)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.multi_asset(name=step, specs=specs, check_specs=check_specs, partitions_def=shard_partitions,
                              can_subset=True, retry_policy=retry_policy, **_step_placement(step, names))(_step)


def build_verify_check(name: str, retry_policy: dg.RetryPolicy | None = INFRASTRUCTURE_RETRY) -> dg.AssetChecksDefinition:
    """`verify` over the shard's artifacts of this pass."""

    def _verify_check(context: dg.AssetCheckExecutionContext, stratum: StratumResource) -> dg.AssetCheckResult:
        with dagster_failures():  # an unknown shard key fails at once, the cause as headline
            return verify_shard(stratum, name, context.partition_key)

    # Partitioned checks are a preview feature in Dagster 1.13; the check must be per shard, so we use it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=name, name="verify_check", partitions_def=shard_partitions,
            op_tags=CPU_OP_TAGS, retry_policy=retry_policy,
            description=f"Every {name} artifact of the shard parses and has the right shape, dtype and values.",
        )(_verify_check)


# The executor and GPU run tags of the named jobs; `definitions.py` gives the same executor to every other
# run (Definitions executor). Resolved when the code location loads (STRATUM_EXECUTOR, stratum_dagster/execution.py).
EXECUTOR = stratum_executor()


def build_pass_job(name: str) -> dg.JobDefinition:
    return dg.define_asset_job(f"{name}_job", selection=[name], executor_def=EXECUTOR,
                               tags=gpu_run_tags(EXECUTOR) if name in MODEL_PASSES else None,
                               description=f"The {name} pass over one shard.")


enrich_job = dg.define_asset_job(
    "enrich_job", selection=["metadata", *DEFAULT_PASSES], executor_def=EXECUTOR, tags=gpu_run_tags(EXECUTOR),
    description="metadata and the default passes (everything but pixel) over one shard.")

PASS_JOBS: dict[str, dg.JobDefinition] = {n: build_pass_job(n) for n in REGISTRY}


def build_pass_defs(retry_policy: dg.RetryPolicy | None = INFRASTRUCTURE_RETRY) -> dg.Definitions:
    """One asset, check and job per registered pass (assets grouped into steps), plus `enrich_job`.

    `retry_policy=None` builds the same assets without retries (tests that fail a step on purpose)."""
    return dg.Definitions(
        assets=[build_step_assets(step, names, retry_policy) for step, names in steps().items()],
        asset_checks=[build_verify_check(n, retry_policy) for n in REGISTRY],
        jobs=[enrich_job, *PASS_JOBS.values()],
    )
