"""A backfill launched as the UI does (GraphQL launchPartitionBackfill) on the default install: the daemon's
runs execute in-process, carry the GPU request tags and retry a transient step failure (a caption
server lost mid-run; one that is down before the step starts is a setup problem, never retried)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time

import dagster as dg
import pytest

from stratum_core import shards
from stratum_dagster.execution import GPU_K8S_CONFIG
from stratum_dagster.partitions import SHARD_PARTITIONS_NAME
from tests.dagster.helpers import write_tree
from stratum_testing.ollama import FakeOllama
from tests.scale.stack import REPO, base_env, daemon, launch_backfill

DEFAULT_EXAMPLE = REPO / "dagster.yaml.example"


class _ServerLostMidRun(FakeOllama):
    """A caption server that answers the step's checks, then fails every caption and every later check:
    lost mid-run, which the caption pass reports as an infrastructure error (transient)."""

    def tags(self, body: dict) -> tuple[int, dict]:
        if self.generate_count:
            return 503, {"error": "gone"}
        return super().tags(body)


def _wait_for_event(instance: dg.DagsterInstance, backfill_id: str, event_type: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for run in instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id})):
            events = [e for e in instance.all_logs(run.run_id)
                      if e.dagster_event and e.dagster_event.event_type_value == event_type]
            if events:
                return instance.get_run_by_id(run.run_id), events[0]
        time.sleep(1.0)
    raise TimeoutError(f"no {event_type} in backfill {backfill_id} after {timeout_s:.0f} s")


@pytest.fixture
def default_install(tmp_path):
    """dagster.yaml.example on SQLite, one registered shard of 2 images, smoke seg weights."""
    torch = pytest.importorskip("torch")
    from stratum_testing.sapiens_models import build_sapiens_models

    torch.set_num_threads(1)
    home, src, out, models = (tmp_path / d for d in ("home", "in", "out", "models"))
    home.mkdir()
    shutil.copyfile(DEFAULT_EXAMPLE, home / "dagster.yaml")
    write_tree(src, ["photos/a.png", "photos/b.png"])
    build_sapiens_models(models)
    [shard], _ = shards.register_group(src, out, "photos", 1000)
    return base_env(home, src, out, STRATUM_MODEL_DIR=str(models)), home, out, shard.key


def test_a_ui_backfill_runs_in_process_with_gpu_tags_and_retries_a_transient_failure(default_install, tmp_path):
    env, home, out, key = default_install
    fake = _ServerLostMidRun(always=500)
    with dg.DagsterInstance.from_config(str(home)) as instance, contextlib.ExitStack() as servers:
        servers.enter_context(fake)
        env = {**env, "STRATUM_CAPTION_URL": fake.generate_url}
        instance.add_dynamic_partitions(SHARD_PARTITIONS_NAME, [key])
        servers.enter_context(daemon(env, tmp_path / "daemon.log"))
        backfill_id = launch_backfill(instance, ["metadata", "seg", "caption"], [key])
        try:
            run, retry = _wait_for_event(instance, backfill_id, "STEP_UP_FOR_RETRY", timeout_s=180)
        except TimeoutError:
            print((tmp_path / "daemon.log").read_text()[-4000:])
            raise

        assert run.job_name == "__ASSET_JOB" and run.tags["dagster/partition"] == key
        assert json.loads(run.tags["dagster-k8s/config"]) == GPU_K8S_CONFIG
        assert instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id).executor_name == "in_process"
        # the caption server was lost mid-run: a transient error, retried by the asset's policy after 30 s
        assert retry.step_key == "caption"
        assert "requested a retry in 30 seconds" in retry.dagster_event.message
        # the image step ran in the run's own process, before caption, and its files are on disk
        [success] = [e for e in instance.all_logs(run.run_id)
                     if e.dagster_event and e.dagster_event.event_type_value == "STEP_SUCCESS"
                     and e.step_key == "image_passes"]
        assert success.dagster_event.pid == retry.dagster_event.pid
        assert (out / "photos" / "a" / "seg.npy").is_file()
        instance.run_coordinator.cancel_run(run.run_id)
