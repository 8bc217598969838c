"""SourceImage: a small, immutable record (millions live through a no-op re-run), equal and ordered by rel_path."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import pytest

from stratum_core.discover import SourceImage, discover


def test_path_is_the_file_it_was_given(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.jpg").write_bytes(b"x")
    (source,) = discover(tmp_path / "in").images
    assert source.path == tmp_path / "in" / "sub" / "a.jpg" and isinstance(source.path, Path)
    assert (source.rel_path, source.image_id) == ("sub/a.jpg", "sub/a")


def test_a_path_that_does_not_end_in_rel_path_is_kept_whole():
    source = SourceImage("shard/a.jpg", Path("/data/a.jpg"))
    assert source.path == Path("/data/a.jpg") and source.image_id == "shard/a"


def test_equal_hashed_and_ordered_by_rel_path_only():
    a, b = SourceImage("a.jpg", "/x/a.jpg"), SourceImage("a.jpg", "/elsewhere/a.jpg")
    assert a == b and len({a, b}) == 1
    assert sorted([SourceImage("b.png", "/x/b.png"), a]) == [a, SourceImage("b.png", "/x/b.png")]


def test_it_is_immutable_and_pickles():
    source = SourceImage("d/a.jpg", "/x/d/a.jpg")
    with pytest.raises(AttributeError):
        source.rel_path = "other.jpg"
    again = pickle.loads(pickle.dumps(source))
    assert again == source and again.path == source.path and again.image_id == "d/a"


def test_an_image_costs_its_strings_not_a_path_object():
    # A no-op re-run holds every SourceImage: 10M of them must fit in a few GB.
    paths = [(f"part{i // 1000:04d}/{i:07d}.jpg", f"/datasets/photos/part{i // 1000:04d}/{i:07d}.jpg")
             for i in range(10_000)]
    tracemalloc.start()
    try:
        sources = [SourceImage(rel, path) for rel, path in paths]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sources) == 10_000
    assert held / len(sources) < 260  # a pathlib.Path per image alone added ~300 bytes
