"""The status sensor re-runs stale shards when STRATUM_RERUN_STALE=1, and that run recomputes them."""

from __future__ import annotations

import dagster as dg
import pytest

from stratum_core import provenance
from stratum_core.store import Store
from stratum_dagster.defs.passes.step import REDO_TAG
from stratum_dagster.defs.shards.sensors import RERUN_STALE_ENV, shard_status_sensor
from stratum_dagster.resources import CaptionServerResource
from tests.dagster.helpers import (PASSES_WITHOUT_RETRIES, shard_processed_by_the_cli, stratum_resource, tick,
                                   write_image)


@pytest.fixture
def processed(tmp_path, fresh_instance):
    """A registered shard of two images whose pixel pass ran through the CLI; b's source then replaced."""
    src, out, key = shard_processed_by_the_cli(tmp_path, fresh_instance)
    write_image(src / "ffhq" / "b.png", size=(40, 56), seed=9)  # same name, other content
    return src, out, key


def _mtimes(out) -> dict[str, int]:
    return {i: (out / "ffhq" / i / "pixel.npy").stat().st_mtime_ns for i in ("a", "b")}


def test_with_rerun_stale_the_sensor_requests_a_redo_stale_run_of_the_stale_passes(processed, fresh_instance,
                                                                                 monkeypatch):
    src, out, key = processed
    monkeypatch.setenv(RERUN_STALE_ENV, "1")
    result = tick(shard_status_sensor, fresh_instance, stratum_resource(src, out), None)
    [request] = result.run_requests
    assert request.partition_key == key and request.tags == {REDO_TAG: "stale"}
    assert dg.AssetKey("pixel") in request.asset_selection


def test_without_rerun_stale_a_stale_shard_gets_no_run(processed, fresh_instance, monkeypatch):
    src, out, _ = processed
    monkeypatch.delenv(RERUN_STALE_ENV, raising=False)
    result = tick(shard_status_sensor, fresh_instance, stratum_resource(src, out), None)
    assert not result.run_requests


def test_the_same_staleness_on_a_later_tick_has_the_same_run_key(processed, fresh_instance, monkeypatch):
    src, out, _ = processed
    monkeypatch.setenv(RERUN_STALE_ENV, "1")
    stratum = stratum_resource(src, out)
    first = tick(shard_status_sensor, fresh_instance, stratum, None)
    second = tick(shard_status_sensor, fresh_instance, stratum, first.cursor)
    assert [r.run_key for r in second.run_requests] == [r.run_key for r in first.run_requests]


def test_the_requested_run_recomputes_the_stale_artifacts_and_leaves_the_rest(processed, fresh_instance,
                                                                              monkeypatch):
    src, out, key = processed
    monkeypatch.setenv(RERUN_STALE_ENV, "1")
    stratum = stratum_resource(src, out)
    first = tick(shard_status_sensor, fresh_instance, stratum, None)
    [request] = first.run_requests
    before = _mtimes(out)
    assert provenance.image_staleness(out, ["ffhq/a", "ffhq/b"]).stale_images["pixel"] == ["ffhq/b"]
    result = dg.materialize(
        [*PASSES_WITHOUT_RETRIES.assets, *PASSES_WITHOUT_RETRIES.asset_checks],
        selection=request.asset_selection, partition_key=key, instance=fresh_instance, tags=request.tags,
        resources={"stratum": stratum, "caption_server": CaptionServerResource()})
    assert result.success
    after = _mtimes(out)
    assert after["a"] == before["a"] and after["b"] != before["b"]
    assert not provenance.image_staleness(out, ["ffhq/a", "ffhq/b"]).stale
    metadata = provenance.read_record(Store(out), "ffhq/b")["source"]
    assert metadata["size"] == (src / "ffhq" / "b.png").stat().st_size
    assert not tick(shard_status_sensor, fresh_instance, stratum, first.cursor).run_requests
