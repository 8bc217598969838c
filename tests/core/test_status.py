"""`stratum status`: artifact counts per type and failures per pass, from the filesystem alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stratum_core.artifacts import ARTIFACTS, BY_NAME
from stratum_core.cli import main
from stratum_core.status import dataset_status
from stratum_core.store import Store
from stratum_testing.cli import process_cli
from stratum_testing.images import write_solid


def metadata(image_id: str) -> dict:
    return {"image_id": image_id, "source_path": f"{image_id}.png", "width": 10, "height": 10,
            "aspect_bucket": "1024x1024"}


@pytest.fixture
def dataset(tmp_path):
    """4 images with metadata (3 with pixel, 1 with a caption), 1 undecodable, 1 failed pixel write."""
    store = Store(tmp_path)
    for image_id in ("a", "b", "c/d", "c/e"):
        store.write(image_id, BY_NAME["metadata"], metadata(image_id))
    for image_id in ("a", "b", "c/d"):
        store.write(image_id, BY_NAME["pixel"], np.zeros((1,), np.float16))  # status never reads arrays
    store.write("a", BY_NAME["caption"], "words")
    store.record_failure("bad", "metadata", "decode_error", "truncated")
    store.record_failure("c/e", "pixel", "write_error", "disk full")
    (tmp_path / "stray").mkdir()  # not an image directory
    return tmp_path


def test_status_total_counts_every_known_source_including_undecodable_ones(dataset):
    status = dataset_status(dataset)
    assert (status.total_images, status.with_metadata, status.not_started) == (5, 4, 0)


def test_status_counts_each_artifact(dataset):
    counts = dataset_status(dataset).counts
    assert (counts["metadata"], counts["pixel"], counts["caption"], counts["seg"]) == (4, 3, 1, 0)


def test_status_counts_failures_per_pass_and_reason(dataset):
    failures = dataset_status(dataset).failures
    assert {p: dict(c) for p, c in failures.items()} == {"metadata": {"decode_error": 1},
                                                          "pixel": {"write_error": 1}}


def test_status_format_lines(dataset):
    lines = dataset_status(dataset).format().splitlines()
    assert lines[0] == "Total images: 5"
    assert lines[1] == "metadata: 4 / 5 (80.0%)"
    assert lines[2] == "caption: 1 / 5 (20.0%)"
    assert "pixel: 3 / 5 (60.0%)" in lines
    assert lines[1 + len(ARTIFACTS)].startswith("Failures")
    assert lines[-5:-1] == ["  metadata: 1 (decode_error 1)", "    bad: decode_error: truncated",
                            "  pixel: 1 (write_error 1)", "    c/e: write_error: disk full"]
    assert lines[-1].startswith("Unknown provenance")  # a dataset from before provenance records


def test_status_of_an_empty_dataset(tmp_path):
    text = dataset_status(tmp_path).format()
    assert text.splitlines()[:2] == ["Total images: 0", "metadata: 0 / 0 (0.0%)"]
    assert "Failures" not in text


def test_status_cli_prints_the_format(dataset, capsys):
    assert main(["status", str(dataset)]) == 0
    assert capsys.readouterr().out.startswith("Total images: 5\nmetadata: 4 / 5 (80.0%)\n")


def test_status_cli_json(dataset, capsys):
    main(["status", str(dataset), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["total_images"] == 5 and data["artifacts"]["pixel"] == 3
    assert data["failures"] == {"metadata": {"decode_error": 1}, "pixel": {"write_error": 1}}


def test_status_cli_on_a_missing_dir_is_an_error(tmp_path, caplog):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no dataset" in caplog.text


def test_status_names_the_failed_images(dataset):
    failed = dataset_status(dataset).failed_images
    assert dict(failed) == {"metadata": [("bad", "decode_error", "truncated")],
                            "pixel": [("c/e", "write_error", "disk full")]}


def test_status_json_lists_the_failed_images(dataset, capsys):
    main(["status", str(dataset), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["failed_images"]["pixel"] == [{"image_id": "c/e", "reason": "write_error", "message": "disk full"}]


def test_status_text_shows_a_few_examples_of_a_long_failure_list(tmp_path):
    store = Store(tmp_path)
    for i in range(12):
        store.record_failure(f"img{i:02d}", "caption", "timeout", "no answer")
    lines = dataset_status(tmp_path).format().splitlines()
    assert lines[-5:] == ["  caption: 12 (timeout 12)", "    img00: timeout: no answer", "    img01: timeout: no answer",
                          "    img02: timeout: no answer", "    … 9 more (all of them: stratum status --json)"]


def test_status_text_shows_a_short_failure_list_whole(tmp_path):
    store = Store(tmp_path)
    for i in range(4):
        store.write(f"img{i}", BY_NAME["metadata"], metadata(f"img{i}"))
        store.record_failure(f"img{i}", "caption", "timeout", "no answer")
    lines = dataset_status(tmp_path).format().splitlines()
    start = lines.index("  caption: 4 (timeout 4)")
    assert lines[start:start + 5] == ["  caption: 4 (timeout 4)"] + [f"    img{i}: timeout: no answer" for i in range(4)]


def test_status_shows_the_sources_the_last_run_refused(tmp_path, capsys):
    # Refused sources have no image directory, so status reads them from the newest run record.
    source = tmp_path / "in"
    source.mkdir()
    write_solid(source / "a.jpg", (64, 64), (9, 9, 9))
    write_solid(source / "a.png", (64, 64), (9, 9, 9))
    write_solid(source / "ok.png", (64, 64), (9, 9, 9))
    out = tmp_path / "out"
    assert process_cli(source, out, "--passes", "pixel", "--device", "cpu") == 1
    capsys.readouterr()
    status = dataset_status(out)
    assert status.total_images == 1
    assert sorted((e["source"], e["reason"]) for e in status.refused_sources) == [
        ("a.jpg", "id_collision"), ("a.png", "id_collision")]
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Sources refused by the last run (" in text
    assert "  a.jpg: id_collision: image id 'a' is shared by: a.jpg, a.png" in text.splitlines()


def test_status_reports_no_refused_sources_without_run_records(dataset):
    status = dataset_status(dataset)
    assert status.refused_sources == [] and "refused" not in status.format()


def test_status_counts_a_folder_with_artifacts_but_no_metadata_apart(dataset):
    (dataset / "b" / "metadata.json").unlink()  # b keeps its pixel.npy
    status = dataset_status(dataset)
    assert status.with_metadata == 3 and status.counts["pixel"] == 2 and status.without_metadata == 1
    assert "Folders with artifacts but no metadata.json: 1 (not counted above; `stratum process` rebuilds it)" \
        in status.format().splitlines()


def test_status_counts_undecodable_sources_as_failed_metadata(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    for i in range(3):
        write_solid(source / f"ok{i}.png", (64, 64), (9, 9, 9))
    for i in range(4):
        (source / f"broken{i}.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert process_cli(source, out, "--passes", "pixel", "--device", "cpu") == 1
    capsys.readouterr()
    lines = dataset_status(out).format().splitlines()
    assert lines[:2] == ["Total images: 7", "metadata: 3 / 7 (42.9%)"]
    assert "  metadata: 4 (decode_error 4)" in lines
    assert [line.split(":")[0].strip() for line in lines if line.startswith("    broken")] == [
        f"broken{i}" for i in range(4)]


def test_status_of_an_interrupted_run_counts_the_sources_it_had_not_reached(tmp_path):
    from stratum_core.summary import PassStats, RunSummary

    store = Store(tmp_path)
    for i in range(80):
        store.write(f"img{i:03d}", BY_NAME["metadata"], metadata(f"img{i:03d}"))
    RunSummary(total_images=300, passes={"metadata": PassStats()}).save(store.state_dir)  # its run record
    status = dataset_status(tmp_path)
    assert (status.total_images, status.not_started) == (300, 220)
    assert status.format().splitlines()[:2] == ["Total images: 300", "metadata: 80 / 300 (26.7%)"]


def test_status_counts_registered_shards_that_never_ran(tmp_path):
    from stratum_core.shards import register_all

    source, out = tmp_path / "in", tmp_path / "out"
    for group in ("a", "b"):
        (source / group).mkdir(parents=True)
        for i in range(3):
            write_solid(source / group / f"{i}.png", (64, 64), (9, 9, 9))
    register_all(source, out)
    assert process_cli(source, out, "--passes", "pixel", "--device", "cpu",
                       "--shard-key", "a-0000") == 0
    status = dataset_status(out)
    assert (status.total_images, status.with_metadata, status.not_started) == (6, 3, 3)
    assert "Not processed yet: 3 (registered or in the last run" in status.format()


def test_status_on_the_input_folder_says_it_is_not_a_dataset(tmp_path, caplog):
    for i in range(2):
        write_solid(tmp_path / f"{i}.jpg", (64, 64), (9, 9, 9))
    assert main(["status", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a stratum dataset" in caplog.text and "it holds 2 source images" in caplog.text
