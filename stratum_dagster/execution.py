"""How stratum runs execute on Dagster's own engines: the executor choice, the Celery queues, the GPU tags.

`STRATUM_EXECUTOR` (in_process | celery | k8s, default in_process) is read once, when the code location
loads, and becomes the `Definitions` executor, so every run gets it however it starts: a named job, the
asset catalog, a backfill, a sensor, `dg launch` or `dagster job execute`. Each executor keeps its own run
config (`execution: {config: ...}`); docs/run_config/ has a tested example for each. See docs/scale-out.md.
"""

from __future__ import annotations

import os
from typing import Mapping

import dagster as dg

from stratum_core.errors import ConfigError

EXECUTOR_ENV = "STRATUM_EXECUTOR"
EXECUTORS = ("in_process", "celery", "k8s")
BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"    # e.g. redis://broker-host:6379/0
BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"  # e.g. redis://broker-host:6379/1

# Dagster pools (instance limits): GPU steps at once, caption steps talking to the server at once.
GPU_POOL = "gpu"
CAPTION_POOL = "caption"

# Celery queues, one per kind of worker (docs/scale-out.md says which worker to start for each).
GPU_QUEUE = "gpu"          # the image step and t5: a worker on a GPU host, one per GPU
CAPTION_QUEUE = "caption"  # the caption step: talks to the caption server, holds no GPU
CPU_QUEUE = "dagster"      # verify checks, pixel, publish: dagster-celery's default queue, any host
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"

# One GPU per pod: on a GPU step's pod (k8s_job_executor), or on the run pod when the run executes its
# steps in-process (K8sRunLauncher); never both, or the orchestrating pod would hold a GPU for nothing.
GPU_K8S_CONFIG = {"container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"},
                                                     "limits": {"nvidia.com/gpu": "1"}}}}


def executor_name(environ: Mapping[str, str] | None = None) -> str:
    """The configured executor's name; an unknown one is a ConfigError naming the choices."""
    name = (os.environ if environ is None else environ).get(EXECUTOR_ENV, "in_process").strip() or "in_process"
    if name not in EXECUTORS:
        raise ConfigError(f"{EXECUTOR_ENV}={name!r}: choose one of {', '.join(EXECUTORS)}")
    return name


def stratum_executor(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor every stratum run uses (in-process: one engine run per shard, each image decoded once)."""
    name = executor_name(environ)
    if name == "in_process":
        return dg.in_process_executor
    try:
        if name == "celery":
            return _celery_executor()
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    except ImportError as exc:
        raise ConfigError(f"{EXECUTOR_ENV}={name} needs the scale extra: pip install 'stratum[scale]' "
                          f"({exc.name} is missing)") from exc


def _celery_executor() -> dg.ExecutorDefinition:
    """dagster-celery's executor, its broker and result backend read (when the run starts) from
    DAGSTER_CELERY_BROKER_URL / DAGSTER_CELERY_BACKEND_URL unless the run config names them: a backfill
    or a sensor run has no run config, and the defaults (AMQP on localhost, rpc://) are rarely right."""
    from dagster_celery import celery_executor
    from dagster_celery.executor import CELERY_CONFIG

    schema = {**CELERY_CONFIG,
              "broker": dg.Field(dg.StringSource, is_required=False, default_value={"env": BROKER_ENV}),
              "backend": dg.Field(dg.StringSource, is_required=False, default_value={"env": BACKEND_ENV})}
    return celery_executor.configured(lambda config: config, config_schema=schema, name=celery_executor.name)


def runs_steps_in_process(executor: dg.ExecutorDefinition) -> bool:
    """Whether the run's own process (its pod, under Kubernetes) executes the steps, GPU steps included."""
    return executor.name == dg.in_process_executor.name


def gpu_op_tags() -> dict:
    """Tags of a GPU step: the GPU queue for Celery, one GPU for its pod under k8s_job_executor."""
    return {K8S_CONFIG_TAG: GPU_K8S_CONFIG, CELERY_QUEUE_TAG: GPU_QUEUE}


def gpu_run_tags(executor: dg.ExecutorDefinition) -> dict:
    """Run tags of a run with a GPU step: a GPU for the run pod, only when that pod runs the steps."""
    return {K8S_CONFIG_TAG: GPU_K8S_CONFIG} if runs_steps_in_process(executor) else {}
