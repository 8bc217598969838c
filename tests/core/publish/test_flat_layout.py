"""Repos in the older flat layout (`<dir>/<range>.<ext>` with an index beside each) stay readable,
publishable and reconcilable next to the nested chunks publish adds now."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq

from stratum_core.publish import publish, reconcile
from stratum_core.publish.layout import index_path, list_chunks
from stratum_core.publish.manifest import build_manifest, dumps
from stratum_core.publish.pack import pack_data, pack_tar
from tests.core.publish.hubdata import REPO, TOKEN, config, make_dataset


def flat_repo(root, hub, ids) -> None:
    """The first three images as an older stratum published them: flat chunks, one v1 index each."""
    files, info = {}, {}
    for packed in (pack_data(root, ids[:3], ("caption", "dinov3"), "data/00000-00002.parquet"),
                   pack_tar(root, "dinov3", ids[:3], "dinov3/00000-00002.tar")):
        with packed:
            packed.index["range"] = "00000-00002"
            files[packed.path_in_repo] = packed.payload.read()
            files[index_path(packed.path_in_repo)] = packed.index_bytes()
            info[packed.path_in_repo] = {"count": 3, "counts": packed.index.get("counts", {})}
    manifest = build_manifest(info)
    for section in [manifest["data"], *manifest["layers"].values()]:
        section.pop("paths")  # older manifests had no paths
    files["manifest.json"] = dumps(manifest)
    hub.put_files(REPO, files, message="published by an older stratum")


def test_a_flat_repo_is_extended_with_nested_chunks_and_keeps_its_flat_ones(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    flat_repo(tmp_path / "ds", hub, ids)
    before = hub.files(REPO)
    result = publish(tmp_path / "ds", config(layers=("caption", "dinov3"), offset=3, rows_per_parquet=3,
                                             images_per_tar=3), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert sorted(result.uploaded_files) == ["data/00000/00003-00005.parquet", "dinov3/00000/00003-00005.tar"]
    assert all(files[p] == before[p] for p in before if p != "manifest.json")
    assert [c.path for c in list_chunks(files, "dinov3")] == ["dinov3/00000-00002.tar", "dinov3/00000/00003-00005.tar"]
    manifest = json.loads(files["manifest.json"])
    assert manifest["layers"]["dinov3"]["chunks"] == {"00000-00002": 3, "00003-00005": 3}
    card = files["README.md"].decode()
    assert "    - dinov3/*.tar\n    - dinov3/*/*.tar" in card


def test_republishing_a_flat_chunk_unchanged_keeps_it_in_place(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    flat_repo(tmp_path / "ds", hub, ids)
    head = hub.repo(REPO).head.oid
    result = publish(tmp_path / "ds", config(layers=("caption", "dinov3"), limit=3, rows_per_parquet=3,
                                             images_per_tar=3), token=TOKEN, endpoint=hub.url)
    assert not result.changed and hub.repo(REPO).head.oid == head


def test_reconcile_counts_flat_and_nested_chunks_exactly(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    flat_repo(tmp_path / "ds", hub, ids)
    publish(tmp_path / "ds", config(layers=("caption", "dinov3"), offset=3, rows_per_parquet=3, images_per_tar=3),
            token=TOKEN, endpoint=hub.url)
    result = reconcile(config(), dry_run=True, token=TOKEN, endpoint=hub.url)
    assert result.problems == [] and "estimated_counts" not in result.manifest
    assert result.manifest["total_images"] == 6 and result.manifest["layers"]["caption"]["count"] == 6


def test_load_dataset_reads_flat_and_nested_parquets_together(tmp_path, hub):
    import datasets
    from huggingface_hub import snapshot_download

    ids = make_dataset(tmp_path / "ds")
    flat_repo(tmp_path / "ds", hub, ids)
    publish(tmp_path / "ds", config(layers=("caption",), offset=3, rows_per_parquet=3), token=TOKEN,
            endpoint=hub.url)
    local = snapshot_download(REPO, repo_type="dataset", endpoint=hub.url, token=TOKEN, local_dir=tmp_path / "snap")
    ds = datasets.load_dataset(local, "caption", split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(ds["image_id"]) == ids
    table = pq.read_table(io.BytesIO(hub.files(REPO)["data/00000-00002.parquet"]))
    assert table.column("image_id").to_pylist() == ids[:3]


def test_a_nested_chunk_covering_a_flat_one_replaces_it_and_its_index(tmp_path, hub):
    ids = make_dataset(tmp_path / "ds")
    flat_repo(tmp_path / "ds", hub, ids)
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)  # one 10,000-row cell
    data = sorted(p for p in hub.files(REPO) if p.startswith("data/"))
    assert data == ["data/00000/00000-00005.index.json", "data/00000/00000-00005.parquet"]
    assert json.loads(hub.files(REPO)["manifest.json"])["data"]["chunks"] == {"00000-00005": 6}
