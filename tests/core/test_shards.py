"""Shard registry: stable, immutable, readable shards that the CLI and Dagster agree on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core import shards
from stratum_core.errors import ConfigError
from stratum_testing.cli import process_cli


def make_images(root: Path, rel_paths: list[str], size: tuple[int, int] = (40, 30)) -> None:
    for i, rel in enumerate(rel_paths):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), i * 7 % 256, np.uint8)).save(path)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, [f"ffhq/{i:03d}.png" for i in range(5)] + ["celeb/a.png", "celeb/sub/b.png", "top.png"])
    return src, out


def test_register_group_splits_sorted_images_into_readable_keys(dataset):
    src, out = dataset
    created, errors = shards.register_group(src, out, "ffhq", shard_size=2)
    assert errors == []
    assert [s.key for s in created] == ["ffhq-0000", "ffhq-0001", "ffhq-0002"]
    assert [s.images for s in created] == [("ffhq/000.png", "ffhq/001.png"), ("ffhq/002.png", "ffhq/003.png"),
                                           ("ffhq/004.png",)]
    assert shards.shard_keys(out) == ["ffhq-0000", "ffhq-0001", "ffhq-0002"]
    assert (out / ".stratum" / "shards" / "ffhq-0001.json").is_file()


def test_second_registration_without_new_images_creates_nothing(dataset):
    src, out = dataset
    shards.register_group(src, out, "ffhq", shard_size=2)
    created, _ = shards.register_group(src, out, "ffhq", shard_size=2)
    assert created == []


def test_new_images_land_in_new_shards_and_old_shards_stay_byte_identical(dataset):
    src, out = dataset
    shards.register_group(src, out, "ffhq", shard_size=2)
    before = {p.name: p.read_bytes() for p in (out / ".stratum" / "shards").glob("*.json")}
    make_images(src, ["ffhq/0000-first.png", "ffhq/999.png"])
    created, _ = shards.register_group(src, out, "ffhq", shard_size=2)
    assert [s.key for s in created] == ["ffhq-0003"]
    assert created[0].images == ("ffhq/0000-first.png", "ffhq/999.png")
    after = {p.name: p.read_bytes() for p in (out / ".stratum" / "shards").glob("*.json")}
    assert {name: after[name] for name in before} == before


def test_root_images_and_subfolders_form_groups(dataset):
    src, out = dataset
    assert shards.list_groups(src) == ["", "celeb", "ffhq"]
    result = shards.register_new(src, out, shard_size=10)
    assert result.wrapped and result.cursor is None
    assert {s.key: s.images for s in result.new_shards} == {
        "_root-0000": ("top.png",),
        "celeb-0000": ("celeb/a.png", "celeb/sub/b.png"),
        "ffhq-0000": tuple(f"ffhq/{i:03d}.png" for i in range(5)),
    }


def test_register_new_with_no_time_budget_walks_one_group_per_call(dataset):
    src, out = dataset
    cursors, keys = [], []
    cursor = None
    for _ in range(3):
        result = shards.register_new(src, out, start_after=cursor, time_budget=0.0)
        cursor = result.cursor
        cursors.append((result.cursor, result.wrapped))
        keys.extend(s.key for s in result.new_shards)
    assert cursors == [("", False), ("celeb", False), (None, True)]
    assert keys == ["_root-0000", "celeb-0000", "ffhq-0000"]


@pytest.mark.parametrize("folder", ["my photos", "a,b", "x...y", "_root", "ünï"])
def test_unsafe_folder_names_give_safe_distinct_keys(folder):
    key = shards.shard_key(folder, 3)
    assert "," not in key and "..." not in key and " " not in key
    assert key.endswith("-0003")
    assert key != shards.shard_key("_root" if folder != "_root" else "", 3)
    assert shards._KEY.match(key)


def test_shard_sources_returns_exactly_the_shard(dataset):
    src, out = dataset
    shards.register_group(src, out, "ffhq", shard_size=2)
    sources = shards.shard_sources(src, out, "ffhq-0001")
    assert [s.rel_path for s in sources] == ["ffhq/002.png", "ffhq/003.png"]
    assert [s.image_id for s in sources] == ["ffhq/002", "ffhq/003"]
    assert all(s.path.is_file() for s in sources)


def test_shard_sources_leaves_out_deleted_sources(dataset):
    src, out = dataset
    shards.register_group(src, out, "ffhq", shard_size=2)
    (src / "ffhq" / "003.png").unlink()
    assert [s.rel_path for s in shards.shard_sources(src, out, "ffhq-0001")] == ["ffhq/002.png"]


def test_unknown_shard_key_is_a_clear_error(dataset):
    src, out = dataset
    with pytest.raises(ConfigError, match="no shard 'ffhq-0042'"):
        shards.shard_sources(src, out, "ffhq-0042")
    with pytest.raises(ConfigError, match="not a shard key"):
        shards.load_shard(out, "../etc")


def test_shard_completion_counts_finished_and_failed_images(dataset):
    src, out = dataset
    [shard], _ = shards.register_group(src, out, "celeb")
    (out / "celeb" / "a").mkdir(parents=True)
    (out / "celeb" / "a" / "metadata.json").write_text("{}")
    (out / "celeb" / "a" / ".failed-pixel.json").write_text(json.dumps({"reason": "decode_error"}))
    completion = shards.shard_completion(out, shard)
    assert completion.total == 2
    assert completion.done["metadata"] == 1 and completion.failed["pixel"] == 1
    assert not completion.complete("metadata")


def test_cli_process_shard_key_runs_exactly_that_shard(dataset, capsys):
    src, out = dataset
    shards.register_group(src, out, "ffhq", shard_size=2)
    assert process_cli(src, out, "--passes", "pixel", "--device", "cpu",
                       "--shard-key", "ffhq-0001", "--workers", "1") == 0
    done = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("pixel.npy"))
    assert done == ["ffhq/002", "ffhq/003"]


def test_root_images_follow_the_discovery_rules(tmp_path):
    make_images(tmp_path / "outside", ["secret.png"])
    root = tmp_path / "in"
    make_images(root, ["a.jpg", "._a.jpg"])
    (root / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    paths, errors = shards.group_rel_paths(root, "")
    assert paths == ["a.jpg"]
    assert [(e.source, e.reason) for e in errors] == [("link.png", "outside_input")]


def _slug_twins(src: Path) -> tuple[str, str]:
    """Two folders with one slug: `x y` sanitises to `x_y-<hash>`, and a folder can be named just that."""
    unsafe = "x y"
    twin = shards.group_slug(unsafe)
    make_images(src, [f"{unsafe}/a.png", f"{twin}/b.png"])
    assert shards.group_slug(twin) == twin
    return unsafe, twin


def test_a_slug_collision_is_a_clear_error_and_keeps_the_other_groups_shard(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    unsafe, twin = _slug_twins(src)
    [first], _ = shards.register_group(src, out, unsafe)
    record = out / ".stratum" / "shards" / f"{first.key}.json"
    before = record.read_bytes()
    with pytest.raises(ConfigError, match=rf"{first.key} of folder '{twin}' is already taken by folder '{unsafe}'"):
        shards.register_group(src, out, twin)
    assert record.read_bytes() == before
    assert shards.load_shard(out, first.key).images == (f"{unsafe}/a.png",)
    assert [p.name for p in record.parent.iterdir() if p.name != ".lock"] == [record.name]  # no temp left


def test_a_slug_collision_is_caught_where_hard_links_are_refused(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    unsafe, twin = _slug_twins(src)

    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(shards.os, "link", no_links)
    [first], _ = shards.register_group(src, out, unsafe)
    assert shards.load_shard(out, first.key).images == (f"{unsafe}/a.png",)
    with pytest.raises(ConfigError, match="is already taken"):
        shards.register_group(src, out, twin)
    assert shards.load_shard(out, first.key).group == unsafe
