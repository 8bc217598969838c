"""Weight digests without Hub metadata: hashed once, then reused across runs and output folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stratum_core import provenance
from stratum_core.models import resolve_model


@pytest.fixture(scope="module")
def model_dir(sapiens_model_dir, tmp_path_factory) -> Path:
    """A copy of the Sapiens smoke models (TorchScript files, no Hub metadata): these tests touch and rewrite
    the weight files."""
    root = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(sapiens_model_dir, root)
    return root


@pytest.fixture
def seg_weights(model_dir):
    from stratum_core.passes.sapiens import SEG_MODEL

    location = resolve_model(SEG_MODEL, model_dir=model_dir, offline=True)
    (Path(location.root) / provenance.MODEL_CACHE_NAME).unlink(missing_ok=True)  # each test starts unhashed
    return location


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """The weight files read for hashing, in a fresh process (no digests remembered in memory)."""
    calls: list[Path] = []
    real = provenance._hash_file
    monkeypatch.setattr(provenance, "_hash_file", lambda path: calls.append(Path(path)) or real(path))
    monkeypatch.setattr(provenance, "_hash_memo", {})
    return calls


def new_process(monkeypatch) -> None:
    monkeypatch.setattr(provenance, "_hash_memo", {})


def test_a_second_run_reads_no_weight_bytes(seg_weights, hashed, tmp_path, monkeypatch):
    first = provenance.weights_id(seg_weights, tmp_path / "out" / ".stratum")
    assert first.startswith("sha256:") and len(hashed) == 1
    new_process(monkeypatch)
    assert provenance.weights_id(seg_weights, tmp_path / "out" / ".stratum") == first
    assert len(hashed) == 1


def test_the_digest_is_reused_by_a_run_into_another_output(seg_weights, hashed, tmp_path, monkeypatch):
    first = provenance.weights_id(seg_weights, tmp_path / "one" / ".stratum")
    new_process(monkeypatch)
    assert provenance.weights_id(seg_weights, tmp_path / "two" / ".stratum") == first
    assert len(hashed) == 1 and (Path(seg_weights.root) / provenance.MODEL_CACHE_NAME).is_file()


def test_touching_a_weight_file_makes_it_hashed_again(seg_weights, hashed, tmp_path, monkeypatch):
    provenance.weights_id(seg_weights, tmp_path / ".stratum")
    [weights] = hashed
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new_process(monkeypatch)
    provenance.weights_id(seg_weights, tmp_path / ".stratum")
    assert hashed == [weights, weights]


def test_a_changed_weight_file_gets_another_digest(seg_weights, tmp_path, monkeypatch):
    first = provenance.weights_id(seg_weights, tmp_path / ".stratum")
    [name] = provenance._weight_files(seg_weights)
    path = Path(seg_weights.root) / name
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\0")
        new_process(monkeypatch)
        assert provenance.weights_id(seg_weights, tmp_path / ".stratum") != first
    finally:
        path.write_bytes(original)
