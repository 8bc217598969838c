"""dagster.yaml.example: a valid instance config whose pool and run limits agree (one GPU step per GPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

EXAMPLE = Path(__file__).parents[2] / "dagster.yaml.example"


def test_example_instance_lets_one_gpu_step_run_per_concurrent_run(tmp_path):
    shutil.copyfile(EXAMPLE, tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        concurrency = instance.get_concurrency_config()
        # the gpu pool, unset, gets default_limit: it must admit a GPU step for every run allowed at once
        assert concurrency.pool_config.default_pool_limit == concurrency.run_queue_config.max_concurrent_runs == 4
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60


def test_example_instance_allows_one_run_per_shard_at_a_time(tmp_path):
    shutil.copyfile(EXAMPLE, tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
