"""Executor choice, Celery queues, retry policy and GPU tags: the same for every run, however it starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from stratum_core.errors import ConfigError
from stratum_core.passes import REGISTRY
from stratum_dagster.execution import GPU_K8S_CONFIG, executor_name, stratum_executor

REPO = Path(__file__).parents[2]
QUEUES = {"gpu", "caption", "dagster"}


def _pass_nodes(job: dg.JobDefinition) -> dict[str, dg.OpDefinition]:
    """The ops of the pass area (every asset step and verify check) in `job`."""
    return {name: node.definition for name, node in job.graph.node_dict.items()
            if name not in ("hub_dataset", "source_images")}


def test_every_run_executes_in_process_by_default():
    from stratum_dagster.definitions import defs

    # the implicit asset job is what the asset catalog, backfills and asset sensors run
    jobs = [defs().resolve_implicit_global_asset_job_def(), *defs().resolve_all_job_defs()]
    assert {job.executor_def.name for job in jobs} == {"in_process"}


def test_every_pass_step_and_check_retries_infrastructure_errors_in_any_job():
    from stratum_dagster.definitions import defs

    ops = _pass_nodes(defs().resolve_implicit_global_asset_job_def())
    assert len(ops) == 4 + len(REGISTRY)  # image_passes, caption, t5, pixel; a verify check per pass
    assert {(op.retry_policy.max_retries, op.retry_policy.delay) for op in ops.values()} == {(2, 30)}


def test_every_op_is_routed_to_a_documented_celery_queue_and_only_gpu_steps_request_a_gpu():
    from stratum_dagster.definitions import defs

    ops = _pass_nodes(defs().resolve_implicit_global_asset_job_def())
    queues = {name: op.tags["dagster-celery/queue"] for name, op in ops.items()}
    assert {n: q for n, q in queues.items() if not n.endswith("_verify_check")} == {
        "image_passes": "gpu", "t5": "gpu", "caption": "caption", "pixel": "dagster"}
    assert {q for n, q in queues.items() if n.endswith("_verify_check")} == {"dagster"}
    gpu_requests = {n for n, op in ops.items() if "dagster-k8s/config" in op.tags}
    assert gpu_requests == {"image_passes", "t5"}
    docs = (REPO / "docs" / "scale-out.md").read_text()
    for queue in QUEUES:
        assert f"-q {queue}" in docs


def test_the_executor_setting_names_its_choices():
    assert executor_name({}) == "in_process"
    assert stratum_executor({"STRATUM_EXECUTOR": "celery"}).name == "celery"
    assert stratum_executor({"STRATUM_EXECUTOR": "k8s"}).name == "k8s"
    with pytest.raises(ConfigError, match=r"STRATUM_EXECUTOR='multiprocess': choose one of in_process, celery, k8s"):
        executor_name({"STRATUM_EXECUTOR": "multiprocess"})


@pytest.mark.parametrize("executor", ["celery", "k8s"])
def test_the_documented_run_config_loads_with_its_executor(executor, tmp_path):
    """A fresh code location with STRATUM_EXECUTOR set, as the daemon and webserver load it."""
    example = REPO / "docs" / "run_config" / f"{executor}.yaml"
    script = (
        "import sys, yaml, dagster as dg\n"
        "from stratum_dagster.definitions import defs\n"
        "jobs = [defs().resolve_implicit_global_asset_job_def(), defs().resolve_job_def('enrich_job')]\n"
        "assert {j.executor_def.name for j in jobs} == {sys.argv[2]}, [j.executor_def.name for j in jobs]\n"
        "config = yaml.safe_load(open(sys.argv[1]))\n"
        "for job in jobs:\n"
        "    print(sorted(dg.validate_run_config(job, config)['execution'][sys.argv[2]]))\n")
    env = {**os.environ, "STRATUM_EXECUTOR": executor, "DAGSTER_HOME": str(tmp_path),
           "STRATUM_INPUT_DIR": str(tmp_path), "STRATUM_OUTPUT_DIR": str(tmp_path), "STRATUM_HUB_REPO": "a/b",
           "DAGSTER_CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
           "DAGSTER_CELERY_BACKEND_URL": "redis://127.0.0.1:6379/1"}
    done = subprocess.run([sys.executable, "-c", script, str(example), executor], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {"celery": "'broker'", "k8s": "'step_k8s_config'"}[executor]
    assert expected in done.stdout


@pytest.fixture
def resource_env(tmp_path, monkeypatch) -> None:
    for name in ("STRATUM_INPUT_DIR", "STRATUM_OUTPUT_DIR"):  # the resources' settings, resolved at run creation
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("STRATUM_HUB_REPO", "nobody/unused")


def _run_tags(instance: dg.DagsterInstance, job: dg.JobDefinition, assets: list[str]) -> dict[str, str]:
    """The tags StratumRunCoordinator adds when a run of `assets` in `job` is submitted
    (tests/scale/test_ui_backfill.py submits through it for real)."""
    from stratum_dagster.run_coordinator import gpu_tags_for_run

    run = instance.create_run_for_job(job, asset_selection=frozenset(dg.AssetKey(a) for a in assets))
    return gpu_tags_for_run(instance, run)


def test_a_catalog_run_with_a_gpu_step_gets_the_gpu_request(resource_env, fresh_instance):
    from stratum_dagster.definitions import defs

    catalog_job = defs().resolve_implicit_global_asset_job_def()  # no job tags of its own
    tags = _run_tags(fresh_instance, catalog_job, ["metadata", "seg"])
    assert json.loads(tags["dagster-k8s/config"]) == GPU_K8S_CONFIG


def test_a_run_without_a_gpu_step_gets_no_gpu_request(resource_env, fresh_instance):
    from stratum_dagster.definitions import defs

    assert _run_tags(fresh_instance, defs().resolve_implicit_global_asset_job_def(), ["pixel"]) == {}


def test_steps_that_run_in_their_own_pods_leave_the_run_pod_without_a_gpu(resource_env, fresh_instance):
    from stratum_dagster.definitions import RESOURCES
    from stratum_dagster.defs.passes.assets import defs as pass_defs

    job = dg.Definitions(assets=pass_defs.assets, resources=RESOURCES,
                         executor=stratum_executor({"STRATUM_EXECUTOR": "k8s"})).resolve_implicit_global_asset_job_def()
    assert _run_tags(fresh_instance, job, ["metadata", "seg"]) == {}


def test_the_default_instance_example_uses_the_gpu_tagging_coordinator(tmp_path):
    from stratum_dagster.run_coordinator import StratumRunCoordinator

    shutil.copyfile(REPO / "dagster.yaml.example", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_coordinator, StratumRunCoordinator)
