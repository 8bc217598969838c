"""What the UI shows of each pass asset before any run: its code version and its kinds."""

from __future__ import annotations

import dagster as dg

from stratum_core import provenance
from stratum_core.passes import REGISTRY, pass_class
from stratum_dagster.defs.passes import factory


def pass_specs() -> dict[str, dg.AssetSpec]:
    """Every pass asset's spec, as the factory builds the steps."""
    return {s.key.to_user_string(): s for step, names in factory.steps().items()
            for s in factory.build_step_assets(step, names).specs}


def test_every_pass_asset_has_a_code_version_from_its_pass_version_and_model(monkeypatch, tmp_path):
    monkeypatch.setenv("STRATUM_MODEL_DIR", str(tmp_path))  # no weights there: version and model id only
    specs = pass_specs()
    assert set(specs) == set(REGISTRY)
    for name, spec in specs.items():
        cls = pass_class(name)
        expected = f"v{cls.version}" + (f"|{cls.model.hub_id}" if cls.model is not None else "")
        assert spec.code_version == expected == provenance.code_version(name, tmp_path), name


def test_bumping_a_pass_version_changes_only_that_assets_code_version(monkeypatch, tmp_path):
    monkeypatch.setenv("STRATUM_MODEL_DIR", str(tmp_path))
    before = {n: s.code_version for n, s in pass_specs().items()}
    monkeypatch.setattr(pass_class("pose"), "version", "99")
    after = {n: s.code_version for n, s in pass_specs().items()}
    assert {n for n in REGISTRY if before[n] != after[n]} == {"pose"}
    assert after["pose"] == "v99|yzd-v/DWPose"


def test_pass_assets_carry_what_they_run_on_as_kinds():
    from stratum_dagster.definitions import defs

    graph = defs().resolve_asset_graph()
    kinds = {n: graph.get(dg.AssetKey(n)).kinds for n in REGISTRY}
    assert kinds == {"metadata": {"python"}, "caption": {"ollama", "openai"}, "dinov3": {"pytorch"},
                     "t5": {"pytorch"}, "pose": {"onnx", "pytorch"}, "seg": {"pytorch"}, "depth": {"pytorch"},
                     "normal": {"pytorch"}, "pixel": {"python"}}
