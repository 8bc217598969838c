"""A source image replaced under the same name shows its shard as stale in Dagster, with nothing re-materialised."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.observe import observe
from dagster._core.loader import LoadingContextForTest

from stratum_core import shards
from stratum_core.source_versions import shard_source_version
from stratum_dagster.defs.shards.sensors import new_images_sensor
from stratum_dagster.defs.sources.observations import SOURCE_IMAGES, source_images, source_images_sensor
from stratum_dagster.resources import CaptionServerResource
from tests.dagster.helpers import (PASSES_WITHOUT_RETRIES, materialize, register, stratum_resource, tick, write_image,
                                   write_tree)


@pytest.fixture
def two_shards(tmp_path):
    """Two shards (people, pets) registered on disk and as partitions of a fresh instance."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png", "people/b.png", "pets/c.png"])
    with dg.instance_for_test() as instance:
        [people] = register(src, out, instance, "people")
        [pets] = register(src, out, instance, "pets")
        yield instance, src, out, people, pets


def observe_by_sensor(instance: dg.DagsterInstance, stratum, cursor: str | None = None) -> dg.SensorResult:
    """One tick of the sensor, its observations stored as the sensor daemon stores them."""
    return tick(source_images_sensor, instance, stratum, cursor)


def replace_source(path: Path) -> None:
    """Another picture under the same name (and a later mtime, whatever the filesystem's resolution)."""
    before = path.stat().st_mtime_ns
    write_image(path, size=(64, 48), seed=9)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


def resolver(instance: dg.DagsterInstance, stratum) -> CachingStaleStatusResolver:
    """What the UI reads: the stale status over the pass area plus the source asset."""
    graph = dg.Definitions(assets=[*PASSES_WITHOUT_RETRIES.assets, source_images],
                           resources={"stratum": stratum, "caption_server": CaptionServerResource()}
                           ).resolve_asset_graph()
    return CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))


def test_pass_assets_that_read_pixels_depend_on_the_source_images():
    from stratum_dagster.definitions import defs

    graph = defs().resolve_asset_graph()
    readers = {k.to_user_string() for k in graph.get(SOURCE_IMAGES).child_keys}
    assert readers == {"metadata", "caption", "dinov3", "pose", "seg", "depth", "normal", "pixel"}  # not t5
    assert graph.get(SOURCE_IMAGES).is_observable


def test_observing_the_sources_is_a_cpu_step_on_the_cpu_queue():
    from stratum_dagster.definitions import defs
    from stratum_dagster.execution import CELERY_QUEUE_TAG, CPU_QUEUE

    node = defs().resolve_implicit_global_asset_job_def().graph.node_dict["source_images"]
    assert node.definition.tags[CELERY_QUEUE_TAG] == CPU_QUEUE
    assert "dagster-k8s/config" not in node.definition.tags


def test_the_sensor_observes_each_shard_with_its_source_version(two_shards):
    instance, src, out, people, pets = two_shards
    stratum = stratum_resource(src, out)
    result = observe_by_sensor(instance, stratum)
    assert sorted(e.partition for e in result.asset_events) == [people, pets]
    record = instance.get_latest_data_version_record(SOURCE_IMAGES, True, people)
    recorded = record.event_log_entry.asset_observation.tags["dagster/data_version"]
    assert recorded == shard_source_version(src, shards.load_shard(out, people)).version


def test_the_sensor_observes_again_only_the_shard_whose_source_changed(two_shards):
    instance, src, out, people, pets = two_shards
    stratum = stratum_resource(src, out)
    first = observe_by_sensor(instance, stratum)
    assert observe_by_sensor(instance, stratum, first.cursor).asset_events == []
    replace_source(src / "people/b.png")
    again = observe_by_sensor(instance, stratum, first.cursor)
    assert [e.partition for e in again.asset_events] == [people]


def test_a_replaced_source_makes_the_shards_partition_stale_without_rematerialising(two_shards):
    instance, src, out, people, pets = two_shards
    stratum = stratum_resource(src, out)
    cursor = observe_by_sensor(instance, stratum).cursor
    for key in (people, pets):
        assert materialize(["metadata"], key, instance, stratum).success
    assert resolver(instance, stratum).get_status(dg.AssetKey("metadata"), people) == StaleStatus.FRESH

    replace_source(src / "people/b.png")
    observe_by_sensor(instance, stratum, cursor)

    status = resolver(instance, stratum)
    assert status.get_status(dg.AssetKey("metadata"), people) == StaleStatus.STALE
    [cause] = status.get_stale_causes(dg.AssetKey("metadata"), people)
    assert cause.dependency == AssetKeyPartitionKey(SOURCE_IMAGES, people)
    assert cause.reason == "has a new dependency data version"
    assert status.get_status(dg.AssetKey("metadata"), pets) == StaleStatus.FRESH


def test_observing_the_source_asset_in_a_run_reports_the_change_too(two_shards):
    instance, src, out, people, pets = two_shards
    stratum = stratum_resource(src, out)
    assert observe([source_images], instance=instance, resources={"stratum": stratum}).success
    assert materialize(["metadata"], people, instance, stratum).success
    replace_source(src / "people/a.png")
    assert observe([source_images], instance=instance, resources={"stratum": stratum}).success
    status = resolver(instance, stratum)
    assert status.get_status(dg.AssetKey("metadata"), people) == StaleStatus.STALE
    assert [c.dependency for c in status.get_stale_causes(dg.AssetKey("metadata"), people)] == \
        [AssetKeyPartitionKey(SOURCE_IMAGES, people)]


def test_a_shard_run_as_soon_as_the_new_images_sensor_adds_it_still_sees_a_later_source_change(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png", "people/b.png"])
    stratum = stratum_resource(src, out)
    with dg.instance_for_test() as instance:
        [key] = [r.partition_key for r in tick(new_images_sensor, instance, stratum).run_requests]
        assert materialize(["metadata"], key, instance, stratum).success  # the requested run, before any
        replace_source(src / "people/a.png")                             # source_images_sensor tick
        observe_by_sensor(instance, stratum)
        assert resolver(instance, stratum).get_status(dg.AssetKey("metadata"), key) == StaleStatus.STALE


def test_a_shard_run_as_soon_as_the_partitions_command_adds_it_still_sees_a_later_source_change(tmp_path,
                                                                                                monkeypatch):
    from stratum_dagster.partitions import main as partitions_main

    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    home.mkdir()
    write_tree(src, ["people/a.png", "people/b.png"])
    [shard] = shards.register_group(src, out, "people", 1000)[0]
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("STRATUM_INPUT_DIR", str(src))
    assert partitions_main([str(out)]) == 0
    stratum = stratum_resource(src, out)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        record = instance.get_latest_data_version_record(SOURCE_IMAGES, True, shard.key)
        assert record.event_log_entry.asset_observation.tags["dagster/data_version"] == \
            shard_source_version(src, shard).version
        assert materialize(["metadata"], shard.key, instance, stratum).success  # before any sensor tick
        assert resolver(instance, stratum).get_status(dg.AssetKey("metadata"), shard.key) == StaleStatus.FRESH
        replace_source(src / "people/a.png")
        observe_by_sensor(instance, stratum)
        assert resolver(instance, stratum).get_status(dg.AssetKey("metadata"), shard.key) == StaleStatus.STALE
