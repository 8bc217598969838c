"""Pass assets over shards: definitions, deps, materialising cheap and smoke-model passes, verify checks."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from stratum_core.passes import DEFAULT_PASSES, MODEL_PASSES, REGISTRY, pass_class, upstream_passes
from stratum_dagster.defs.passes.reporting import PREVIEW_WIDTH
from stratum_dagster.resources import CaptionServerResource
from tests.dagster.helpers import (asset_metadata, check_results, materialize, register, run_job, step_of_event,
                                   stratum_resource, write_tree)


@pytest.fixture
def tree(tmp_path: Path, instance) -> tuple[Path, Path, str]:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png", "people/b.png"])
    [key] = register(src, out, instance, "people")
    return src, out, key


def test_definitions_load_and_validate():
    from stratum_dagster.definitions import defs

    dg.Definitions.validate_loadable(defs())
    jobs = {j.name for j in defs().resolve_all_job_defs()}
    assert {"enrich_job", "publish_job", "reconcile_job", "pixel_job", "seg_job", "t5_job"} <= jobs


def test_asset_deps_follow_the_spec():
    from stratum_dagster.definitions import defs

    graph = defs().resolve_asset_graph()
    deps = {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys)
            for k in graph.get_all_asset_keys()}
    src = "source_images"  # every pass that reads the image depends on its shard's sources
    assert {k: v for k, v in deps.items() if k in REGISTRY} == {  # every pass, on what it reads
        name: sorted([*upstream_passes(name), *([src] if pass_class(name).uses_image else [])]) for name in REGISTRY}
    assert {k: sorted(set(v) - {src}) for k, v in deps.items() if k in REGISTRY and set(v) - {src}} == {
        "t5": ["caption"], "depth": ["seg"], "normal": ["seg"]}
    assert sorted(k for k, v in deps.items() if k in REGISTRY and src not in v) == ["t5"]  # t5 reads no pixels
    assert deps[src] == []
    assert deps["hub_dataset"] == sorted(["metadata", *DEFAULT_PASSES])


def test_every_pass_asset_is_partitioned_by_shard_and_enrich_job_leaves_out_pixel():
    from stratum_dagster.definitions import defs

    graph = defs().resolve_asset_graph()
    for name in REGISTRY:
        assert graph.get(dg.AssetKey(name)).partitions_def.name == "shards"
    enrich = defs().resolve_job_def("enrich_job")
    selected = {k.to_user_string() for k in enrich.asset_layer.selected_asset_keys}
    assert selected == {"metadata", *DEFAULT_PASSES} and "pixel" not in selected


def test_gpu_assets_share_the_gpu_pool_and_carry_kubernetes_gpu_requests():
    from stratum_dagster.definitions import defs

    graph = defs().resolve_asset_graph()
    for name in MODEL_PASSES:
        node = graph.get(dg.AssetKey(name))
        assert node.pools == {"gpu"}
        k8s_config = json.loads(defs().resolve_assets_def(name).op.tags["dagster-k8s/config"])
        limits = k8s_config["container_config"]["resources"]["limits"]
        assert limits == {"nvidia.com/gpu": "1"}
    assert graph.get(dg.AssetKey("caption")).pools == {"caption"}
    assert graph.get(dg.AssetKey("metadata")).pools == {"gpu"}  # it shares the image step with the GPU passes
    assert not graph.get(dg.AssetKey("pixel")).pools


def test_enrich_job_runs_three_steps_and_retries_infrastructure_errors():
    from stratum_dagster.definitions import defs

    enrich = defs().resolve_job_def("enrich_job")
    assert sorted(n for n in enrich.graph.node_dict if not n.endswith("_verify_check")) == [
        "caption", "image_passes", "t5"]
    assert enrich.graph.node_dict["image_passes"].definition.retry_policy.max_retries == 2
    assets = defs().resolve_assets_def("seg")
    assert {k.to_user_string() for k in assets.keys} == {"metadata", "dinov3", "pose", "seg", "depth", "normal"}
    assert assets.can_subset


def test_materialising_metadata_and_pixel_writes_the_shards_files(tree, instance):
    src, out, key = tree
    result = materialize(["metadata", "pixel"], key, instance, stratum_resource(src, out))
    assert result.success
    for image_id in ("people/a", "people/b"):
        assert (out / image_id / "metadata.json").is_file()
        pixel = np.load(out / image_id / "pixel.npy")
        assert pixel.dtype == np.float16 and pixel.shape == (3, 1216, 832)
    metadata = asset_metadata(result, "pixel")
    assert (metadata["images"], metadata["done"], metadata["failed"], metadata["device"]) == (2, 2, 0, "cpu")
    assert metadata["precision"] == "fp32"
    assert metadata["dataset_dir"] == str(out)
    assert check_results(result) == {"metadata": True, "pixel": True}


def test_second_materialisation_reports_existing_images(tree, instance):
    src, out, key = tree
    materialize(["pixel"], key, instance, stratum_resource(src, out))
    metadata = asset_metadata(materialize(["pixel"], key, instance, stratum_resource(src, out)), "pixel")
    assert (metadata["done"], metadata["existing"]) == (0, 2)


def test_verify_check_fails_with_the_offending_id_after_a_file_is_corrupted(tree, instance):
    src, out, key = tree
    stratum = stratum_resource(src, out)
    materialize(["pixel"], key, instance, stratum)
    np.save(out / "people" / "b" / "pixel.npy", np.full((3, 4, 4), 7, np.float16))
    result = materialize(["pixel"], key, instance, stratum)  # pixel.npy exists: only the check looks at it
    [evaluation] = [e.asset_check_evaluation_data for e in result.all_events
                    if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert not evaluation.passed
    assert list(evaluation.metadata["bad_ids"].value) == ["people/b"]


def test_an_item_failure_is_metadata_not_a_failed_asset(tree, instance):
    src, out, key = tree
    (src / "people" / "b.png").write_bytes(b"not a png")
    result = materialize(["pixel"], key, instance, stratum_resource(src, out))
    assert result.success
    metadata = asset_metadata(result, "pixel")
    assert (metadata["done"], metadata["images"], metadata["decode_failed"]) == (1, 2, 1)
    assert "`people/b` decode_error" in metadata["failures"]


def test_an_infrastructure_error_fails_the_asset(tree, instance):
    src, out, key = tree
    stratum = stratum_resource(src, out, model_dir=str(out / "no-models"))
    result = materialize(["seg"], key, instance, stratum, raise_on_error=False)
    assert not result.success


def test_seg_then_depth_and_normal_write_their_files(tree, instance, tmp_path):
    pytest.importorskip("torch")
    from stratum_testing.sapiens_models import RED_CLASS, build_sapiens_models

    src, out, key = tree
    models = tmp_path / "models"
    build_sapiens_models(models)
    stratum = stratum_resource(src, out, model_dir=str(models))
    assert materialize(["seg"], key, instance, stratum).success
    result = materialize(["depth", "normal"], key, instance, stratum)
    assert result.success
    seg = np.load(out / "people" / "a" / "seg.npy")
    assert seg.shape == (1216, 832) and seg[608, 416] == RED_CLASS and seg[5, 5] == 0
    depth = np.load(out / "people" / "a" / "depth.npy")
    normal = np.load(out / "people" / "a" / "normal.npy")
    assert depth.shape == (1216, 832) and normal.shape == (1216, 832, 3)
    assert depth[5, 5] == 0 and np.all(normal[5, 5] == 0)
    metadata = asset_metadata(result, "depth")
    assert metadata["done"] == 2 and metadata["model"] == "facebook/sapiens-depth-1b-torchscript"
    assert check_results(result) == {"depth": True, "normal": True}


def test_t5_after_caption_writes_embeddings_of_the_fake_servers_caption(tree, instance, tmp_path):
    pytest.importorskip("transformers")
    from stratum_testing.ollama import FakeOllama
    from stratum_testing.transformers_models import build_t5

    src, out, key = tree
    t5_folder = build_t5(tmp_path / "t5")
    stratum = stratum_resource(src, out, model_paths={"t5": str(t5_folder)})
    with FakeOllama(captions="A person standing in a red shirt.") as fake:
        caption = CaptionServerResource(url=f"{fake}/api/generate")
        assert materialize(["caption"], key, instance, stratum, caption).success
    assert (out / "people" / "a" / "caption.txt").read_text() == "A person standing in a red shirt."
    result = materialize(["t5"], key, instance, stratum)
    assert result.success
    hidden = np.load(out / "people" / "a" / "t5_hidden.npy")
    mask = np.load(out / "people" / "a" / "t5_mask.npy")
    assert hidden.shape == (512, 1024) and hidden.dtype == np.float16
    assert 1 < mask.sum() < 512 and mask[0] == 1 and mask[-1] == 0
    assert asset_metadata(result, "t5")["done"] == 2


def test_one_enrich_job_run_over_seg_depth_normal_decodes_each_image_once(tree, instance, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import stratum_core.engine
    from stratum_testing.sapiens_models import build_sapiens_models

    src, out, key = tree
    build_sapiens_models(tmp_path / "models")
    decoded: list[str] = []
    real_decode = stratum_core.engine.decode
    monkeypatch.setattr(stratum_core.engine, "decode", lambda path: decoded.append(path.name) or real_decode(path))
    result = run_job("enrich_job", ["seg", "depth", "normal"], key, instance,
                     stratum_resource(src, out, model_dir=str(tmp_path / "models")))
    assert result.success
    assert sorted(decoded) == ["a.png", "b.png"]
    assert {step_of_event(result, n) for n in ("seg", "depth", "normal")} == {"image_passes"}
    [record] = (out / ".stratum" / "runs").glob("*.json")
    assert set(json.loads(record.read_text())["passes"]) == {"metadata", "seg", "depth", "normal"}
    for name in ("seg", "depth", "normal"):
        metadata = asset_metadata(result, name)
        assert (metadata["done"], metadata["run_passes"]) == (2, "metadata,seg,depth,normal")
    assert np.load(out / "people" / "b" / "normal.npy").shape == (1216, 832, 3)


def _preview_image(markdown: str) -> Image.Image:
    [payload] = re.findall(r"!\[preview\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_a_materialisation_carries_a_small_jpeg_preview_of_one_image(tree, instance):
    src, out, key = tree
    metadata = asset_metadata(materialize(["pixel"], key, instance, stratum_resource(src, out)), "pixel")
    markdown = metadata["preview"]
    assert markdown.startswith("`people/a`")
    image = _preview_image(markdown)
    assert image.format == "JPEG" and image.width == PREVIEW_WIDTH
    image.load()  # decodes the whole picture, not just the header
    assert image.height > 100 and len(markdown) < 64_000


def test_a_step_of_several_assets_attaches_its_preview_to_one_of_them(tree, instance, tmp_path):
    pytest.importorskip("torch")
    from stratum_testing.sapiens_models import build_sapiens_models

    src, out, key = tree
    build_sapiens_models(tmp_path / "models")
    stratum = stratum_resource(src, out, model_dir=str(tmp_path / "models"))
    result = materialize(["metadata", "seg"], key, instance, stratum)
    assert step_of_event(result, "metadata") == step_of_event(result, "seg") == "image_passes"
    assert "preview" in asset_metadata(result, "metadata")
    assert "preview" not in asset_metadata(result, "seg")


def test_per_pass_job_runs_only_its_pass(tree, instance):
    src, out, key = tree
    result = run_job("pixel_job", ["pixel"], key, instance, stratum_resource(src, out))
    assert result.success
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["pixel"]
    assert (out / "people" / "a" / "pixel.npy").is_file() and not (out / "people" / "a" / "seg.npy").exists()


def test_a_dead_caption_server_fails_caption_and_t5_but_not_the_image_step(tree, instance):
    src, out, key = tree
    dead = CaptionServerResource(url="http://127.0.0.1:9/api/generate", timeout_s=2)
    result = run_job("enrich_job", ["metadata", "caption", "t5"], key, instance, stratum_resource(src, out), dead)
    assert not result.success
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["metadata"]
    assert [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"][0] == "image_passes"
    assert result.get_step_success_events()[0].step_key == "image_passes"
    assert (out / "people" / "a" / "metadata.json").is_file()
