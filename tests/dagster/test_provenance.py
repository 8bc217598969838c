"""Dagster and provenance: code versions from pass version + model, data versions from the provenance records."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from stratum_core import provenance
from stratum_dagster.defs.passes import factory
from stratum_dagster.resources import CaptionServerResource
from tests.dagster.helpers import register, stratum_resource, write_tree

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two model dirs of Sapiens smoke models whose seg checkpoints differ."""
    from stratum_testing.sapiens_models import build_model_dirs_with_two_seg_checkpoints

    return build_model_dirs_with_two_seg_checkpoints(tmp_path_factory.mktemp("models-a"),
                                                     tmp_path_factory.mktemp("models-b"))


def image_step_assets(monkeypatch, model_dir: Path) -> dg.AssetsDefinition:
    """The image step's assets as a code location started with $STRATUM_MODEL_DIR=model_dir builds them."""
    monkeypatch.setenv("STRATUM_MODEL_DIR", str(model_dir))
    return factory.build_step_assets(factory.IMAGE_STEP, factory.steps()[factory.IMAGE_STEP])


RESOURCES = {"stratum": stratum_resource(Path("in"), Path("out")), "caption_server": CaptionServerResource()}


def stale_status(instance: dg.DagsterInstance, assets: dg.AssetsDefinition, name: str, key: str) -> StaleStatus:
    """What the UI shows for one partition, read through the instance."""
    graph = dg.Definitions(assets=[assets], resources=RESOURCES).resolve_asset_graph()
    return CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance)).get_status(
        dg.AssetKey(name), key)


def test_a_pass_assets_code_version_is_its_pass_version_and_model(monkeypatch, model_dirs):
    specs = {s.key.to_user_string(): s for s in image_step_assets(monkeypatch, model_dirs[0]).specs}
    assert specs["metadata"].code_version == "v1"
    assert specs["seg"].code_version.startswith("v1|facebook/sapiens-seg-1b-torchscript|files:")


def test_after_a_model_change_the_code_version_differs_and_the_shard_is_stale(monkeypatch, model_dirs, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png", "people/b.png"])
    with dg.instance_for_test() as instance:
        [key] = register(src, out, instance, "people")
        before = image_step_assets(monkeypatch, model_dirs[0])
        resources = {"stratum": stratum_resource(src, out, model_dir=str(model_dirs[0])),
                     "caption_server": CaptionServerResource()}
        assert dg.materialize([before], selection=["metadata", "seg"], partition_key=key, instance=instance,
                              resources=resources).success
        assert stale_status(instance, before, "seg", key) == StaleStatus.FRESH

        after = image_step_assets(monkeypatch, model_dirs[1])
        assert before.code_versions_by_key[dg.AssetKey("seg")] != after.code_versions_by_key[dg.AssetKey("seg")]
        assert stale_status(instance, after, "seg", key) == StaleStatus.STALE
        assert stale_status(instance, after, "metadata", key) == StaleStatus.FRESH


def test_a_materialisation_carries_the_data_version_of_the_shards_provenance(monkeypatch, model_dirs, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png", "people/b.png"])
    with dg.instance_for_test() as instance:
        [key] = register(src, out, instance, "people")
        assets = image_step_assets(monkeypatch, model_dirs[0])
        resources = {"stratum": stratum_resource(src, out), "caption_server": CaptionServerResource()}
        assert dg.materialize([assets], selection=["metadata"], partition_key=key, instance=instance,
                              resources=resources).success
        event = instance.get_latest_materialization_event(dg.AssetKey("metadata"))
        recorded = event.asset_materialization.tags["dagster/data_version"]
        assert recorded == provenance.shard_data_version(out, ["people/a", "people/b"], "metadata")
