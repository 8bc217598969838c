"""The dataset card: the seg layer's class names."""

from __future__ import annotations

from stratum_core.artifacts import SEG_CLASSES
from stratum_core.publish.card import build_card
from stratum_core.publish.manifest import build_manifest

DATA = {"data/00000/00000-00001.parquet": {"count": 2, "counts": {"caption": 2}}}


def test_card_lists_the_seg_class_names_by_id_when_seg_is_published():
    manifest = build_manifest({**DATA, "seg/00000-00001.tar": {"count": 2}})
    card = build_card("me/faces", manifest, "cc-by-4.0")
    section = card.split("### seg classes", 1)[1]
    assert "| 0 | Background |" in section and "| 3 | Hair |" in section
    assert f"| {len(SEG_CLASSES) - 1} | {SEG_CLASSES[-1]} |" in section
    assert section.count("\n| ") == len(SEG_CLASSES) + 1  # the header row plus one row per class


def test_card_has_no_seg_classes_without_the_seg_layer():
    card = build_card("me/faces", build_manifest({**DATA, "dinov3/00000/00000-00001.tar": {"count": 2}}), "cc-by-4.0")
    assert "seg classes" not in card and "Background" not in card
