"""Fixtures for stratum_core.data: a small output tree with mixed buckets, holes in some layers, and shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from stratum_core.artifacts import BY_NAME
from stratum_core.buckets import Bucket
from stratum_core.shards import register_all
from stratum_core.store import Store

BUCKETS = (Bucket(1024, 1024), Bucket(832, 1216), Bucket(1216, 832))
# Ids as a user's tree gives them: two groups (folders), a dot and a `%` in the last component.
IDS = ("a/img00", "a/img01", "a/img02", "a/img03", "a/img04", "a/v1.2", "b/img06", "b/img07", "b/100%",
       "b/img09", "b/img10", "b/img11")
NO_T5 = frozenset({"a/img02", "b/img07"})
NO_CAPTION = frozenset({"b/img10"})


@dataclass
class Tree:
    """What was written: root, sorted ids, each image's bucket, and which images lack which layer."""

    root: Path
    input_dir: Path
    ids: list[str]
    bucket: dict[str, Bucket] = field(default_factory=dict)
    lacking: dict[str, set[str]] = field(default_factory=dict)

    def path(self, image_id: str, artifact: str) -> Path:
        return self.root / image_id / BY_NAME[artifact].filename

    def complete(self, layers) -> list[str]:
        return [i for i in self.ids if not self.lacking[i] & set(layers)]


def write_tree(root: Path, input_dir: Path, ids=IDS) -> Tree:
    """Image i: bucket BUCKETS[i % 3], caption "caption i", random pose/seg/t5 seeded by i; sources are empty
    files under `input_dir` (shard registration reads names only)."""
    store = Store(root)
    tree = Tree(root, input_dir, sorted(ids))
    for i, image_id in enumerate(ids):
        bucket = BUCKETS[i % len(BUCKETS)]
        rng = np.random.default_rng(i)
        tree.bucket[image_id] = bucket
        tree.lacking[image_id] = set()
        source = input_dir / f"{image_id}.png"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.touch()
        store.write(image_id, BY_NAME["metadata"], {"image_id": image_id, "source_path": f"{image_id}.png",
                                                    "width": 900 + i, "height": 700 + i,
                                                    "aspect_bucket": bucket.label})
        if image_id in NO_CAPTION:
            tree.lacking[image_id].add("caption")
        else:
            store.write(image_id, BY_NAME["caption"], f"caption {i}")
        store.write(image_id, BY_NAME["pose"], rng.uniform(-1, 1, (133, 3)).astype(np.float16))
        store.write(image_id, BY_NAME["seg"], rng.integers(0, 28, (bucket.height, bucket.width), dtype=np.uint8))
        if image_id in NO_T5:
            tree.lacking[image_id].add("t5")
        else:
            store.write(image_id, BY_NAME["t5_hidden"], rng.standard_normal((512, 1024)).astype(np.float16))
            store.write(image_id, BY_NAME["t5_mask"], (np.arange(512) < 10 + i).astype(np.uint8))
    return tree


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Tree:
    """The shared, read-only tree (tests that damage files build their own with `write_tree`)."""
    base = tmp_path_factory.mktemp("data")
    built = write_tree(base / "out", base / "in")
    register_all(built.input_dir, built.root, shard_size=4)  # a-0000, a-0001, b-0000, b-0001
    return built


@pytest.fixture
def own_tree(tmp_path) -> Tree:
    return write_tree(tmp_path / "out", tmp_path / "in")


HUB_TOKEN = "hf_DATAstreamSECRET0123456789"
HUB_REPO = "me/stream"
HUB_LAYERS = "caption,pose,seg,t5"


@dataclass
class Published:
    hub: object  # stratum_testing.hub.FakeHub
    tree: Tree
    repo: str

    def stream(self, **kwargs):
        from stratum_core.data import HubStream

        kwargs.setdefault("layers", HUB_LAYERS)
        return HubStream(self.repo, endpoint=self.hub.url, token=HUB_TOKEN, **kwargs)


def stratum_publish(tree: Tree, hub, repo: str, monkeypatch) -> None:
    """`stratum publish` as a user runs it: data chunks of 5 rows, tars of 4 images, split at 2.5 MB (seg and
    t5 images are 1 MB or more, so those layers get smaller chunks than pose)."""
    from stratum_core.cli import main

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    code = main(["publish", str(tree.root), "--hub-repo", repo, "--layers", HUB_LAYERS, "--rows-per-parquet", "5",
                 "--images-per-tar", "4", "--max-tar-mb", "2.5", "--endpoint", hub.url])
    assert code == 0


@pytest.fixture(scope="module")
def published(tree):
    """`tree` published to a loopback fake Hub (read-only: tests that edit the repo use `own_published`)."""
    import huggingface_hub.constants as constants
    from stratum_testing.hub import FakeHub

    with pytest.MonkeyPatch.context() as mp, FakeHub() as fake:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        stratum_publish(tree, fake, HUB_REPO, mp)
        yield Published(fake, tree, HUB_REPO)


@pytest.fixture
def own_published(published, monkeypatch):
    """A second repo on the same Hub, published afresh, which the test may damage."""
    stratum_publish(published.tree, published.hub, "me/damaged", monkeypatch)
    return Published(published.hub, published.tree, "me/damaged")
