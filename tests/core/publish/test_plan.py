"""Planning the repo layout from positions and sizes: the Hub's limits hold at 10M images."""

from __future__ import annotations

import zlib

import numpy as np

from stratum_core.artifacts import artifacts_of
from stratum_core.buckets import Bucket
from stratum_core.publish import PUBLISHABLE_LAYERS, PublishConfig
from stratum_core.publish.layout import DATA_DIR, ChunkRange
from stratum_core.publish.planning import layer_cells, plan_layout, split_cell
from stratum_core.publish.publisher import DATA_ROW_BYTES

GB = 1024 ** 3
TEN_MILLION = 10_000_000
# Aspect buckets of a portrait-heavy face dataset: most images square, the rest taller or wider.
BUCKETS = (Bucket(1024, 1024), Bucket(896, 1152), Bucket(1152, 896), Bucket(832, 1216))


def nominal_bytes(layer: str, bucket: Bucket) -> int:
    """What one image adds to a tar of `layer`: each npy (128-byte header + data) plus its tar header block."""
    total = 0
    for artifact in artifacts_of(layer):
        if artifact.kind == "npy":
            total += 128 + int(np.prod(artifact.shape(bucket))) * np.dtype(artifact.dtype).itemsize + 2 * 512
    return total


class SimulatedSizes:
    """Per-position sizes of a 10M-image dataset, one layer in memory at a time; 2% of images lack each layer."""

    def __init__(self, n: int):
        self.n = n
        self.layer, self.array = None, None

    def __call__(self, layer: str, start: int, stop: int) -> np.ndarray:
        if layer != self.layer:
            rng = np.random.default_rng(zlib.crc32(layer.encode()))
            if layer == DATA_DIR:
                array = np.full(self.n, DATA_ROW_BYTES, dtype=np.int64)
            else:
                per_bucket = np.array([nominal_bytes(layer, b) for b in BUCKETS], dtype=np.int64)
                array = per_bucket[rng.choice(len(BUCKETS), self.n, p=(0.55, 0.25, 0.1, 0.1))]
                array[rng.random(self.n) < 0.02] = 0
            self.layer, self.array = layer, array
        return self.array[start:stop]


def test_a_10m_image_plan_of_every_layer_keeps_every_hub_limit():
    config = PublishConfig(hub_repo="me/faces", layers=PUBLISHABLE_LAYERS)
    plan = plan_layout(range(TEN_MILLION), TEN_MILLION, config.layers, SimulatedSizes(TEN_MILLION), config)
    print("\n10M images, every layer, defaults:\n" + plan.summary())
    assert plan.ok, plan.problems
    assert plan.files < 100_000
    assert plan.largest_folder[1] < 10_000
    assert plan.commits / config.commits_per_hour == plan.hours and config.commits_per_hour < 128
    assert plan.commits == -(-len(plan.chunks) // config.chunks_per_commit)
    tars = [c for c in plan.chunks if c.layer != DATA_DIR]
    by_layer: dict[str, list] = {}
    for chunk in tars:
        by_layer.setdefault(chunk.layer, []).append(chunk)
    for layer, chunks in by_layer.items():
        whole = chunks[:-1]  # the last chunk of a layer holds what is left
        assert all(1 * GB <= c.nbytes <= 5 * GB for c in whole), layer
        assert all(c.nbytes <= config.max_tar_mb * 1024 * 1024 for c in chunks), layer
    counted = {layer: sum(c.count for c in chunks) for layer, chunks in by_layer.items()}
    assert all(0.97 * TEN_MILLION < n < TEN_MILLION for n in counted.values())
    assert sum(c.count for c in plan.chunks if c.layer == DATA_DIR) == TEN_MILLION
    assert plan.bytes > 200e12  # ~24 MB an image over all layers


def test_the_planned_chunks_nest_in_folders_within_a_small_folder_limit():
    config = PublishConfig(hub_repo="me/faces", layers=("caption", "dinov3"), rows_per_parquet=10,
                           images_per_tar=5, folder_limit=6, chunks_per_commit=4)
    n = 60
    plan = plan_layout(range(n), n, config.layers, lambda layer, a, b: np.full(b - a, 1000, np.int64), config)
    assert plan.ok and plan.largest_folder[1] <= 6
    paths = [c.path for c in plan.chunks]
    assert "dinov3/00000/00000-00004.tar" in paths and "dinov3/00001/00015-00019.tar" in paths
    assert "data/00000/00000-00009.parquet" in paths and "data/00001/00050-00059.parquet" in paths


def test_a_plan_over_a_folder_limit_is_reported_as_a_problem():
    sizes = lambda layer, a, b: np.full(b - a, 4000, np.int64)  # noqa: E731
    config = PublishConfig(hub_repo="me/faces", layers=("dinov3",), images_per_tar=1, folder_limit=6)
    assert plan_layout(range(8), 8, config.layers, sizes, config).ok  # 3 one-image cells per folder + index
    crowded = PublishConfig(hub_repo="me/faces", layers=("dinov3",), images_per_tar=8, folder_limit=6,
                            max_tar_mb=0.01)  # every image over the cap: 8 one-image parts in one folder
    plan = plan_layout(range(8), 8, crowded.layers, sizes, crowded)
    assert plan.problems == ["dinov3/00000 would hold 9 entries (limit 6)"]


def test_existing_chunks_keep_their_paths_and_a_partial_cell_grows():
    files = ["data/00000-00004.parquet", "data/00000-00004.index.json",  # flat, from an older publish
             "dinov3/00000/00000-00002.tar", "dinov3/00000/00000-00002.index.json"]
    config = PublishConfig(hub_repo="me/faces", layers=("dinov3",), rows_per_parquet=5, images_per_tar=5,
                           folder_limit=2)
    plan = plan_layout(range(3, 10), 10, config.layers, lambda layer, a, b: np.full(b - a, 100, np.int64), config,
                       files)
    assert [c.path for c in plan.chunks] == ["data/00000-00004.parquet", "data/00001/00005-00009.parquet",
                                             "dinov3/00000/00000-00004.tar", "dinov3/00001/00005-00009.tar"]
    # Both data chunks with their indexes, two tars with one index each (the grown chunk's replaces the old
    # one), manifest, card and .gitattributes; the partial tar 00000-00002 is gone.
    assert plan.files == 11


def test_layer_cells_cut_at_grid_multiples_and_widen_over_overlapping_chunks():
    assert layer_cells(range(3, 12), 20, 5, []) == [ChunkRange(3, 4), ChunkRange(5, 9), ChunkRange(10, 11)]
    assert layer_cells(range(5, 10), 20, 5, [ChunkRange(4, 6)]) == [ChunkRange(4, 9)]


def test_split_cell_keeps_parts_under_the_cap_and_skips_images_lacking_the_layer():
    parts = split_cell(ChunkRange(0, 5), np.array([400, 0, 400, 400, 400, 0]), 900 + 11264)
    assert [(p.first, p.last) for p, _ in parts] == [(0, 2), (3, 5)]
    assert [list(positions) for _, positions in parts] == [[0, 2], [3, 4]]


def test_a_large_tail_chunk_is_not_rewritten_for_a_small_addition():
    from types import SimpleNamespace

    config = PublishConfig(hub_repo="me/faces", layers=("pose",), images_per_tar=1000, rows_per_parquet=1000)
    sizes = lambda layer, a, b: np.full(b - a, 1000, np.int64)  # noqa: E731
    small_tail = {"pose/00000/00000-00099.tar": SimpleNamespace(size=200_000)}
    plan = plan_layout(range(100, 150), 200, config.layers, sizes, config, small_tail)
    assert [c.path for c in plan.chunks if c.layer == "pose"] == ["pose/00000/00000-00149.tar"]  # grows
    large_tail = {"pose/00000/00000-00099.tar": SimpleNamespace(size=100 * 1000)}
    plan = plan_layout(range(100, 110), 200, config.layers, sizes, config, large_tail)
    assert [c.path for c in plan.chunks if c.layer == "pose"] == ["pose/00000/00100-00109.tar"]  # follows it
