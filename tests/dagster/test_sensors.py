"""The new-images and filesystem-status sensors, evaluated with build_sensor_context on a real instance."""

from __future__ import annotations

import json

import dagster as dg

from stratum_core import shards
from stratum_core.artifacts import pass_files
from stratum_core.passes import DEFAULT_PASSES
from stratum_core.cli import main as cli_main
from stratum_dagster.defs.shards.sensors import (new_images_sensor, shard_partitions_sensor,
                                                 shard_status_sensor)
from stratum_dagster.definitions import defs
from stratum_testing.cli import process_cli
from tests.dagster.helpers import register, shard_processed_by_the_cli, stratum_resource, tick, write_tree


def test_new_images_sensor_registers_shards_for_a_new_folder_and_requests_runs(tmp_path, fresh_instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [f"ffhq/{i:02d}.png" for i in range(5)])
    stratum = stratum_resource(src, out, shard_size=2)
    result = tick(new_images_sensor, fresh_instance, stratum, None)
    assert [r.partition_key for r in result.run_requests] == ["ffhq-0000", "ffhq-0001", "ffhq-0002"]
    assert fresh_instance.get_dynamic_partitions("shards") == ["ffhq-0000", "ffhq-0001", "ffhq-0002"]
    assert json.loads(result.cursor) == {"after": None}


def test_new_images_sensor_second_tick_without_changes_requests_nothing(tmp_path, fresh_instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    stratum = stratum_resource(src, out)
    first = tick(new_images_sensor, fresh_instance, stratum, None)
    second = tick(new_images_sensor, fresh_instance, stratum, first.cursor)
    assert len(first.run_requests) == 1
    assert not second.run_requests and not second.dynamic_partitions_requests


def test_new_images_land_in_new_shards_without_touching_old_ones(tmp_path, fresh_instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    stratum = stratum_resource(src, out, shard_size=2)
    first = tick(new_images_sensor, fresh_instance, stratum, None)
    old = (out / ".stratum" / "shards" / "ffhq-0000.json").read_bytes()
    write_tree(src, ["ffhq/0.png", "celeb/x.png"])
    second = tick(new_images_sensor, fresh_instance, stratum, first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == ["celeb-0000", "ffhq-0001"]
    assert (out / ".stratum" / "shards" / "ffhq-0000.json").read_bytes() == old
    assert shards.load_shard(out, "ffhq-0001").images == ("ffhq/0.png",)


def test_status_sensor_reports_a_shard_completed_by_the_cli(tmp_path, fresh_instance):
    src, out, key = shard_processed_by_the_cli(tmp_path, fresh_instance)
    result = tick(shard_status_sensor, fresh_instance, stratum_resource(src, out), None)
    reported = sorted((e.asset_key.to_user_string(), e.partition) for e in result.asset_events)
    assert reported == [("metadata", key), ("pixel", key)]
    assert fresh_instance.get_materialized_partitions(dg.AssetKey("pixel")) == {key}
    assert not result.run_requests


def test_status_sensor_requests_a_rerun_after_a_file_is_deleted(tmp_path, fresh_instance):
    src, out, key = shard_processed_by_the_cli(tmp_path, fresh_instance)
    stratum = stratum_resource(src, out)
    first = tick(shard_status_sensor, fresh_instance, stratum, None)
    quiet = tick(shard_status_sensor, fresh_instance, stratum, first.cursor)
    assert not quiet.run_requests and not quiet.asset_events
    (out / "ffhq" / "b" / "pixel.npy").unlink()  # what `stratum verify --fix` does to a bad file
    result = tick(shard_status_sensor, fresh_instance, stratum, quiet.cursor)
    assert [(r.partition_key, r.asset_selection) for r in result.run_requests] == [(key, [dg.AssetKey("pixel")])]
    assert not result.asset_events


def test_status_sensor_requests_one_run_per_shard_for_every_pass_that_lost_files(tmp_path, fresh_instance):
    src, out, key = shard_processed_by_the_cli(tmp_path, fresh_instance)
    stratum = stratum_resource(src, out)
    first = tick(shard_status_sensor, fresh_instance, stratum, None)
    (out / "ffhq" / "a" / "metadata.json").unlink()
    (out / "ffhq" / "b" / "pixel.npy").unlink()
    result = tick(shard_status_sensor, fresh_instance, stratum, first.cursor)
    [request] = result.run_requests
    assert request.partition_key == key
    assert request.asset_selection == [dg.AssetKey("metadata"), dg.AssetKey("pixel")]


def test_shard_partitions_sensor_adds_cli_registered_shards_as_partitions_and_requests_no_run(tmp_path, fresh_instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png", "celeb/c.png"])
    assert cli_main(["shards", "register", str(src), "-o", str(out), "--shard-size", "1"]) == 0
    result = tick(shard_partitions_sensor, fresh_instance, stratum_resource(src, out), None)
    assert fresh_instance.get_dynamic_partitions("shards") == ["celeb-0000", "ffhq-0000", "ffhq-0001"]
    assert not result.run_requests
    assert tick(shard_partitions_sensor, fresh_instance, stratum_resource(src, out), None).skip_reason


def test_shard_partitions_sensor_is_on_by_default_and_the_launching_sensors_are_off():
    statuses = {s.name: s.default_status for s in defs().sensors}
    assert statuses == {"shard_partitions_sensor": dg.DefaultSensorStatus.RUNNING,
                        "source_images_sensor": dg.DefaultSensorStatus.RUNNING,  # observes, launches nothing
                        "new_images_sensor": dg.DefaultSensorStatus.STOPPED,
                        "shard_status_sensor": dg.DefaultSensorStatus.STOPPED}


def test_new_images_sensor_requests_no_run_for_a_shard_already_finished(tmp_path, fresh_instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png", "celeb/b.png"])
    assert cli_main(["shards", "register", str(src), "-o", str(out)]) == 0
    assert process_cli(src, out, "--passes", "pixel", "--device", "cpu",
                       "--shard-key", "ffhq-0000", "--workers", "1") == 0
    for name in DEFAULT_PASSES:  # as if every pass had run
        for filename in pass_files(name):
            (out / "ffhq" / "a" / filename).write_bytes(b"")
    result = tick(new_images_sensor, fresh_instance, stratum_resource(src, out), None)
    assert [r.partition_key for r in result.run_requests] == ["celeb-0000"]
    assert fresh_instance.get_dynamic_partitions("shards") == ["celeb-0000", "ffhq-0000"]


def test_status_sensor_does_not_report_shards_dagster_already_materialised(tmp_path, fresh_instance):
    from tests.dagster.helpers import materialize

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["ffhq/a.png"])
    [key] = register(src, out, fresh_instance, "ffhq")
    stratum = stratum_resource(src, out)
    materialize(["metadata"], key, fresh_instance, stratum)
    result = tick(shard_status_sensor, fresh_instance, stratum, None)
    assert not result.asset_events and not result.run_requests


def test_partitions_command_adds_the_registered_shards_to_the_instance_without_a_daemon(tmp_path, monkeypatch,
                                                                                          capsys):
    from stratum_dagster.partitions import main as partitions_main

    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("STRATUM_INPUT_DIR", raising=False)
    write_tree(src, ["ffhq/a.png", "celeb/b.png"])
    assert cli_main(["shards", "register", str(src), "-o", str(out)]) == 0
    capsys.readouterr()
    assert partitions_main([str(out)]) == 0
    assert partitions_main([str(out)]) == 0  # again: nothing new
    assert capsys.readouterr().out.splitlines() == [
        "2 shards added as partitions, 2 in all",
        "their sources are first observed on source_images_sensor's next tick (set STRATUM_INPUT_DIR to record "
        "them now)",
        "0 shards added as partitions, 2 in all"]
    with dg.DagsterInstance.from_config(str(home)) as fresh_instance:
        assert sorted(fresh_instance.get_dynamic_partitions("shards")) == ["celeb-0000", "ffhq-0000"]
