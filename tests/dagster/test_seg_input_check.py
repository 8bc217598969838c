"""The blocking seg check: depth and normal never compute from a seg.npy that fails verify."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from stratum_dagster.defs.passes.step import INPUT_CHECK
from tests.dagster.helpers import materialize, register, run_job, stratum_resource, write_tree

torch = pytest.importorskip("torch")


@pytest.fixture
def segmented(tmp_path: Path, instance, sapiens_model_dir):
    """A shard of two images whose seg.npy is written (depth and normal not yet)."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png", "people/b.png"])
    [key] = register(src, out, instance, "people")
    stratum = stratum_resource(src, out, model_dir=str(sapiens_model_dir))
    assert materialize(["seg"], key, instance, stratum).success
    return out, key, stratum


def input_check(result: dg.ExecuteInJobResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [e.asset_check_evaluation_data for e in result.all_events
                    if e.event_type_value == "ASSET_CHECK_EVALUATION"
                    and e.asset_check_evaluation_data.asset_check_key.name == INPUT_CHECK]
    return evaluation


def corrupt_seg(out: Path, image_id: str) -> None:
    """A seg.npy that parses but is not a seg map of the image's bucket."""
    np.save(out / image_id / "seg.npy", np.full((4, 4), 200, np.uint8))


def test_a_corrupt_seg_fails_the_blocking_check_and_depth_and_normal_are_not_computed(segmented, instance):
    out, key, stratum = segmented
    corrupt_seg(out, "people/b")
    result = materialize(["seg", "depth", "normal"], key, instance, stratum, raise_on_error=False)
    evaluation = input_check(result)
    assert (evaluation.passed, evaluation.asset_check_key.asset_key, evaluation.blocking) == (
        False, dg.AssetKey("seg"), True)
    assert list(evaluation.metadata["bad_ids"].value) == ["people/b"]
    assert not result.success
    for image_id in ("people/a", "people/b"):
        assert not (out / image_id / "depth.npy").exists() and not (out / image_id / "normal.npy").exists()
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "depth: 1 seg artifacts of the shard fail their check (people/b)" in failure.event_specific_data.error.message


def test_a_depth_run_alone_never_reads_a_corrupt_seg(segmented, instance):
    out, key, stratum = segmented
    corrupt_seg(out, "people/a")
    result = run_job("depth_job", ["depth"], key, instance, stratum)
    assert not result.success
    assert not (out / "people" / "a" / "depth.npy").exists() and not (out / "people" / "b" / "depth.npy").exists()


def test_with_a_good_seg_the_check_passes_and_depth_and_normal_are_computed_from_it(segmented, instance):
    out, key, stratum = segmented
    result = materialize(["seg", "depth", "normal"], key, instance, stratum)
    evaluation = input_check(result)
    assert evaluation.passed and evaluation.metadata["checked_images"].value == 2
    for image_id in ("people/a", "people/b"):
        assert (out / image_id / "depth.npy").is_file() and (out / image_id / "normal.npy").is_file()
