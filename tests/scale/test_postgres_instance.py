"""dagster.postgres.yaml.example: loads as written against a real PostgreSQL, with the stratum limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

EXAMPLE = Path(__file__).parents[2] / "dagster.postgres.yaml.example"


@pytest.fixture
def pg_instance(postgres, tmp_path, monkeypatch):
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    shutil.copyfile(EXAMPLE, tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_the_postgres_example_stores_runs_and_events_in_postgres(pg_instance, postgres):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    # host and port come from the environment, the driver from the scheme (psycopg2, not psycopg 3)
    assert pg_instance.run_storage.postgres_url.startswith("postgresql+psycopg2://")
    assert f"127.0.0.1:{postgres['DAGSTER_PG_PORT']}/dagster" in pg_instance.run_storage.postgres_url
    dg.materialize([_probe], instance=pg_instance)
    assert pg_instance.get_latest_materialization_event(dg.AssetKey("_probe")) is not None


@dg.asset
def _probe() -> None:
    """A trivial asset, to write a run and its events to the instance."""


def test_the_postgres_example_queues_runs_one_per_gpu_and_one_per_shard(pg_instance):
    from stratum_dagster.run_coordinator import StratumRunCoordinator

    assert isinstance(pg_instance.run_coordinator, StratumRunCoordinator)
    concurrency = pg_instance.get_concurrency_config()
    assert concurrency.run_queue_config.max_concurrent_runs == concurrency.pool_config.default_pool_limit == 4
    assert concurrency.pool_config.pool_granularity.value == "op"
    [limit] = concurrency.run_queue_config.tag_concurrency_limits
    assert limit == {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


def test_the_postgres_example_frees_a_crashed_runs_slots_promptly(pg_instance):
    assert pg_instance.run_monitoring_enabled
    assert pg_instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60
