"""`stratum verify --workers`: image folders checked in parallel processes, the same report, with progress."""

from __future__ import annotations

import io

import numpy as np
import pytest

import stratum_core.verify as verify_module
from stratum_core.artifacts import BY_NAME
from stratum_core.cli import main
from stratum_core.store import Store
from stratum_core.verify import ProgressLines, read_value, verify

N_IMAGES = 12
BAD = {"img003": "seg.npy", "img007": "depth.npy", "img010": "seg.npy"}


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """12 image folders (1024x1024 bucket) with seg and depth, three of them with one bad array."""
    monkeypatch.setattr(verify_module, "CHUNK", 2)  # so 12 folders are enough to start the processes
    store = Store(tmp_path)
    seg = np.zeros((1024, 1024), np.uint8)
    depth = np.zeros((1024, 1024), np.float16)
    for i in range(N_IMAGES):
        image_id = f"img{i:03d}"
        store.write(image_id, BY_NAME["metadata"], {"image_id": image_id, "source_path": f"{image_id}.png",
                                                    "width": 9, "height": 9, "aspect_bucket": "1024x1024"})
        store.write(image_id, BY_NAME["seg"], np.full_like(seg, 28) if BAD.get(image_id) == "seg.npy" else seg)
        bad_depth = BAD.get(image_id) == "depth.npy"
        store.write(image_id, BY_NAME["depth"], np.full_like(depth, np.nan) if bad_depth else depth)
    return tmp_path


def summary(report):
    return report.images, report.files, [(p.image_id, p.filename, p.message) for p in report.problems]


def test_two_worker_processes_give_the_report_of_one(dataset):
    one, two = verify(dataset, workers=1), verify(dataset, workers=2)
    assert summary(two) == summary(one)
    assert [(p.image_id, p.filename) for p in two.problems] == sorted(BAD.items())
    assert two.images == N_IMAGES and two.files == 3 * N_IMAGES


def test_fix_with_workers_deletes_exactly_the_bad_files(dataset):
    report = verify(dataset, fix=True, workers=2)
    assert report.fixed == len(BAD)
    for image_id, filename in BAD.items():
        assert not (dataset / image_id / filename).exists()
    assert verify(dataset, workers=2).ok
    assert len(list(dataset.rglob("*.npy"))) == 2 * N_IMAGES - len(BAD)


def test_progress_counts_up_to_every_folder(dataset, monkeypatch):
    monkeypatch.setattr(verify_module, "PROGRESS_EVERY", 5)
    seen: list[int] = []
    verify(dataset, workers=2, progress=seen.append)
    assert seen == [5, 10, 12]


def test_progress_lines_name_the_count_and_rate():
    stream = io.StringIO()
    lines = ProgressLines(stream, every=0)
    lines(1500)
    assert stream.getvalue().startswith("verify: 1500 image folders checked (")


def test_the_cli_verifies_with_workers_and_exits_1_on_problems(dataset, capsys):
    assert main(["verify", str(dataset), "--workers", "2", "--progress-every", "0"]) == 1
    out, err = capsys.readouterr()
    assert f"checked {3 * N_IMAGES} files in {N_IMAGES} image directories: 3 problems" in out
    assert "img007/depth.npy: non-finite values" in out
    assert f"verify: {N_IMAGES} image folders checked" in err


def test_npy_artifacts_are_memory_mapped_not_copied(dataset):
    value = read_value(Store(dataset), "img000", BY_NAME["depth"])
    assert isinstance(value, np.memmap) and value.shape == (1024, 1024)
