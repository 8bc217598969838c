"""A real scale-out deployment: PostgreSQL storage, Redis broker, Celery workers per queue, the daemon.

A UI-style backfill of metadata + pixel + seg (smoke model) over 4 shards, with STRATUM_EXECUTOR=celery and
the `gpu` pool set to 1: every run succeeds, no two GPU steps overlap, the files are on disk and the
partitions show materialised. The figures (runs, overlap, wall time) are logged for the record.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from stratum_core import shards
from stratum_dagster.partitions import SHARD_PARTITIONS_NAME
from tests.dagster.helpers import write_tree
from tests.scale.stack import (BIN, EXAMPLE, base_env, celery_worker, daemon, launch_backfill,
                               wait_for_backfill_runs)

log = logging.getLogger(__name__)

SHARDS = 4
ASSETS = ["metadata", "pixel", "seg"]
GPU_STEP_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY"}


@pytest.fixture
def deployment(postgres, redis_url, tmp_path, monkeypatch):
    """DAGSTER_HOME from dagster.postgres.yaml.example, 4 registered shards of 2 images, smoke seg weights."""
    torch = pytest.importorskip("torch")
    from stratum_testing.sapiens_models import build_sapiens_models

    torch.set_num_threads(1)
    for name, value in postgres.items():  # this process opens the same instance
        monkeypatch.setenv(name, value)
    home, src, out, models = (tmp_path / d for d in ("home", "in", "out", "models"))
    home.mkdir()
    shutil.copyfile(EXAMPLE, home / "dagster.yaml")
    write_tree(src, [f"photos/{i}.png" for i in range(2 * SHARDS)])
    build_sapiens_models(models)
    env = base_env(home, src, out, **postgres, STRATUM_EXECUTOR="celery", STRATUM_MODEL_DIR=str(models),
                   DAGSTER_CELERY_BROKER_URL=redis_url, DAGSTER_CELERY_BACKEND_URL=redis_url)
    # the docs' command: one GPU step at a time across the deployment
    subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "1"], env=env, check=True,
                   capture_output=True)
    created, _ = shards.register_group(src, out, "photos", 2)
    keys = [s.key for s in created]
    return env, home, out, keys


def _gpu_intervals(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> list[tuple[float, float, str]]:
    """(start, end, run) of every attempt of a `gpu`-pool step, from the runs' event logs."""
    intervals = []
    for run in runs:
        plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        gpu_steps = {s.key for s in plan.steps if s.pool == "gpu"}
        start = None
        for event in instance.all_logs(run.run_id):
            if event.dagster_event is None or event.step_key not in gpu_steps:
                continue
            kind = event.dagster_event.event_type_value
            if kind == "STEP_START":
                start = event.timestamp
            elif kind in GPU_STEP_EVENTS and start is not None:
                intervals.append((start, event.timestamp, run.run_id))
                start = None
    return sorted(intervals)


def test_a_celery_backfill_over_postgres_runs_every_shard_with_one_gpu_step_at_a_time(deployment, tmp_path):
    env, home, out, keys = deployment
    assert len(keys) == SHARDS
    with dg.DagsterInstance.from_config(str(home)) as instance, contextlib.ExitStack() as servers:
        instance.add_dynamic_partitions(SHARD_PARTITIONS_NAME, keys)
        # docs/scale-out.md: a worker per queue. The gpu worker takes 2 steps at once, so only the `gpu`
        # pool (1) keeps two GPU steps from overlapping.
        for queue, slots in (("gpu", 2), ("caption", 1), ("dagster", 1)):
            servers.enter_context(celery_worker(queue, env, tmp_path / f"worker-{queue}.log", slots))
        servers.enter_context(daemon(env, tmp_path / "daemon.log"))
        started = time.monotonic()
        backfill_id = launch_backfill(instance, ASSETS, keys)
        try:
            runs = wait_for_backfill_runs(instance, backfill_id, SHARDS, timeout_s=240)
        except TimeoutError:
            for name in ("daemon", "worker-gpu", "worker-dagster"):
                print((tmp_path / f"{name}.log").read_text()[-3000:])
            raise
        wall_s = time.monotonic() - started

        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(keys)
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert {r.job_name for r in runs} == {"__ASSET_JOB"}
        plan = instance.get_execution_plan_snapshot(runs[0].execution_plan_snapshot_id)
        assert plan.executor_name == "celery"
        # the steps ran on the workers of their queues
        worker_logs = {q: (tmp_path / f"worker-{q}.log").read_text() for q in ("gpu", "dagster")}
        assert "image_passes" in worker_logs["gpu"] and "pixel" in worker_logs["dagster"]

        intervals = _gpu_intervals(instance, runs)
        assert len(intervals) >= SHARDS
        overlaps = [(a, b) for a, b in zip(intervals, intervals[1:]) if b[0] < a[1]]
        assert not overlaps, f"GPU steps overlapped: {overlaps}"

        for key in keys:
            for source in shards.shard_sources(Path(env["STRATUM_INPUT_DIR"]), out, key):
                for artifact in ("metadata.json", "pixel.npy", "seg.npy"):
                    assert (out / source.image_id / artifact).is_file(), (source.image_id, artifact)
        for asset in ASSETS:
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys)
        log.warning("celery backfill: %d runs (all SUCCESS, up to %d at once), %d GPU steps, none overlapping, "
                    "%.1f s from launch to the last run's end", len(runs), _most_at_once(instance, runs),
                    len(intervals), wall_s)


def _most_at_once(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> int:
    """The most runs in progress at the same moment (from their start and end times)."""
    records = instance.get_run_records(dg.RunsFilter(run_ids=[r.run_id for r in runs]))
    spans = [(r.start_time, r.end_time) for r in records]
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
