"""The run engine through `stratum process`: artifacts, failures, idempotence, pass errors, batching."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from stratum_core import passes as pass_registry
from stratum_core.discover import discover
from stratum_core.engine import Engine, RunConfig
from stratum_core.errors import InfrastructureError, is_out_of_memory
from stratum_core.intake import decode
from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Pass, PassOptions
from stratum_core.passes.metadata import MetadataPass
from stratum_core.passes.pixel import PixelPass
from stratum_core.progress import Progress
from stratum_core.store import Store
from stratum_testing import images
from stratum_testing.cli import process_cli


@pytest.fixture
def input_dir(tmp_path) -> Path:
    sizes = {"land.jpg": (96, 64), "sub/port.png": (64, 96), "square.png": (50, 50)}
    return images.write_sources(tmp_path / "in", sizes)


def process(input_dir: Path, output: Path, *extra: str) -> int:
    return process_cli(input_dir, output, "--workers", "2", "--progress-every", "3600",
                       *extra)


def test_pixel_run_writes_metadata_with_exact_keys(input_dir, tmp_path, capsys):
    assert process(input_dir, tmp_path / "out", "--passes", "pixel") == 0
    metadata = json.loads((tmp_path / "out" / "sub" / "port" / "metadata.json").read_text())
    metadata.pop("source")  # the source fingerprint (tests/core/test_provenance.py)
    assert metadata == {"image_id": "sub/port", "source_path": "sub/port.png", "width": 64, "height": 96,
                        "aspect_bucket": "832x1216"}


def test_pixel_npy_is_the_crop_over_255(input_dir, tmp_path, capsys):
    process(input_dir, tmp_path / "out", "--passes", "pixel")
    pixel = np.load(tmp_path / "out" / "land" / "pixel.npy")
    crop = decode(input_dir / "land.jpg").crop
    assert pixel.dtype == np.float16 and pixel.shape == (3, 832, 1216)
    np.testing.assert_allclose(pixel.astype(np.float32), crop.transpose(2, 0, 1) / 255.0, atol=1e-3)


def test_run_writes_a_run_record(input_dir, tmp_path, capsys):
    process(input_dir, tmp_path / "out", "--passes", "pixel")
    (record_path,) = (tmp_path / "out" / ".stratum" / "runs").iterdir()
    record = json.loads(record_path.read_text())
    assert record["total_images"] == 3 and record["failed"] == 0
    assert record["passes"]["pixel"]["done"] == 3


def test_metadata_only_run_writes_no_pixels(input_dir, tmp_path, capsys):
    assert process(input_dir, tmp_path / "out", "--passes", "metadata") == 0
    assert sorted(os.listdir(tmp_path / "out" / "square")) == [".provenance.json", "metadata.json"]


def test_a_failing_image_never_stops_the_others(input_dir, tmp_path, capsys):
    images.write_truncated(input_dir / "broken.jpg")
    code = process(input_dir, tmp_path / "out", "--passes", "pixel")
    out = capsys.readouterr().out
    assert code == 1
    assert "broken [metadata] decode_error" in out
    assert "FAILED 1" in out
    assert sorted(p.parent.name for p in (tmp_path / "out").rglob("pixel.npy")) == ["land", "port", "square"]


def test_second_run_does_no_work_and_says_so(input_dir, tmp_path, capsys):
    process(input_dir, tmp_path / "out", "--passes", "pixel")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.npy")}
    capsys.readouterr()
    assert process(input_dir, tmp_path / "out", "--passes", "pixel") == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out
    assert "pixel     done 0, existing 3" in out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.npy")} == stamps


def test_adding_a_pass_later_keeps_existing_metadata(input_dir, tmp_path, capsys):
    process(input_dir, tmp_path / "out", "--passes", "metadata")
    capsys.readouterr()
    process(input_dir, tmp_path / "out", "--passes", "pixel")
    out = capsys.readouterr().out
    assert "metadata  done 0, existing 3" in out and "pixel     done 3, existing 0" in out


def test_a_later_success_clears_the_failure_record(input_dir, tmp_path, capsys):
    images.write_zero_byte(input_dir / "late.png")
    process(input_dir, tmp_path / "out", "--passes", "metadata")
    assert (tmp_path / "out" / "late" / ".failed-metadata.json").exists()
    images.write_gradient(input_dir / "late.png", 32, 32)
    assert process(input_dir, tmp_path / "out", "--passes", "metadata") == 0
    assert sorted(os.listdir(tmp_path / "out" / "late")) == [".provenance.json", "metadata.json"]


def test_unknown_pass_is_an_error_before_any_work(input_dir, tmp_path, caplog):
    assert process(input_dir, tmp_path / "out", "--passes", "pixel,bogus") == 2
    assert "unknown pass 'bogus'" in caplog.text
    assert not (tmp_path / "out").exists()


def test_unimplemented_model_pass_says_not_available(input_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(pass_registry.REGISTRY, "dinov3", "stratum_core.passes.no_such_module:Missing")
    assert process(input_dir, tmp_path / "out", "--passes", "dinov3", "--device", "cpu") == 2
    assert "the dinov3 pass is not available" in caplog.text
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- engine internals, with spy passes

def engine_run(input_dir: Path, output: Path, extra_passes: list[Pass], batch_size: int = 2):
    found = discover(input_dir)
    options = PassOptions()
    config = RunConfig(output_dir=output, passes=("metadata",), workers=2,
                       options=PassOptions(batch_size=batch_size))
    engine = Engine(config, [MetadataPass(options), *extra_passes])
    return engine.run(found.images, found.errors, Progress(len(found.images), every=3600))


class RecordingPixelPass(PixelPass):
    """The pixel pass, noting the buckets of every batch it is handed."""

    def __init__(self, options):
        super().__init__(options)
        self.batches: list[list[str]] = []

    def forward(self, batch):
        self.batches.append([item.bucket.label for item in batch])
        return super().forward(batch)


def test_batches_hold_one_bucket_each(input_dir, tmp_path):
    for i in range(3):
        images.write_gradient(input_dir / f"more_land_{i}.png", 90, 60)
    spy = RecordingPixelPass(PassOptions())
    engine_run(input_dir, tmp_path / "out", [spy], batch_size=2)
    assert all(len(set(batch)) == 1 for batch in spy.batches)
    assert sorted(b for batch in spy.batches for b in batch).count("1216x832") == 4
    assert max(len(batch) for batch in spy.batches) == 2


class ExplodingPixelPass(PixelPass):
    def forward(self, batch):
        if any(item.image_id == "square" for item in batch):
            raise RuntimeError("boom")
        return super().forward(batch)


def test_a_pass_error_fails_its_batch_and_the_run_goes_on(input_dir, tmp_path):
    summary = engine_run(input_dir, tmp_path / "out", [ExplodingPixelPass(PassOptions())], batch_size=1)
    assert [(f.image, f.pass_name, f.reason) for f in summary.failures] == [("square", "pixel", "inference_error")]
    assert summary.passes["pixel"].done == 2
    assert json.loads((tmp_path / "out" / "square" / ".failed-pixel.json").read_text())["message"] == \
        "RuntimeError: boom"


TORCHSCRIPT_OOM = ("The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript "
                   "(most recent call last):\nRuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")


class OutOfMemoryAbovePixelPass(PixelPass):
    """Runs out of device memory on batches larger than `fits` (as a TorchScript model reports it)."""

    def __init__(self, options, fits: int):
        super().__init__(options)
        self.fits, self.sizes = fits, []

    def forward(self, batch):
        self.sizes.append(len(batch))
        if len(batch) > self.fits:
            raise RuntimeError(TORCHSCRIPT_OOM)
        return super().forward(batch)


def test_out_of_memory_halves_the_batch_and_the_run_completes(input_dir, tmp_path):
    for i in range(9):
        images.write_gradient(input_dir / "more" / f"{i}.png", 50, 50, seed=i)
    oom = OutOfMemoryAbovePixelPass(PassOptions(), fits=2)
    summary = engine_run(input_dir, tmp_path / "out", [oom], batch_size=8)
    assert summary.failures == [] and summary.passes["pixel"].done == 12
    # 8 square images: 8 fails, 4 fails, then 2s; the limit holds for the rest of the run.
    assert oom.sizes[:6] == [8, 4, 2, 2, 2, 2] and max(oom.sizes[6:]) <= 2
    assert oom.provenance()["batch_size_after_out_of_memory"] == 2


def test_out_of_memory_at_batch_one_stops_the_run(input_dir, tmp_path):
    with pytest.raises(InfrastructureError, match="out of GPU memory even at batch 1"):
        engine_run(input_dir, tmp_path / "out", [OutOfMemoryAbovePixelPass(PassOptions(), fits=0)])


@pytest.mark.parametrize("message, expected", [
    (TORCHSCRIPT_OOM, True),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory", True),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer", True),
    ("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)", False),
])
def test_out_of_memory_is_recognised_however_it_is_reported(message, expected):
    assert is_out_of_memory(RuntimeError(message)) is expected


class DeadServerPass(PixelPass):
    def forward(self, batch):
        raise InfrastructureError("server down")


def test_an_infrastructure_error_stops_the_run(input_dir, tmp_path):
    with pytest.raises(InfrastructureError, match="server down"):
        engine_run(input_dir, tmp_path / "out", [DeadServerPass(PassOptions())])


class MissingWeightsPass(PixelPass):
    def load(self):
        raise InfrastructureError("model x not found")


def test_missing_weights_stop_the_run_before_any_artifact_is_written(input_dir, tmp_path):
    with pytest.raises(InfrastructureError, match="model x not found"):
        engine_run(input_dir, tmp_path / "out", [MissingWeightsPass(PassOptions())])
    written = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and ".stratum" not in p.parts]
    assert written == []


def test_progress_stops_reporting_when_the_run_fails(input_dir, tmp_path):
    progress = Progress(3, every=0.0)
    with pytest.raises(InfrastructureError):
        Engine(RunConfig(tmp_path / "out", ("metadata", "pixel")), [MissingWeightsPass(PassOptions())]).run(
            discover(input_dir).images, progress=progress)
    assert progress.count == 0


def test_groups_are_larger_on_a_gpu_unless_a_batch_size_is_given(tmp_path):
    assert RunConfig(tmp_path, ("metadata",)).group_size == 8
    assert RunConfig(tmp_path, ("metadata",), PassOptions(device="cuda:0")).group_size == 32
    assert RunConfig(tmp_path, ("metadata",), PassOptions(device="cuda:0", batch_size=4)).group_size == 4


class FakeT5Pass(Pass):
    name = "t5"
    reads = ("caption",)
    uses_image = False

    def forward(self, batch):
        return batch

    def postprocess(self, outputs, items):
        return [Outcome.ok(t5_hidden=np.zeros((512, 1024), np.float16), t5_mask=np.zeros(512, np.uint8))
                for _ in items]


def test_a_pass_whose_input_is_missing_skips_with_the_reason(input_dir, tmp_path):
    summary = engine_run(input_dir, tmp_path / "out", [FakeT5Pass(PassOptions())])
    assert dict(summary.passes["t5"].skipped) == {"missing_input": 3}
    assert summary.exit_code == 0
    assert not list((tmp_path / "out").rglob("t5_*.npy"))


def test_a_pass_reads_its_input_from_disk(input_dir, tmp_path):
    engine_run(input_dir, tmp_path / "out", [])
    (tmp_path / "out" / "square" / "caption.txt").write_text("a square")
    summary = engine_run(input_dir, tmp_path / "out", [FakeT5Pass(PassOptions())])
    assert summary.passes["t5"].done == 1
    assert (tmp_path / "out" / "square" / "t5_mask.npy").exists()


def test_a_non_image_pass_reuses_metadata_without_decoding(input_dir, tmp_path, monkeypatch):
    engine_run(input_dir, tmp_path / "out", [])
    for rel in ("land", "sub/port", "square"):
        (tmp_path / "out" / rel / "caption.txt").write_text("words")
    monkeypatch.setattr("stratum_core.engine.decode", lambda path: pytest.fail("decoded"))
    summary = engine_run(input_dir, tmp_path / "out", [FakeT5Pass(PassOptions())])
    assert summary.passes["t5"].done == 3


def test_each_image_is_decoded_once_per_run_for_every_pass(input_dir, tmp_path, monkeypatch):
    calls: list[str] = []

    def counting_decode(path):
        calls.append(Path(path).name)
        return decode(path)

    monkeypatch.setattr("stratum_core.engine.decode", counting_decode)
    summary = engine_run(input_dir, tmp_path / "out", [PixelPass(PassOptions())])  # metadata + pixel
    assert sorted(calls) == ["land.jpg", "port.png", "square.png"]
    assert summary.passes["pixel"].done == 3 and summary.passes["metadata"].done == 3


def test_decoding_runs_only_a_bounded_way_ahead_of_a_slow_writer(tmp_path, monkeypatch):
    # Memory must not grow with the dataset: with a slow disk, decodes wait instead of piling up.
    root = images.write_sources(tmp_path / "in", images.numbered(80, (16, 16), "{:02d}.png"))
    decoded, written, ahead = [0], [0], []
    real_write = Store.write

    def counting_decode(path):
        decoded[0] += 1
        ahead.append(decoded[0] - written[0])
        return decode(path)

    def slow_write(self, image_id, artifact, value):
        time.sleep(0.005)
        if artifact.name == "pixel":
            written[0] += 1
        return real_write(self, image_id, artifact, value)

    monkeypatch.setattr("stratum_core.engine.decode", counting_decode)
    monkeypatch.setattr(Store, "write", slow_write)
    summary = engine_run(root, tmp_path / "out", [PixelPass(PassOptions())], batch_size=2)
    assert summary.passes["pixel"].done == 80
    # prefetch (4) + a forming group (2) + 4 queued batches (8) + one in a lane (2) + the writer queue (8)
    assert max(ahead) <= 24


class BigBatchPixelPass(RecordingPixelPass):
    """A pass whose load() picks a batch of 20 (as GPU passes do from free memory)."""

    def load(self):
        super().load()
        self.chosen_batch = 20


def batch_sizes_of_a_big_batch_pass(tmp_path: Path, n_images: int, batch_size: int | None) -> list[int]:
    """Run metadata + BigBatchPixelPass over `n_images` same-bucket images; the batch sizes it saw."""
    root = images.write_sources(tmp_path / "in", images.numbered(n_images, (16, 16), "{:02d}.png"))
    found = discover(root)
    recording = BigBatchPixelPass(PassOptions())
    config = RunConfig(output_dir=tmp_path / "out", passes=("metadata",), workers=2,
                       options=PassOptions(batch_size=batch_size))
    Engine(config, [MetadataPass(PassOptions()), recording]).run(found.images, found.errors,
                                                                 Progress(n_images, every=3600))
    return [len(b) for b in recording.batches]


def test_groups_grow_to_the_batch_a_pass_chose(tmp_path):
    # CPU default group: 8. The pass is loaded before the first image's metadata.json is written (so
    # missing weights stop the run before any file), so even the first group has its chosen size, 20.
    assert batch_sizes_of_a_big_batch_pass(tmp_path, 50, batch_size=None) == [20, 20, 10]


def test_an_explicit_batch_size_keeps_its_groups(tmp_path):
    assert batch_sizes_of_a_big_batch_pass(tmp_path, 12, batch_size=4) == [4, 4, 4]


def test_two_runs_in_one_second_keep_both_run_records(input_dir, tmp_path):
    for _ in range(2):
        summary = engine_run(input_dir, tmp_path / "out", [])
        summary.started = 1_700_000_000.0  # the same second
        summary.save(tmp_path / "out" / ".stratum")
    assert len(list((tmp_path / "out" / ".stratum" / "runs").iterdir())) == 2


class SegNeedingPass(PixelPass):
    name = "depth"
    reads = ("seg",)

    def postprocess(self, outputs, items):
        return [Outcome.ok(depth=np.zeros((i.bucket.height, i.bucket.width), np.float16)) for i in items]


def test_an_unreadable_input_artifact_fails_that_image_only(input_dir, tmp_path):
    out = tmp_path / "out"
    for image_id, bucket in (("land", (832, 1216)), ("square", (1024, 1024))):
        (out / image_id).mkdir(parents=True)
        np.save(out / image_id / "seg.npy", np.zeros(bucket, np.uint8))
    (out / "square" / "seg.npy").write_bytes(b"")  # a 0-byte file, e.g. from a full disk elsewhere
    summary = engine_run(input_dir, out, [SegNeedingPass(PassOptions())])
    assert summary.passes["depth"].done == 1
    assert [(f.image, f.reason) for f in summary.failures] == [("square", "bad_input")]
    assert dict(summary.passes["depth"].skipped) == {"missing_input": 1}  # sub/port has no seg at all


class WrongDtypePixelPass(PixelPass):
    def postprocess(self, outputs, items):
        return [Outcome.ok(pixel=a.astype(np.float32)) for a in outputs]


def test_an_output_that_breaks_the_artifact_table_is_not_written(input_dir, tmp_path):
    summary = engine_run(input_dir, tmp_path / "out", [WrongDtypePixelPass(PassOptions())])
    assert summary.passes["pixel"].done == 0
    assert {f.reason for f in summary.failures} == {"inference_error"}
    assert "dtype float32 != float16" in summary.failures[0].message
    assert not list((tmp_path / "out").rglob("pixel.npy"))


def test_a_source_that_stops_decoding_fails_the_passes_that_needed_it(input_dir, tmp_path):
    out = tmp_path / "out"
    engine_run(input_dir, out, [])  # metadata for every image
    original = (input_dir / "square.png").read_bytes()
    (input_dir / "square.png").write_bytes(b"garbage")
    summary = engine_run(input_dir, out, [PixelPass(PassOptions())])
    assert [(f.image, f.pass_name) for f in summary.failures] == [("square", "pixel")]
    assert not (out / "square" / ".failed-metadata.json").exists()
    (input_dir / "square.png").write_bytes(original)
    summary = engine_run(input_dir, out, [PixelPass(PassOptions())])
    assert summary.failures == [] and not (out / "square" / ".failed-pixel.json").exists()


def test_an_interrupt_stops_the_run_and_leaves_no_thread_behind(input_dir, tmp_path, monkeypatch):
    import threading

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "_dispatch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine_run(input_dir, tmp_path / "out", [PixelPass(PassOptions())])
    assert not [t.name for t in threading.enumerate() if t.name.startswith("stratum-")]


class ScratchMakingPass(PixelPass):
    scratch_keys = ("shared",)

    def preprocess(self, item):
        item.scratch["shared"] = object()
        item.scratch["kept"] = 1
        return super().preprocess(item)


def test_a_lane_drops_the_scratch_its_passes_declared_once_done_with_a_batch(input_dir, tmp_path, monkeypatch):
    seen = []
    real = Engine._drop_scratch

    def spy(lane, batch):
        real(lane, batch)
        seen.extend(dict(item.scratch) for item in batch.items)

    monkeypatch.setattr(Engine, "_drop_scratch", staticmethod(spy))
    engine_run(input_dir, tmp_path / "out", [ScratchMakingPass(PassOptions())])
    assert seen and all(scratch == {"kept": 1} for scratch in seen)
