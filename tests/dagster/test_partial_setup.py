"""A user with some weights but not all and no caption server yet, through the real code location:
each asset succeeds or fails on its own, permanent errors fail at once with their cause as headline."""

from __future__ import annotations

import dagster as dg
import pytest

from stratum_core.errors import ConfigError, InfrastructureError, ModelNotFoundError
from stratum_dagster.failures import dagster_failures
from tests.dagster.helpers import register, write_tree

RETRY_EVENTS = {"STEP_UP_FOR_RETRY", "STEP_RESTARTED"}


@pytest.fixture
def partial_site(tmp_path, monkeypatch):
    """Two images in one registered shard; pose weights only; a caption URL where nothing listens."""
    from stratum_testing.dwpose_models import build_dwpose_folder

    pytest.importorskip("onnxruntime")
    src, out, models = tmp_path / "in", tmp_path / "out", tmp_path / "models"
    write_tree(src, ["people/a.png", "people/b.png"])
    build_dwpose_folder(models / "yzd-v" / "DWPose")
    for name, value in {"STRATUM_INPUT_DIR": src, "STRATUM_OUTPUT_DIR": out, "STRATUM_MODEL_DIR": models,
                        "STRATUM_HUB_REPO": "someone/dataset",
                        "STRATUM_CAPTION_URL": "http://127.0.0.1:9/api/generate"}.items():
        monkeypatch.setenv(name, str(value))
    with dg.instance_for_test() as instance:
        [key] = register(src, out, instance, "people")
        yield {"src": src, "out": out, "key": key, "instance": instance}


def _execute(job_name: str, site: dict, key: str | None = None) -> dg.ExecuteInJobResult:
    from stratum_dagster.definitions import defs

    return defs().resolve_job_def(job_name).execute_in_process(
        instance=site["instance"], partition_key=key or site["key"], raise_on_error=False)


def _failure_descriptions(result: dg.ExecuteInJobResult) -> dict[str, str]:
    return {e.step_key: e.step_failure_data.user_failure_data.description
            for e in result.all_events if e.event_type_value == "STEP_FAILURE"}


def _materialized(result: dg.ExecuteInJobResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_missing_weights_and_no_caption_server_fail_only_their_own_assets_without_retries(partial_site):
    enrich = _execute("enrich_job", partial_site)
    pixel = _execute("pixel_job", partial_site)
    assert _materialized(enrich) == {"metadata", "pose"}
    assert _materialized(pixel) == {"pixel"}
    failures = _failure_descriptions(enrich)
    assert set(failures) == {"image_passes", "caption"}
    assert "dinov3: weights missing (facebook/dinov3-vitl16-pretrain-lvd1689m) — " \
           "stratum models download --passes dinov3" in failures["image_passes"]
    assert "(metadata, pose materialised)" in failures["image_passes"]
    assert failures["caption"].startswith("2 passes could not run: caption: the Ollama server at http://127.0.0.1:9")
    assert "t5: not run (needs caption); also weights missing (google-t5/t5-large)" in failures["caption"]
    assert not RETRY_EVENTS & {e.event_type_value for e in enrich.all_events}
    for image_id in ("people/a", "people/b"):
        folder = partial_site["out"] / image_id
        assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == {
            "metadata.json", "pose.npy", "pixel.npy"}


def test_an_unregistered_shard_key_fails_at_once_with_the_cause_as_headline(partial_site):
    partial_site["instance"].add_dynamic_partitions("shards", ["ghost-0000"])
    result = _execute("metadata_job", partial_site, key="ghost-0000")  # metadata_job has a retry policy
    assert not result.success
    [description] = _failure_descriptions(result).values()
    assert description.startswith("no shard 'ghost-0000' is registered under ")
    assert not RETRY_EVENTS & {e.event_type_value for e in result.all_events}


@pytest.mark.parametrize("error, retried", [
    (ModelNotFoundError("model x not found"), False), (ConfigError("bad option"), False),
    (InfrastructureError("dinov3: out of GPU memory even at batch 1"), True),
    (InfrastructureError("the Ollama server at http://h:11434 does not answer"), True)])
def test_permanent_errors_bypass_the_retry_policy_and_transient_ones_respect_it(error, retried):
    with pytest.raises(dg.Failure) as raised:
        with dagster_failures():
            raise error
    assert raised.value.description == str(error)
    assert raised.value.allow_retries is retried
