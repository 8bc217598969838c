"""The pass registry: `all`, the model passes and the `--passes` help come from the pass classes."""

from __future__ import annotations

from pathlib import Path

from stratum_core.passes import DEFAULT_PASSES, MODEL_PASSES, parse_passes, passes_help
from stratum_core.passes.base import PassOptions
from stratum_core.passes.dinov3 import DINOv3Pass
from stratum_core.preflight import check_pass


def test_all_is_every_pass_but_metadata_and_the_opt_in_pixel():
    assert DEFAULT_PASSES == ("caption", "dinov3", "t5", "pose", "seg", "depth", "normal")
    assert parse_passes("all") == ("metadata", *DEFAULT_PASSES)


def test_model_passes_are_those_with_a_model():
    assert MODEL_PASSES == ("dinov3", "t5", "pose", "seg", "depth", "normal")


def test_passes_help_lists_all_and_the_opt_in_passes():
    assert passes_help() == "comma-separated passes, or 'all' (caption,dinov3,t5,pose,seg,depth,normal); " \
                            "'pixel' only when named"


def test_an_explicit_model_path_without_the_files_is_reported_as_such_not_as_missing_weights(tmp_path: Path):
    options = PassOptions(model_paths={"dinov3": tmp_path}, offline=True)
    readiness = check_pass(DINOv3Pass(options))
    assert not readiness.ready
    assert readiness.advice.startswith(f"model {DINOv3Pass.model.hub_id}: {tmp_path} does not hold ")
    assert "stratum models download" not in readiness.advice


def test_weights_in_none_of_the_places_looked_get_the_download_advice(tmp_path: Path):
    options = PassOptions(model_dir=tmp_path, offline=True)
    readiness = check_pass(DINOv3Pass(options))
    assert not readiness.ready
    assert readiness.advice.startswith(f"weights missing ({DINOv3Pass.model.hub_id}) — "
                                       "stratum models download --passes dinov3 ")
