"""Dagster's queued run coordinator, plus the GPU run tags on every submitted run that executes a GPU step.

Runs started from the asset catalog, a backfill or an asset sensor run Dagster's implicit asset job, which
carries no job tags; every such run still passes through the instance's run coordinator before a run
launcher starts it. Set in dagster.yaml (dagster.postgres.yaml.example does):

    run_coordinator:
      module: stratum_dagster.run_coordinator
      class: StratumRunCoordinator

With the in-process executor the run's own pod executes the image step, so that run gets the
`dagster-k8s/config` GPU request (K8sRunLauncher reads it); with k8s_job_executor or Celery the steps
carry their own placement tags and the run gets nothing.
"""

from __future__ import annotations

import json

import dagster as dg

from stratum_dagster.execution import GPU_K8S_CONFIG, GPU_POOL, K8S_CONFIG_TAG


class StratumRunCoordinator(dg.QueuedRunCoordinator):
    """QueuedRunCoordinator (same config) that tags in-process runs with a GPU step with the GPU request."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        tags = gpu_tags_for_run(self._instance, run)
        if tags:
            self._instance.add_run_tags(run.run_id, tags)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = dg.SubmitRunContext(run, context.workspace)
        return super().submit_run(context)


def gpu_tags_for_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, str]:
    """The tags `run` still needs for its GPU: the Kubernetes GPU request when it executes a `gpu`-pool step
    in-process (its own pod then runs the step), else none."""
    if K8S_CONFIG_TAG in run.tags or not run.execution_plan_snapshot_id:
        return {}
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    if plan.executor_name != dg.in_process_executor.name:
        return {}
    selected = set(plan.step_keys_to_execute or [s.key for s in plan.steps])
    if not any(step.pool == GPU_POOL for step in plan.steps if step.key in selected):
        return {}
    return {K8S_CONFIG_TAG: json.dumps(GPU_K8S_CONFIG)}
