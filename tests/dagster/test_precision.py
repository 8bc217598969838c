"""Per-pass precision through the Dagster StratumResource: `precision: "bf16,depth=fp32"`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dagster.helpers import asset_metadata, materialize, register, stratum_resource, write_tree


def test_the_resource_takes_a_per_pass_precision_and_each_asset_reports_its_own(tmp_path: Path, instance):
    pytest.importorskip("torch")
    from stratum_testing.sapiens_models import build_sapiens_models

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png"])
    [key] = register(src, out, instance, "people")
    build_sapiens_models(tmp_path / "models")
    stratum = stratum_resource(src, out, model_dir=str(tmp_path / "models"), precision="bf16,depth=fp32")
    result = materialize(["seg", "depth"], key, instance, stratum)
    assert result.success
    assert asset_metadata(result, "seg")["precision"] == "bf16"
    assert asset_metadata(result, "depth")["precision"] == "fp32"


def test_a_bad_precision_in_the_resource_fails_the_asset_naming_it(tmp_path: Path, instance):
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png"])
    [key] = register(src, out, instance, "people")
    stratum = stratum_resource(src, out, precision="bf16,dpeth=fp32")
    result = materialize(["pixel"], key, instance, stratum, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "dpeth" in str(failure.event_specific_data.error)
