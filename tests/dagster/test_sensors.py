"""The new-images and filesystem-status sensors, evaluated with build_sensor_context on a real instance."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from stratum_core import shards
from stratum_core.cli import main as cli_main
from stratum_dagster.defs.shards.sensors import new_images_sensor, shard_status_sensor
from stratum_dagster.definitions import defs
from tests.dagster.helpers import register, stratum_resource, write_tree


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(sensor, instance: dg.DagsterInstance, stratum, cursor: str | None) -> dg.SensorResult:
    """Evaluate one tick and apply its partition requests and asset events, as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"stratum": stratum},
                                      definitions=defs)
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    return result


def test_new_images_sensor_registers_shards_for_a_new_folder_and_requests_runs(tmp_path, instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [f"ffhq/{i:02d}.png" for i in range(5)])
    stratum = stratum_resource(src, out, shard_size=2)
    result = tick(new_images_sensor, instance, stratum, None)
    assert [r.partition_key for r in result.run_requests] == ["ffhq-0000", "ffhq-0001", "ffhq-0002"]
    assert instance.get_dynamic_partitions("shards") == ["ffhq-0000", "ffhq-0001", "ffhq-0002"]
    assert json.loads(result.cursor) == {"after": None}


def test_new_images_sensor_second_tick_without_changes_requests_nothing(tmp_path, instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    stratum = stratum_resource(src, out)
    first = tick(new_images_sensor, instance, stratum, None)
    second = tick(new_images_sensor, instance, stratum, first.cursor)
    assert len(first.run_requests) == 1
    assert not second.run_requests and not second.dynamic_partitions_requests


def test_new_images_land_in_new_shards_without_touching_old_ones(tmp_path, instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    stratum = stratum_resource(src, out, shard_size=2)
    first = tick(new_images_sensor, instance, stratum, None)
    old = (out / ".stratum" / "shards" / "ffhq-0000.json").read_bytes()
    write_tree(src, ["ffhq/0.png", "celeb/x.png"])
    second = tick(new_images_sensor, instance, stratum, first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == ["celeb-0000", "ffhq-0001"]
    assert (out / ".stratum" / "shards" / "ffhq-0000.json").read_bytes() == old
    assert shards.load_shard(out, "ffhq-0001").images == ("ffhq/0.png",)


def test_status_sensor_reports_a_shard_completed_by_the_cli(tmp_path, instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    [key] = register(src, out, instance, "ffhq")
    assert cli_main(["process", str(src), "-o", str(out), "--passes", "pixel", "--device", "cpu",
                     "--shard-key", key, "--workers", "1"]) == 0
    result = tick(shard_status_sensor, instance, stratum_resource(src, out), None)
    reported = sorted((e.asset_key.to_user_string(), e.partition) for e in result.asset_events)
    assert reported == [("metadata", key), ("pixel", key)]
    assert instance.get_materialized_partitions(dg.AssetKey("pixel")) == {key}
    assert not result.run_requests


def test_status_sensor_requests_a_rerun_after_a_file_is_deleted(tmp_path, instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    [key] = register(src, out, instance, "ffhq")
    cli_main(["process", str(src), "-o", str(out), "--passes", "pixel", "--device", "cpu", "--shard-key", key,
              "--workers", "1"])
    stratum = stratum_resource(src, out)
    first = tick(shard_status_sensor, instance, stratum, None)
    quiet = tick(shard_status_sensor, instance, stratum, first.cursor)
    assert not quiet.run_requests and not quiet.asset_events
    (out / "ffhq" / "b" / "pixel.npy").unlink()  # what `stratum verify --fix` does to a bad file
    result = tick(shard_status_sensor, instance, stratum, quiet.cursor)
    assert [(r.job_name, r.partition_key) for r in result.run_requests] == [("pixel_job", key)]
    assert not result.asset_events


def test_status_sensor_does_not_report_shards_dagster_already_materialised(tmp_path, instance):
    from tests.dagster.helpers import materialize

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png"])
    [key] = register(src, out, instance, "ffhq")
    stratum = stratum_resource(src, out)
    materialize(["metadata"], key, instance, stratum)
    result = tick(shard_status_sensor, instance, stratum, None)
    assert not result.asset_events and not result.run_requests
