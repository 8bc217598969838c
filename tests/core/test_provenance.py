"""Provenance and staleness: what produced each artifact, what went stale, and `--redo stale` redoing exactly that."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stratum_core import provenance
from stratum_core.cli import main
from stratum_core.models import ModelLocation, ModelSpec
from stratum_core.passes.base import PassOptions
from stratum_core.passes.pixel import PixelPass
from stratum_core.status import dataset_status
from stratum_core.store import Store
from stratum_core.verify import verify
from stratum_testing import images
from stratum_testing.cli import process_cli

STRATUM = str(Path(sys.executable).parent / "stratum")
SAPIENS = "seg,depth,normal,pixel"


def process(input_dir: Path, output: Path, *extra: str) -> int:
    return process_cli(input_dir, output, "--workers", "2", "--progress-every", "3600",
                       *extra)


def stale(output: Path) -> dict[str, dict[str, int]]:
    return {p: dict(c) for p, c in dataset_status(output).provenance.stale.items()}


def mtimes(output: Path) -> dict[str, int]:
    return {str(p.relative_to(output)): p.stat().st_mtime_ns for p in output.rglob("*")
            if p.is_file() and ".stratum" not in p.parts and not p.name.startswith(".")}


def record_of(output: Path, image_id: str) -> dict:
    return provenance.read_record(Store(output), image_id)


@pytest.fixture
def input_dir(tmp_path) -> Path:
    return images.write_sources(tmp_path / "in", {"a.png": (96, 64), "b.png": (64, 96), "c.png": (50, 50)})


@pytest.fixture
def pixel_run(input_dir, tmp_path, capsys) -> Path:
    output = tmp_path / "out"
    assert process(input_dir, output, "--passes", "pixel") == 0
    return output


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two $STRATUM_MODEL_DIRs of Sapiens smoke models that differ only in the seg weights."""
    from stratum_testing.sapiens_models import build_model_dirs_with_two_seg_checkpoints

    return build_model_dirs_with_two_seg_checkpoints(tmp_path_factory.mktemp("models-a"),
                                                     tmp_path_factory.mktemp("models-b"))


@pytest.fixture
def sapiens_run(input_dir, tmp_path, model_dirs, capsys) -> Path:
    output = tmp_path / "out"
    assert process(input_dir, output, "--passes", SAPIENS, "--model-dir", str(model_dirs[0])) == 0
    return output


# ---------------------------------------------------------------- the records
def test_metadata_json_carries_the_source_fingerprint(pixel_run, input_dir):
    source = json.loads((pixel_run / "a" / "metadata.json").read_text())["source"]
    path = input_dir / "a.png"
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (source["size"], source["mtime_ns"]) == (path.stat().st_size, path.stat().st_mtime_ns)
    assert source["stratum_version"] and source["path"] == str(path.absolute())


def test_every_written_pass_has_a_provenance_entry_with_its_key_and_files(pixel_run):
    record = record_of(pixel_run, "b")
    assert set(record["passes"]) == {"metadata", "pixel"}
    entry = record["passes"]["pixel"]
    assert entry["key"] == {"version": PixelPass.version}
    assert entry["device"] == "cpu" and entry["source_sha256"] == record["source"]["sha256"]
    assert entry["files"]["pixel.npy"][0] == (pixel_run / "b" / "pixel.npy").stat().st_size


def test_a_model_pass_records_its_weights_and_precision(sapiens_run):
    key = record_of(sapiens_run, "a")["passes"]["seg"]["key"]
    assert key["model"] == "facebook/sapiens-seg-1b-torchscript" and key["precision"] == "fp32"
    assert key["weights"].startswith("sha256:")  # a $STRATUM_MODEL_DIR without Hub metadata: the files' hash


def test_a_fresh_dataset_has_nothing_stale_or_unknown(sapiens_run):
    status = dataset_status(sapiens_run).provenance
    assert not status.stale and not status.unknown and status.sources_changed == 0


def test_weights_from_the_hf_cache_are_named_by_their_commit(tmp_path):
    root = tmp_path / "models--org--m" / "snapshots" / "0123abcd"
    root.mkdir(parents=True)
    assert provenance.weights_id(ModelLocation(ModelSpec("org/m"), root, "hf_cache")) == "rev:0123abcd"


def test_weights_downloaded_to_a_local_dir_are_named_by_the_recorded_commit(tmp_path):
    meta = tmp_path / ".cache" / "huggingface" / "download" / "w.bin.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text("feedc0de\netag\n")
    (tmp_path / "w.bin").write_bytes(b"x")
    location = ModelLocation(ModelSpec("org/m", ("w.bin",)), tmp_path, "model_dir")
    assert provenance.weights_id(location) == "rev:feedc0de"


def test_weight_files_without_a_revision_are_hashed_by_content(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"one")
    location = ModelLocation(ModelSpec("org/m", ("w.bin",)), tmp_path, "model_dir")
    first = provenance.weights_id(location, tmp_path / "state")
    (tmp_path / "w.bin").write_bytes(b"other weights")
    assert provenance.weights_id(location, tmp_path / "state") != first


# ---------------------------------------------------------------- sources
def test_a_replaced_source_makes_its_artifacts_stale(pixel_run, input_dir):
    images.write_gradient(input_dir / "a.png", 64, 64, seed=9)  # same name, other picture
    status = dataset_status(pixel_run).provenance
    assert stale(pixel_run) == {"metadata": {"source changed": 1}, "pixel": {"source changed": 1}}
    assert status.sources_changed == 1 and status.stale_images["pixel"] == ["a"]


def test_redo_stale_recomputes_only_the_replaced_source(pixel_run, input_dir, capsys):
    images.write_gradient(input_dir / "a.png", 64, 64, seed=9)
    before = mtimes(pixel_run)
    assert process(input_dir, pixel_run, "--passes", "pixel", "--redo", "stale") == 0
    after = mtimes(pixel_run)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["a/metadata.json", "a/pixel.npy"]
    assert json.loads((pixel_run / "a" / "metadata.json").read_text())["width"] == 64
    assert stale(pixel_run) == {}


def test_without_redo_stale_artifacts_stay_as_they_are(pixel_run, input_dir, capsys):
    images.write_gradient(input_dir / "a.png", 64, 64, seed=9)
    before = mtimes(pixel_run)
    assert process(input_dir, pixel_run, "--passes", "pixel") == 0
    assert mtimes(pixel_run) == before
    assert stale(pixel_run)["pixel"] == {"source changed": 1}


def test_redo_all_recomputes_every_artifact(pixel_run, input_dir, capsys):
    before = mtimes(pixel_run)
    assert process(input_dir, pixel_run, "--passes", "pixel", "--redo", "all") == 0
    after = mtimes(pixel_run)
    assert all(after[name] != before[name] for name in before)


# ---------------------------------------------------------------- models, precision, upstream
def test_another_model_makes_that_pass_and_its_downstream_stale(sapiens_run, input_dir, model_dirs, capsys):
    assert process(input_dir, sapiens_run, "--passes", SAPIENS, "--model-dir", str(model_dirs[1])) == 0
    assert stale(sapiens_run) == {"seg": {"model revision changed": 3}, "depth": {"seg is stale": 3},
                                  "normal": {"seg is stale": 3}}


def test_redo_stale_after_a_model_change_recomputes_that_pass_and_its_downstream(sapiens_run, input_dir,
                                                                                  model_dirs, capsys):
    before = mtimes(sapiens_run)
    assert process(input_dir, sapiens_run, "--passes", SAPIENS, "--model-dir", str(model_dirs[1]),
                   "--redo", "stale") == 0
    after = mtimes(sapiens_run)
    changed = {name.split("/")[1] for name in after if after[name] != before[name]}
    assert changed == {"seg.npy", "depth.npy", "normal.npy"}
    assert stale(sapiens_run) == {}


def test_another_precision_makes_that_pass_and_its_downstream_stale(sapiens_run, input_dir, model_dirs, capsys):
    assert process(input_dir, sapiens_run, "--passes", "seg", "--precision", "bf16",
                   "--model-dir", str(model_dirs[0])) == 0
    assert stale(sapiens_run) == {"seg": {"precision changed": 3}, "depth": {"seg is stale": 3},
                                  "normal": {"seg is stale": 3}}


def test_a_new_seg_makes_depth_and_normal_stale(sapiens_run, input_dir, model_dirs, capsys):
    assert process(input_dir, sapiens_run, "--passes", "seg", "--redo", "all",
                   "--model-dir", str(model_dirs[0])) == 0
    assert stale(sapiens_run) == {"depth": {"seg changed": 3}, "normal": {"seg changed": 3}}


def test_a_new_caption_makes_t5_stale(tmp_path):
    """Recorded through the writer's hook with the real caption and t5 passes (no server needed to record)."""
    import numpy as np

    from stratum_core.artifacts import BY_NAME
    from stratum_core.outcomes import Outcome
    from stratum_core.passes.caption import CaptionPass
    from stratum_core.passes.t5 import T5Pass

    store, options = Store(tmp_path), PassOptions()
    caption, t5 = CaptionPass(options), T5Pass(options)

    def write_caption(text: str) -> None:
        store.write("x", BY_NAME["caption"], text)
        provenance.record(store, "x", caption, Outcome.ok(caption=text))

    write_caption("a cat")
    store.write("x", BY_NAME["t5_hidden"], np.zeros((512, 1024), np.float16))
    store.write("x", BY_NAME["t5_mask"], np.zeros(512, np.uint8))
    provenance.record(store, "x", t5, Outcome.ok())
    names = store.listing("x")
    assert provenance.stale_reasons(provenance.read_record(store, "x"), names, {}, ("caption", "t5"))[0] == {}
    write_caption("a dog")
    assert provenance.stale_reasons(provenance.read_record(store, "x"), names, {}, ("caption", "t5"))[0] == \
        {"t5": "caption changed"}


def test_another_caption_prompt_is_a_changed_key():
    from stratum_core.passes.caption import CaptionConfig, CaptionPass

    old = provenance.pass_key(CaptionPass(PassOptions()))
    new = provenance.pass_key(CaptionPass(PassOptions(), CaptionConfig(prompt="Describe the colours.")))
    assert provenance.key_reason(old, new) == "caption prompt changed"


# ---------------------------------------------------------------- status, verify, old datasets
def test_status_text_says_which_passes_are_stale_and_why(sapiens_run, input_dir, model_dirs, capsys):
    process(input_dir, sapiens_run, "--passes", SAPIENS, "--model-dir", str(model_dirs[1]))
    capsys.readouterr()
    assert main(["status", str(sapiens_run)]) == 0
    out = capsys.readouterr().out
    assert "  seg: 3 stale (model revision changed)" in out
    assert "  depth: 3 stale (seg is stale)" in out


def test_status_json_lists_the_stale_images(pixel_run, input_dir, capsys):
    images.write_gradient(input_dir / "c.png", 40, 40, seed=7)
    capsys.readouterr()
    main(["status", str(pixel_run), "--json"])
    report = json.loads(capsys.readouterr().out)["provenance"]
    assert report["stale"]["pixel"] == {"source changed": 1}
    assert report["stale_images"]["pixel"] == ["c"] and report["sources_changed"] == 1


def test_a_dataset_without_records_is_unknown_never_stale(pixel_run, input_dir, capsys):
    for record in pixel_run.rglob(provenance.RECORD_NAME):
        record.unlink()
    images.write_gradient(input_dir / "a.png", 64, 64, seed=9)
    status = dataset_status(pixel_run).provenance
    assert dict(status.unknown) == {"metadata": 3, "pixel": 3} and not status.stale
    before = mtimes(pixel_run)
    assert process(input_dir, pixel_run, "--passes", "pixel", "--redo", "stale") == 0
    assert mtimes(pixel_run) == before


def test_verify_reports_an_artifact_replaced_after_its_record(pixel_run):
    time.sleep(0.01)
    (pixel_run / "a" / "metadata.json").write_text(json.dumps(
        {"image_id": "a", "source_path": "a.png", "width": 96, "height": 64, "aspect_bucket": "1216x832"}))
    report = verify(pixel_run)
    assert [(p.image_id, p.filename) for p in report.problems] == [("a", "metadata.json")]
    assert "changed since its provenance record" in report.problems[0].message


def test_verify_reports_an_artifact_the_record_names_but_is_missing(pixel_run):
    (pixel_run / "b" / "pixel.npy").unlink()
    problems = verify(pixel_run).problems
    assert [(p.image_id, p.filename, "missing" in p.message) for p in problems] == [("b", "pixel.npy", True)]


def test_concurrent_writers_of_one_image_lose_no_entries(tmp_path):
    """Two runs of different passes over one image (Dagster's per-pass jobs): every entry survives."""
    store = Store(tmp_path)
    passes = [type(f"P{i}", (PixelPass,), {"name": f"p{i}"})(PassOptions()) for i in range(8)]

    def write(p) -> None:
        for _ in range(10):
            provenance.record(store, "x", p, None)

    threads = [threading.Thread(target=write, args=(p,)) for p in passes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(provenance.read_record(store, "x")["passes"]) == {p.name for p in passes}


# ---------------------------------------------------------------- crashes
def _kill_when(cmd: list[str], ready) -> None:
    """Start `cmd` and SIGKILL it as soon as `ready()` holds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _entry_describes_files_or_is_pending(output: Path) -> None:
    store = Store(output)
    for record_path in output.rglob(provenance.RECORD_NAME):
        image_id = record_path.parent.relative_to(output).as_posix()
        names = store.listing(image_id)
        assert provenance.check_record(store, image_id, names) == []  # no record without its artifacts
        for name, entry in provenance.read_record(store, image_id)["passes"].items():
            if not entry.get("pending"):  # a final entry names exactly the files on disk
                for filename, (size, mtime_ns) in entry["files"].items():
                    st = os.stat(output / image_id / filename)
                    assert (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


@pytest.fixture
def many_sources(tmp_path) -> Path:
    root = tmp_path / "many"
    for i in range(24):
        images.write_gradient(root / f"{i:03d}.png", 64 + i, 48, seed=i)
    return root


def test_provenance_survives_sigkill_mid_run(many_sources, tmp_path):
    output = tmp_path / "out"
    cmd = [STRATUM, "process", str(many_sources), "-o", str(output), "--passes", "pixel", "--workers", "1",
           "--batch-size", "1", "--progress-every", "3600"]
    _kill_when(cmd, lambda: sum(1 for _ in output.rglob("pixel.npy")) >= 6)
    _entry_describes_files_or_is_pending(output)
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    # Killed between an image's artifacts and its record: stale for that reason, never trusted.
    assert all(set(reasons) <= {provenance.NO_RECORD, provenance.INTERRUPTED} for reasons in stale(output).values())
    assert subprocess.run(cmd + ["--redo", "stale"], capture_output=True, timeout=120).returncode == 0
    assert stale(output) == {} and verify(output).ok


def test_provenance_survives_sigkill_mid_redo(many_sources, tmp_path):
    output = tmp_path / "out"
    cmd = [STRATUM, "process", str(many_sources), "-o", str(output), "--passes", "pixel", "--workers", "1",
           "--batch-size", "1", "--progress-every", "3600"]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    before = mtimes(output)

    def some_redone() -> bool:
        return sum(1 for name, t in mtimes(output).items() if name.endswith("pixel.npy") and t != before[name]) >= 4

    _kill_when(cmd + ["--redo", "all"], some_redone)
    _entry_describes_files_or_is_pending(output)
    interrupted = stale(output)
    assert interrupted and set(interrupted) <= {"metadata", "pixel"}
    assert all(set(reasons) == {provenance.INTERRUPTED} for reasons in interrupted.values())
    assert subprocess.run(cmd + ["--redo", "stale"], capture_output=True, timeout=120).returncode == 0
    assert stale(output) == {} and verify(output).ok


# ---------------------------------------------------------------- publish
def test_a_layers_provenance_names_its_model_revision_and_pass_version(sapiens_run):
    layer = provenance.layer_provenance(sapiens_run, ["a", "b", "c"], "seg")
    assert layer["model"] == "facebook/sapiens-seg-1b-torchscript" and layer["weights"].startswith("sha256:")
    assert (layer["version"], layer["images"], layer["unknown"]) == ("1", 3, 0) and "variants" not in layer


def test_a_layer_of_mixed_model_revisions_is_refused_unless_allowed(sapiens_run, input_dir, model_dirs, tmp_path,
                                                                    capsys):
    from stratum_core.errors import ConfigError

    listing = tmp_path / "list.txt"
    listing.write_text(f"{input_dir / 'a.png'}\n")  # only image a is redone, with the other seg model
    assert process(input_dir, sapiens_run, "--passes", "seg", "--model-dir", str(model_dirs[1]),
                   "--image-list", str(listing), "--redo", "all") == 0
    with pytest.raises(ConfigError, match="mixes 2 model revisions"):
        provenance.layer_provenance(sapiens_run, ["a", "b", "c"], "seg")
    layer = provenance.layer_provenance(sapiens_run, ["a", "b", "c"], "seg", allow_mixed=True)
    assert sorted(v["images"] for v in layer["variants"]) == [1, 2]

