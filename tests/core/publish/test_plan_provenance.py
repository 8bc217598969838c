"""`stratum publish --plan` says what produced each layer, and whether publish would refuse mixed revisions."""

from __future__ import annotations

import json

from stratum_core.cli import main
from stratum_core.publish import plan
from tests.core.publish.hubdata import (IDS, REPO, TOKEN, config, make_dataset,
                                        record_dinov3)

MODEL = "facebook/dinov3-vitl16-pretrain-lvd1689m"
OLD, NEW = "rev:1111111111aaaa", "rev:2222222222bbbb"


def _plan_cli(tmp_path, hub, capsys, *extra: str) -> tuple[int, str]:
    code = main(["publish", str(tmp_path / "ds"), "--hub-repo", REPO, "--endpoint", hub.url, "--plan", *extra])
    return code, capsys.readouterr().out


def test_the_plan_shows_the_model_revision_and_pass_version_of_each_layer(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS, OLD)
    code, out = _plan_cli(tmp_path, hub, capsys, "--layers", "dinov3")
    assert code == 0
    assert f"  dinov3: 6 by {MODEL} {OLD} v1 fp16\n" in out
    assert "REFUSED" not in out
    assert not any(method in ("POST", "PUT") for _, method, _, _ in hub.requests)


def test_the_plan_as_json_carries_the_same_provenance_as_the_manifest(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:4], OLD)  # the other two: from before provenance
    code, out = _plan_cli(tmp_path, hub, capsys, "--layers", "caption,dinov3", "--json")
    assert code == 0
    planned = json.loads(out)
    assert planned["provenance"]["dinov3"] == {"model": MODEL, "weights": OLD, "version": "1", "precision": "fp16",
                                               "images": 4, "unknown": 2}
    assert planned["provenance"]["caption"] == {"images": 0, "unknown": 6}
    assert planned["refused_layers"] == [] and planned["chunks"] >= 2


def test_the_plan_counts_images_of_unknown_provenance_per_layer(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:4], OLD)
    code, out = _plan_cli(tmp_path, hub, capsys, "--layers", "caption,dinov3")
    assert code == 0
    assert f"  dinov3: 4 by {MODEL} {OLD} v1 fp16; 2 of unknown provenance\n" in out
    assert "  caption: unknown provenance (6 images without a record)\n" in out


def test_the_plan_says_publish_would_refuse_mixed_revisions_and_exits_2(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:4], OLD)
    record_dinov3(tmp_path / "ds", IDS[4:], NEW)
    code, out = _plan_cli(tmp_path, hub, capsys, "--layers", "dinov3")
    assert code == 2
    assert f"  dinov3: 2 model revisions: 4 by {MODEL} {OLD} v1 fp16; 2 by {MODEL} {NEW} v1 fp16\n" in out
    assert "  REFUSED: dinov3 mixes model revisions; `--allow-mixed-revisions` would publish it\n" in out
    assert ("datasets", REPO) not in hub.repos


def test_with_allow_mixed_revisions_the_plan_reports_the_mix_and_would_publish(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:4], OLD)
    record_dinov3(tmp_path / "ds", IDS[4:], NEW)
    code, out = _plan_cli(tmp_path, hub, capsys, "--layers", "dinov3", "--allow-mixed-revisions", "--json")
    assert code == 0
    planned = json.loads(out)
    assert planned["refused_layers"] == [] and planned["allow_mixed_revisions"] is True
    assert [(v["weights"], v["images"]) for v in planned["provenance"]["dinov3"]["variants"]] == [(OLD, 4), (NEW, 2)]


def test_the_library_plan_lists_refused_layers_without_raising(tmp_path):
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:1], OLD)
    record_dinov3(tmp_path / "ds", IDS[1:], NEW)
    layout = plan(tmp_path / "ds", config(layers=("dinov3",)), offline=True)
    assert layout.refused_layers == ["dinov3"] and layout.ok and not layout.publishable
    assert layout.provenance["dinov3"]["weights"] == NEW  # the most common revision first
