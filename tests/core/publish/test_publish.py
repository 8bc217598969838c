"""Publishing to the fake Hub: layout, read-back, ranges, incremental runs, no-op republish."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from stratum_core.errors import ConfigError
from stratum_core.publish import publish
from stratum_core.publish.layout import escape_key, unescape_key
from tests.core.publish.hubdata import IDS, REPO, TOKEN, cls_value, config, make_dataset


def _parquet(data: bytes):
    return pq.read_table(io.BytesIO(data))


def test_publish_caption_then_dinov3_writes_layout_manifest_and_card(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert {"data/00000/00000-00005.parquet", "data/00000/00000-00005.index.json", "dinov3/00000/00000-00005.tar",
            "dinov3/00000/00000-00005.index.json", "manifest.json", "README.md"} <= set(files)
    manifest = json.loads(files["manifest.json"])
    assert manifest["version"] == 1 and manifest["total_images"] == 6
    assert manifest["layers"]["caption"] == {"format": "parquet", "path": "data", "column": "caption",
                                             "chunks": {"00000-00005": 6}, "count": 6,
                                             "paths": {"00000-00005": "data/00000/00000-00005.parquet"}}
    assert manifest["layers"]["dinov3"]["format"] == "webdataset"
    assert manifest["layers"]["dinov3"]["chunks"] == {"00000-00005": 6}
    assert manifest["created_with"].startswith("stratum ") and manifest["updated_at"]
    table = _parquet(files["data/00000/00000-00005.parquet"])
    assert table.column("image_id").to_pylist() == ids
    assert table.column("caption").to_pylist() == [f"caption {IDS.index(i)}" for i in ids]
    assert table.column("width").to_pylist() == [100 + IDS.index(i) for i in ids]
    cls = np.asarray(table.column("dinov3_cls").to_pylist()[0], dtype=np.float16)
    np.testing.assert_array_equal(cls, cls_value(IDS.index(ids[0])))
    card = files["README.md"].decode()
    assert "license: cc-by-nc-sa-4.0" in card and "- n<1K" in card
    assert "- config_name: caption" in card and "path: data/*/*.parquet" in card
    assert "- config_name: dinov3" in card and "path: dinov3/*/*.tar" in card


def test_tar_reads_back_with_webdataset_one_sample_per_image(tmp_path, hub):
    import webdataset as wds

    ids = make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    tar_path = tmp_path / "chunk.tar"
    tar_path.write_bytes(hub.files(REPO)["dinov3/00000/00000-00005.tar"])
    samples = list(wds.WebDataset(str(tar_path), shardshuffle=False))
    assert [unescape_key(s["__key__"]) for s in samples] == ids
    assert "b/v1%2E2" in [s["__key__"] for s in samples]
    for sample in samples:
        i = IDS.index(unescape_key(sample["__key__"]))
        patches = np.load(io.BytesIO(sample["dinov3_patches.npy"]))
        assert patches.shape == (16, 1024) and patches.dtype == np.float16 and float(patches[0, 0]) == i
        np.testing.assert_array_equal(np.load(io.BytesIO(sample["dinov3_cls.npy"])), cls_value(i))
    index = json.loads(hub.files(REPO)["dinov3/00000/00000-00005.index.json"])
    entry = index["chunks"]["00000-00005"]
    assert index["version"] == 2 and entry["file"] == "dinov3/00000/00000-00005.tar"
    assert entry["ids"] == ids and entry["escaped_keys"] == {"b/v1%2E2": "b/v1.2"}


def test_escape_key_is_reversible_and_dot_free_in_last_component():
    for image_id in ("a/b.c", "x.y/z", "p%2Eq", "a/100%.png.x", "plain"):
        key = escape_key(image_id)
        assert "." not in key.rpartition("/")[2]
        assert unescape_key(key) == image_id


def test_load_dataset_reads_the_caption_config_from_a_snapshot(tmp_path, hub):
    import datasets
    from huggingface_hub import snapshot_download

    ids = make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption", "dinov3")), token=TOKEN, endpoint=hub.url)
    local = snapshot_download(REPO, repo_type="dataset", endpoint=hub.url, token=TOKEN,
                              local_dir=tmp_path / "snap")
    ds = datasets.load_dataset(str(local), "caption", split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["image_id"] == ids
    assert ds[0]["caption"] == f"caption {IDS.index(ids[0])}"


def test_offset_and_limit_select_a_range_with_its_label(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",), offset=2, limit=3), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert [p for p in files if p.endswith(".parquet")] == ["data/00000/00002-00004.parquet"]
    assert _parquet(files["data/00000/00002-00004.parquet"]).column("image_id").to_pylist() == ids[2:5]


def test_chunk_sizes_cut_at_absolute_positions(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption", "dinov3"), offset=1, rows_per_parquet=4, images_per_tar=2),
            token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert sorted(p for p in files if p.endswith((".parquet", ".tar"))) == [
        "data/00000/00001-00003.parquet", "data/00000/00004-00005.parquet",
        "dinov3/00000/00001-00001.tar", "dinov3/00000/00002-00003.tar", "dinov3/00000/00004-00005.tar"]


def test_max_tar_mb_splits_a_tar(tmp_path, hub):
    make_dataset(tmp_path / "ds", patches=64)  # ~130 kB per image
    publish(tmp_path / "ds", config(layers=("dinov3",), max_tar_mb=0.3), token=TOKEN, endpoint=hub.url)
    manifest = json.loads(hub.files(REPO)["manifest.json"])
    chunks = manifest["layers"]["dinov3"]["chunks"]
    assert len(chunks) == 3 and sum(chunks.values()) == 6
    assert sorted(chunks) == ["00000-00001", "00002-00003", "00004-00005"]


def test_more_images_later_add_chunks_and_counts(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",), limit=3, rows_per_parquet=3), token=TOKEN, endpoint=hub.url)
    publish(tmp_path / "ds", config(layers=("caption",), offset=3, rows_per_parquet=3), token=TOKEN, endpoint=hub.url)
    manifest = json.loads(hub.files(REPO)["manifest.json"])
    assert manifest["layers"]["caption"]["chunks"] == {"00000-00002": 3, "00003-00005": 3}
    assert manifest["total_images"] == 6


def test_more_images_in_a_partly_published_grid_cell_grow_its_chunk(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",), limit=3), token=TOKEN, endpoint=hub.url)
    publish(tmp_path / "ds", config(layers=("caption",), offset=3), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert json.loads(files["manifest.json"])["layers"]["caption"]["chunks"] == {"00000-00005": 6}
    assert sorted(p for p in files if p.startswith("data/")) == ["data/00000/00000-00005.index.json",
                                                               "data/00000/00000-00005.parquet"]


def test_publishing_a_wider_range_replaces_overlapped_chunks(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",), limit=2), token=TOKEN, endpoint=hub.url)
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert [p for p in files if p.startswith("data/")] == ["data/00000/00000-00005.index.json",
                                                           "data/00000/00000-00005.parquet"] or \
        sorted(p for p in files if p.startswith("data/")) == ["data/00000/00000-00005.index.json",
                                                              "data/00000/00000-00005.parquet"]
    assert json.loads(files["manifest.json"])["total_images"] == 6


def test_adding_a_layer_keeps_the_caption_column(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    table = _parquet(hub.files(REPO)["data/00000/00000-00005.parquet"])
    assert None not in table.column("caption").to_pylist()
    assert None not in table.column("dinov3_cls").to_pylist()


def test_republishing_the_same_range_makes_no_commit(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption", "dinov3")), token=TOKEN, endpoint=hub.url)
    commits = len(hub.repo(REPO).commits)
    result = publish(tmp_path / "ds", config(layers=("caption", "dinov3")), token=TOKEN, endpoint=hub.url)
    assert not result.changed and len(hub.repo(REPO).commits) == commits
    assert hub.count("POST", r"/commit/") == 1


def test_each_batch_is_one_commit_with_manifest_and_card(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    result = publish(tmp_path / "ds", config(layers=("caption",), rows_per_parquet=2, chunks_per_commit=1),
                     token=TOKEN, endpoint=hub.url)
    assert len(result.commits) == 3
    repo = hub.repo(REPO)
    after_first = repo.commits[1].files
    assert "data/00000/00000-00001.parquet" in after_first and "data/00000/00002-00003.parquet" not in after_first
    assert json.loads(after_first["manifest.json"].data)["total_images"] == 2


def test_repo_id_not_owner_slash_name_is_refused():
    for bad in ("faces", "a/b/c", "https://huggingface.co/a/b", "../x", "a/..", ""):
        with pytest.raises(ConfigError):
            config(hub_repo=bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd payloads are Linux-only")
def test_chunks_are_freed_once_pre_uploaded_before_the_commit(tmp_path, hub, monkeypatch):
    from stratum_core.publish import hub as hub_module
    from stratum_core.publish import pack, publisher
    from tests.core.publish.test_pack import open_payloads

    make_dataset(tmp_path / "ds")
    pools, held_at_commit = [], []
    real_commit = hub_module.HubClient.commit

    class RecordedPool(pack.PayloadPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    def commit(self, operations, message, parent):
        held_at_commit.append((pools[0].lent, open_payloads()))
        return real_commit(self, operations, message, parent)

    monkeypatch.setattr(publisher, "PayloadPool", RecordedPool)
    monkeypatch.setattr(hub_module.HubClient, "commit", commit)
    result = publish(tmp_path / "ds", config(layers=("caption", "dinov3"), images_per_tar=2), token=TOKEN,
                     endpoint=hub.url)
    assert len(result.uploaded_files) == 4  # 1 parquet + 3 tars, all LFS
    assert held_at_commit == [(0, ["stratum-pool"])]  # no chunk in use, one idle memfd kept for reuse
    assert open_payloads() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd payloads are Linux-only")
def test_a_regular_file_kept_until_the_commit_is_not_reused_by_later_chunks(tmp_path, hub, monkeypatch):
    import huggingface_hub._commit_api as commit_api

    from stratum_core.publish import hub as hub_module
    from stratum_core.publish import pack
    from tests.core.publish.test_pack import open_payloads

    ids = make_dataset(tmp_path / "ds")
    real_modes, real_commit, held_at_commit = commit_api._fetch_upload_modes, hub_module.HubClient.commit, []

    def parquet_as_regular_file(additions, **kwargs):  # as the Hub does for a small file it does not track
        real_modes(additions=additions, **kwargs)
        for addition in additions:
            if addition.path_in_repo.endswith(".parquet"):
                addition._upload_mode = "regular"

    def commit(self, operations, message, parent):
        held_at_commit.append(open_payloads())
        return real_commit(self, operations, message, parent)

    monkeypatch.setattr(commit_api, "_fetch_upload_modes", parquet_as_regular_file)
    monkeypatch.setattr(hub_module.HubClient, "commit", commit)
    publish(tmp_path / "ds", config(layers=("caption", "dinov3"), images_per_tar=2), token=TOKEN, endpoint=hub.url)
    assert held_at_commit == [["stratum-pool", "stratum-pool"]]  # the parquet in use, one idle buffer
    with pack.pack_data(tmp_path / "ds", ids, ("caption", "dinov3"), "data/00000/00000-00005.parquet") as fresh:
        assert hub.files(REPO)["data/00000/00000-00005.parquet"] == fresh.payload.read()
    with pack.pack_tar(tmp_path / "ds", "dinov3", ids[4:], "dinov3/00000/00004-00005.tar") as fresh:
        assert hub.files(REPO)["dinov3/00000/00004-00005.tar"] == fresh.payload.read()
    assert open_payloads() == []


def test_an_image_sorting_before_published_ones_is_refused_naming_the_range_and_id(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    head = hub.repo(REPO).head.oid
    make_dataset(tmp_path / "ds", ids=("a/early",))  # sorts first: every published position shifts by one
    with pytest.raises(ConfigError, match=r"00000-00005.*'a/img0' at position 0.*'a/early'"):
        publish(tmp_path / "ds", config(layers=("caption", "dinov3")), token=TOKEN, endpoint=hub.url)
    assert hub.repo(REPO).head.oid == head


def test_more_images_after_a_shift_are_refused_by_the_chunk_before_them(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",), limit=3), token=TOKEN, endpoint=hub.url)
    make_dataset(tmp_path / "ds", ids=("a/early",))
    with pytest.raises(ConfigError, match=r"00000-00002.*'a/img0' at position 0.*'a/early'"):
        publish(tmp_path / "ds", config(layers=("caption",), offset=3), token=TOKEN, endpoint=hub.url)
