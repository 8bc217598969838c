"""Publishing with provenance: the manifest and card say what produced each layer; mixed revisions refused."""

from __future__ import annotations

import json

import pytest

from stratum_core.cli import main
from stratum_core.errors import ConfigError
from stratum_core.publish import publish
from tests.core.publish.hubdata import IDS, REPO, TOKEN, config, make_dataset, record_dinov3

MODEL = "facebook/dinov3-vitl16-pretrain-lvd1689m"
OLD, NEW = "rev:1111111111aaaa", "rev:2222222222bbbb"


def _publish_cli(tmp_path, hub, *extra: str) -> int:
    return main(["publish", str(tmp_path / "ds"), "--hub-repo", REPO, "--endpoint", hub.url, "--layers", "dinov3",
                 *extra])


def test_the_manifest_lists_the_model_revision_per_layer(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS, OLD)
    result = publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    manifest = json.loads(hub.files(REPO)["manifest.json"])
    assert manifest["layers"]["dinov3"]["provenance"] == {"model": MODEL, "weights": OLD, "version": "1",
                                                          "precision": "fp16", "images": 6, "unknown": 0}
    assert result.provenance["dinov3"]["weights"] == OLD


def test_the_card_has_a_provenance_table_row_per_layer(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS, OLD)
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    card = hub.files(REPO)["README.md"].decode()
    assert "## Provenance" in card
    assert f"| dinov3 | {MODEL} | {OLD} | 1 | fp16 | 6 |" in card


def test_mixing_model_revisions_is_refused_and_nothing_is_uploaded(tmp_path, hub, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:4], OLD)
    record_dinov3(tmp_path / "ds", IDS[4:], NEW)
    assert _publish_cli(tmp_path, hub) == 2
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "error: layer dinov3 mixes 2 model revisions" in message
    assert OLD in message and NEW in message and "--allow-mixed-revisions" in message
    assert ("datasets", REPO) not in hub.repos  # refused before the repo was even created


def test_mixed_revisions_are_refused_by_the_library_too(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:1], OLD)
    record_dinov3(tmp_path / "ds", IDS[1:], NEW)
    with pytest.raises(ConfigError, match="layer dinov3 mixes 2 model revisions"):
        publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)


def test_allow_mixed_revisions_publishes_and_reports_the_mix(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:4], OLD)
    record_dinov3(tmp_path / "ds", IDS[4:], NEW)
    assert _publish_cli(tmp_path, hub, "--allow-mixed-revisions") == 0
    files = hub.files(REPO)
    layer = json.loads(files["manifest.json"])["layers"]["dinov3"]
    assert layer["chunks"] == {"00000-00005": 6}
    assert [(v["weights"], v["images"]) for v in layer["provenance"]["variants"]] == [(OLD, 4), (NEW, 2)]
    card = files["README.md"].decode()
    assert f"| dinov3 (mixed) | {MODEL} | {OLD} | 1 | fp16 | 4 |" in card
    assert f"| dinov3 (mixed) | {MODEL} | {NEW} | 1 | fp16 | 2 |" in card


def test_images_of_unknown_provenance_never_cause_a_refusal(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS[:2], OLD)  # the other four: from before provenance
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    info = json.loads(hub.files(REPO)["manifest.json"])["layers"]["dinov3"]["provenance"]
    assert (info["weights"], info["images"], info["unknown"]) == (OLD, 2, 4) and "variants" not in info


def test_a_dataset_without_provenance_publishes_a_manifest_without_it(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert "provenance" not in json.loads(files["manifest.json"])["layers"]["dinov3"]
    assert "## Provenance" not in files["README.md"].decode()


def test_a_later_publish_of_another_layer_keeps_the_first_layers_provenance(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    record_dinov3(tmp_path / "ds", IDS, OLD)
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    manifest = json.loads(hub.files(REPO)["manifest.json"])
    assert manifest["layers"]["dinov3"]["provenance"]["weights"] == OLD and "caption" in manifest["layers"]
