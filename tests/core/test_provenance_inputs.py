"""Provenance of upstream files: a caption.txt or seg.npy edited by hand makes what was computed from it stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stratum_core.cli import main
from stratum_core.status import dataset_status
from stratum_testing import images


def process(input_dir: Path, output: Path, *extra: str) -> int:
    return main(["process", str(input_dir), "-o", str(output), "--workers", "2", "--progress-every", "3600",
                 "--device", "cpu", *extra])


def stale(output: Path) -> dict[str, dict[str, int]]:
    return {p: dict(c) for p, c in dataset_status(output).provenance.stale.items()}


def mtimes(output: Path) -> dict[str, int]:
    return {str(p.relative_to(output)): p.stat().st_mtime_ns for p in output.rglob("*")
            if p.is_file() and ".stratum" not in p.parts and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def model_dir(sapiens_model_dir, tmp_path_factory) -> Path:
    """A $STRATUM_MODEL_DIR with the Sapiens smoke models (a copy: the T5 smoke model is added to it)."""
    from stratum_core.passes.t5 import T5Pass
    from stratum_testing.transformers_models import build_t5

    root = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(sapiens_model_dir, root)
    build_t5(root / T5Pass.model.hub_id)
    return root


@pytest.fixture(scope="module")
def ollama():
    from stratum_testing.ollama import FakeOllama

    fake = FakeOllama(captions="A small test picture.")
    with fake:
        yield fake


@pytest.fixture
def input_dir(tmp_path) -> Path:
    root = tmp_path / "in"
    images.write_gradient(root / "a.png", 96, 64, seed=1)
    images.write_gradient(root / "b.png", 64, 96, seed=2)
    return root


@pytest.fixture
def caption_args(ollama, model_dir) -> tuple[str, ...]:
    return ("--passes", "caption,t5", "--ollama-url", ollama.generate_url, "--ollama-model", ollama.models[0],
            "--model-dir", str(model_dir))


@pytest.fixture
def captioned(input_dir, tmp_path, caption_args, capsys) -> Path:
    output = tmp_path / "out"
    assert process(input_dir, output, *caption_args) == 0
    assert stale(output) == {}
    return output


def test_a_caption_edited_by_hand_makes_t5_stale(captioned):
    (captioned / "a" / "caption.txt").write_text("A corrected caption, written by hand.")
    assert stale(captioned) == {"t5": {"caption changed": 1}}
    assert dataset_status(captioned).provenance.stale_images["t5"] == ["a"]


def test_redo_stale_after_a_caption_edit_recomputes_only_that_t5(captioned, input_dir, caption_args, capsys):
    caption = captioned / "a" / "caption.txt"
    caption.write_text("A corrected caption, written by hand.")
    before = mtimes(captioned)
    assert process(input_dir, captioned, *caption_args, "--redo", "stale") == 0
    changed = {name for name, mtime in mtimes(captioned).items() if before.get(name) != mtime}
    assert changed == {"a/t5_hidden.npy", "a/t5_mask.npy"}
    assert caption.read_text() == "A corrected caption, written by hand."  # the edit is kept, t5 follows it
    assert stale(captioned) == {}


def test_a_seg_replaced_by_hand_makes_depth_and_normal_stale(input_dir, tmp_path, model_dir, capsys):
    output = tmp_path / "out"
    assert process(input_dir, output, "--passes", "seg,depth,normal", "--model-dir", str(model_dir)) == 0
    seg = output / "b" / "seg.npy"
    np.save(seg, np.zeros_like(np.load(seg)))
    assert stale(output) == {"depth": {"seg changed": 1}, "normal": {"seg changed": 1}}
