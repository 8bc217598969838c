"""A growing, sharded dataset: positions follow shard registration order, so a new shard only appends."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stratum_core import shards
from stratum_core.errors import ConfigError
from stratum_core.publish import publish, publish_new
from stratum_core.publish.layout import index_entry, list_chunks
from stratum_core.publish.publisher import DatasetView, shard_ready
from tests.core.publish.hubdata import REPO, TOKEN, config, make_dataset

SMALL = dict(layers=("caption", "dinov3"), rows_per_parquet=2, images_per_tar=2)


def add_group(src, out, group: str, names: list[str]) -> list[str]:
    """Source images of a new top-level folder, registered as shards of 2, with their artifacts written."""
    for name in names:
        (src / group).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / group / f"{name}.png")
    created, errors = shards.register_group(src, out, group, shard_size=2)
    assert errors == [] and created
    return make_dataset(out, ids=tuple(f"{group}/{n}" for n in names))


@pytest.fixture
def sharded(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    add_group(src, out, "ffhq", ["img0", "img1", "img2", "img3"])
    return src, out


def test_positions_follow_shard_registration_order(sharded):
    src, out = sharded
    add_group(src, out, "aaa", ["x0", "x1"])  # sorts first, registered last
    view = DatasetView.load(out)
    assert view.ids == ["ffhq/img0", "ffhq/img1", "ffhq/img2", "ffhq/img3", "aaa/x0", "aaa/x1"]
    assert view.shards == [("ffhq-0000", 0, 2), ("ffhq-0001", 2, 4), ("aaa-0000", 4, 6)]


def test_a_new_shard_that_sorts_first_appends_and_no_earlier_file_changes(sharded, hub):
    src, out = sharded
    publish(out, config(**SMALL), token=TOKEN, endpoint=hub.url)
    before = hub.files(REPO)
    add_group(src, out, "aaa", ["x0", "x1"])
    result = publish(out, config(**SMALL), token=TOKEN, endpoint=hub.url)
    after = hub.files(REPO)
    assert sorted(result.uploaded_files) == ["data/00000/00004-00005.parquet", "dinov3/00000/00004-00005.tar"]
    assert result.shards == {"ffhq-0000": "00000-00001", "ffhq-0001": "00002-00003", "aaa-0000": "00004-00005"}
    assert_earlier_chunks_unchanged(before, after)
    # The folder's small index took the new entries (one index file per folder, not one per publish).
    assert set(after) - set(before) == {"data/00000/00004-00005.parquet", "data/00000/00000-00005.index.json",
                                        "dinov3/00000/00004-00005.tar", "dinov3/00000/00000-00005.index.json"}


def assert_earlier_chunks_unchanged(before: dict, after: dict) -> None:
    """Every chunk file published before is byte-identical, and so is every index entry that listed one."""
    for chunk in list_chunks(before):
        assert after[chunk.path] == before[chunk.path], chunk.path
        now = [c for c in list_chunks(after) if c.path == chunk.path][0]
        assert index_entry(json.loads(after[now.index]), now) == index_entry(json.loads(before[chunk.index]), chunk)
    assert all(after[p] == before[p] for p in before if p.endswith(".gitattributes"))


def test_publish_new_publishes_only_the_shards_after_the_last_published_position(sharded, hub):
    src, out = sharded
    publish(out, config(**SMALL), token=TOKEN, endpoint=hub.url)
    add_group(src, out, "aaa", ["x0", "x1"])
    result = publish_new(out, config(**SMALL), token=TOKEN, endpoint=hub.url, ready=shard_ready(out, SMALL["layers"]))
    assert result.shards == {"aaa-0000": "00004-00005"}
    assert len(result.commits) == 1 and result.total_images == 6
    assert not publish_new(out, config(**SMALL), token=TOKEN, endpoint=hub.url).changed


def test_publish_new_stops_before_a_shard_that_is_not_finished(sharded, hub):
    src, out = sharded
    for name in ("x0", "x1"):
        (src / "aaa").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "aaa" / f"{name}.png")
    shards.register_group(src, out, "aaa", shard_size=2)
    make_dataset(out, ids=("aaa/x0",))  # one of its two images is processed so far
    result = publish_new(out, config(**SMALL), token=TOKEN, endpoint=hub.url, ready=shard_ready(out, SMALL["layers"]))
    assert result.shards == {"ffhq-0000": "00000-00001", "ffhq-0001": "00002-00003"}
    assert result.total_images == 4


def test_without_shards_an_image_sorting_first_is_still_refused(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    make_dataset(tmp_path / "ds", ids=("a/early",))
    with pytest.raises(ConfigError, match="shift the positions"):
        publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)


def test_publish_new_with_a_layer_added_later_publishes_that_layer_from_the_start(sharded, hub):
    src, out = sharded
    publish(out, config(**dict(SMALL, layers=("caption",))), token=TOKEN, endpoint=hub.url)
    result = publish_new(out, config(**SMALL), token=TOKEN, endpoint=hub.url, ready=shard_ready(out, SMALL["layers"]))
    assert sorted(result.uploaded_files) == ["data/00000/00000-00001.parquet", "data/00000/00002-00003.parquet",
                                             "dinov3/00000/00000-00001.tar", "dinov3/00000/00002-00003.tar"]
