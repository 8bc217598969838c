"""A publish with tiny chunks and a tiny folder limit: nested folders on the Hub, read back by datasets and
webdataset, reconciled without change, and planned exactly as published."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from stratum_core.publish import plan, publish, reconcile
from stratum_core.publish.layout import index_entry, list_chunks, unescape_key
from tests.core.publish.hubdata import IDS, REPO, TOKEN, cls_value, config, make_dataset

NESTED = dict(layers=("caption", "dinov3"), rows_per_parquet=2, images_per_tar=1, folder_limit=5,
              chunks_per_commit=3)


@pytest.fixture
def nested_repo(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    result = publish(tmp_path / "ds", config(**NESTED), token=TOKEN, endpoint=hub.url)
    return ids, result


def _snapshot(tmp_path, hub):
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(REPO, repo_type="dataset", endpoint=hub.url, token=TOKEN, local_dir=tmp_path / "snap"))


def test_tiny_chunks_nest_in_folders_within_the_folder_limit(nested_repo, hub):
    files = hub.files(REPO)
    tars = sorted(p for p in files if p.endswith(".tar"))
    assert tars == ["dinov3/00000/00000-00000.tar", "dinov3/00000/00001-00001.tar", "dinov3/00001/00002-00002.tar",
                    "dinov3/00001/00003-00003.tar", "dinov3/00002/00004-00004.tar", "dinov3/00002/00005-00005.tar"]
    assert sorted(p for p in files if p.endswith(".parquet")) == [
        "data/00000/00000-00001.parquet", "data/00000/00002-00003.parquet", "data/00001/00004-00005.parquet"]
    folders: dict[str, set] = {}
    for path in files:
        parts = path.split("/")
        for depth in range(len(parts)):
            folders.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    assert max(len(entries) for entries in folders.values()) <= 5
    manifest = json.loads(files["manifest.json"])
    assert manifest["chunking"]["dinov3"] == {"images_per_chunk": 1, "chunks_per_folder": 2}
    assert manifest["layers"]["dinov3"]["paths"]["00002-00002"] == "dinov3/00001/00002-00002.tar"


def test_every_nested_chunk_has_one_index_entry_with_its_true_ids(nested_repo, hub):
    ids, _ = nested_repo
    files = hub.files(REPO)
    chunks = list_chunks(files)
    assert len(chunks) == 9 and all(c.index is not None for c in chunks)
    listed = []
    for chunk in [c for c in chunks if c.layer == "dinov3"]:
        entry = index_entry(json.loads(files[chunk.index]), chunk)
        assert entry["file"] == chunk.path and entry["count"] == 1
        listed += entry["ids"]
    assert listed == ids
    [fourth] = [c for c in chunks if c.path == "dinov3/00001/00003-00003.tar"]
    entry = index_entry(json.loads(files[fourth.index]), fourth)
    assert ids[3] == "b/v1.2" and entry["escaped_keys"] == {"b/v1%2E2": "b/v1.2"}


def test_load_dataset_reads_caption_and_dinov3_from_nested_folders(nested_repo, hub, tmp_path):
    import datasets

    ids, _ = nested_repo
    local = _snapshot(tmp_path, hub)
    caption = datasets.load_dataset(str(local), "caption", split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(caption["image_id"]) == ids
    assert {row["image_id"]: row["caption"] for row in caption} == {i: f"caption {IDS.index(i)}" for i in ids}
    # datasets builds every config of a repo with the builder of the first one (parquet here), so a tar layer
    # loads by its folder: the webdataset builder then reads the nested tars.
    dinov3 = datasets.load_dataset(str(local), data_dir="dinov3", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(dinov3) == 6
    keys = sorted(unescape_key(row["__key__"]) for row in dinov3)
    assert keys == ids


def test_webdataset_reads_every_nested_tar(nested_repo, hub, tmp_path):
    import webdataset as wds

    ids, _ = nested_repo
    local = _snapshot(tmp_path, hub)
    tars = [str(local / c.path) for c in list_chunks(hub.files(REPO), "dinov3")]
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert [unescape_key(s["__key__"]) for s in samples] == ids
    for sample in samples:
        i = IDS.index(unescape_key(sample["__key__"]))
        np.testing.assert_array_equal(np.load(io.BytesIO(sample["dinov3_cls.npy"])), cls_value(i))


def test_reconcile_of_a_nested_repo_changes_nothing(nested_repo, hub):
    head = hub.repo(REPO).head.oid
    result = reconcile(config(), token=TOKEN, endpoint=hub.url)
    assert not result.changed and result.problems == [] and hub.repo(REPO).head.oid == head
    assert result.manifest["layers"]["dinov3"]["count"] == 6 and "estimated_counts" not in result.manifest


def test_republishing_a_nested_repo_makes_no_commit(nested_repo, hub, tmp_path):
    commits = len(hub.repo(REPO).commits)
    result = publish(tmp_path / "ds", config(**NESTED), token=TOKEN, endpoint=hub.url)
    assert not result.changed and len(hub.repo(REPO).commits) == commits


def test_the_plan_matches_what_was_published(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    planned = plan(tmp_path / "ds", config(**NESTED), token=TOKEN, endpoint=hub.url)
    assert hub.count("POST", r".") == 0  # planning writes nothing (not even the repo)
    result = publish(tmp_path / "ds", config(**NESTED), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert planned.files == len(files) and planned.commits == len(result.commits) == 3
    assert planned.largest_folder[1] == 5
    assert sorted(c.path for c in planned.chunks) == sorted(p for p in files if p.endswith((".tar", ".parquet")))
