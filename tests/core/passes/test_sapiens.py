"""The seg, depth and normal passes against smoke TorchScript checkpoints with predictable outputs."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from stratum_core import cli  # noqa: E402
from stratum_core.buckets import Bucket  # noqa: E402
from stratum_core.discover import SourceImage, discover  # noqa: E402
from stratum_core.engine import Engine, RunConfig  # noqa: E402
from stratum_core.errors import InfrastructureError  # noqa: E402
from stratum_core.intake import decode  # noqa: E402
from stratum_core.passes import parse_passes, sapiens  # noqa: E402
from stratum_core.passes.base import Item, PassOptions  # noqa: E402
from stratum_core.passes.sapiens import (SapiensDepthPass, SapiensNormalPass, SapiensSegPass,  # noqa: E402
                                         scale_depth)
from stratum_core.store import Store  # noqa: E402
from stratum_core.verify import verify  # noqa: E402
from stratum_testing.cli import process_cli  # noqa: E402
from stratum_testing.sapiens_models import (GREY, RED, RED_CLASS, build_sapiens_models, model_path,  # noqa: E402
                                        normalised, save_scripted, write_not_torchscript)

torch.set_num_threads(1)

SQUARE, TALL = Bucket(1024, 1024), Bucket(832, 1216)
MARGIN = 2  # pixels of interpolation slack at the rectangle's edges


def red_box(bucket: Bucket) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the red rectangle, deliberately off-centre and off-grid."""
    return (round(bucket.width * 0.23) + 1, round(bucket.height * 0.31) + 3,
            round(bucket.width * 0.61) - 2, round(bucket.height * 0.87) + 1)


def picture(bucket: Bucket) -> np.ndarray:
    """A grey image of exactly the bucket's size (so the crop is the image) with the red box."""
    pixels = np.full((bucket.height, bucket.width, 3), GREY, np.uint8)
    left, top, right, bottom = red_box(bucket)
    pixels[top:bottom, left:right] = RED
    return pixels


def write_images(folder: Path, buckets=(SQUARE, TALL)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for bucket in buckets:
        Image.fromarray(picture(bucket)).save(folder / f"img_{bucket.label}.png")
    return folder


@pytest.fixture(scope="module")
def model_dir(sapiens_model_dir) -> Path:
    return sapiens_model_dir


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


def run_engine(input_dir: Path, output_dir: Path, passes: str, model_dir: Path, **options):
    config = RunConfig(output_dir=output_dir, passes=parse_passes(passes),
                       options=PassOptions(model_dir=model_dir, **options), workers=1, progress_every=1e9)
    return Engine(config).run(discover(input_dir, None, None).images)


@pytest.fixture(scope="module")
def full_run(input_dir, model_dir, tmp_path_factory):
    """seg, depth and normal in one engine run over the square and the tall image."""
    output_dir = tmp_path_factory.mktemp("out")
    summary = run_engine(input_dir, output_dir, "seg,depth,normal", model_dir)
    store = Store(output_dir)
    arrays = {}
    for source in discover(input_dir, None, None).images:
        bucket = Bucket.parse(source.rel_path.split("_")[1].split(".")[0])
        arrays[bucket] = {name: np.load(store.image_dir(source.image_id) / f"{name}.npy")
                          for name in ("seg", "depth", "normal")}
    return summary, output_dir, arrays


def item_for(path: Path) -> Item:
    return Item(SourceImage(path.name, path), decode(path))


# ---------------------------------------------------------------------- seg geometry
@pytest.mark.parametrize("bucket", [SQUARE, TALL], ids=lambda b: b.label)
def test_seg_marks_the_red_rectangle_where_it_is(bucket, input_dir, model_dir):
    seg_pass = SapiensSegPass(PassOptions(model_dir=model_dir))
    seg_pass.load()
    [outcome] = seg_pass.run_batch([item_for(input_dir / f"img_{bucket.label}.png")])
    seg = outcome.values["seg"]
    left, top, right, bottom = red_box(bucket)
    assert seg.shape == (bucket.height, bucket.width) and seg.dtype == np.uint8
    assert (seg[top + MARGIN:bottom - MARGIN, left + MARGIN:right - MARGIN] == RED_CLASS).all()
    outside = np.ones_like(seg, bool)
    outside[top - MARGIN:bottom + MARGIN, left - MARGIN:right + MARGIN] = False
    assert (seg[outside] == 0).all()
    assert set(np.unique(seg)) == {0, RED_CLASS}


def test_seg_batches_images_of_different_buckets(input_dir, model_dir):
    seg_pass = SapiensSegPass(PassOptions(model_dir=model_dir, batch_size=4))
    seg_pass.load()
    items = [item_for(input_dir / f"img_{b.label}.png") for b in (SQUARE, TALL)]
    square, tall = (o.values["seg"] for o in seg_pass.run_batch(items))
    assert square.shape == (1024, 1024) and tall.shape == (1216, 832)
    left, top, right, bottom = red_box(TALL)
    assert tall[(top + bottom) // 2, (left + right) // 2] == RED_CLASS


def test_seg_in_bf16_finds_the_same_rectangle(input_dir, model_dir):
    seg_pass = SapiensSegPass(PassOptions(model_dir=model_dir, precision="bf16"))
    seg_pass.load()
    [outcome] = seg_pass.run_batch([item_for(input_dir / f"img_{SQUARE.label}.png")])
    left, top, right, bottom = red_box(SQUARE)
    assert (outcome.values["seg"][top + MARGIN:bottom - MARGIN, left + MARGIN:right - MARGIN] == RED_CLASS).all()
    assert seg_pass.provenance()["precision"] == "bf16" and seg_pass.provenance()["autocast"] is False


class Float32Inside(torch.nn.Module):
    """Casts its input to float32 like a graph traced with a dtype constant: bf16 weights reject it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 28, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.to(torch.float32))


def test_bf16_falls_back_to_autocast_when_cast_weights_fail(input_dir, tmp_path):
    path = save_scripted(Float32Inside(), tmp_path / "fp32_inside.pt2")
    seg_pass = SapiensSegPass(PassOptions(model_paths={"seg": path}, precision="bf16"))
    seg_pass.load()
    [outcome] = seg_pass.run_batch([item_for(input_dir / f"img_{SQUARE.label}.png")])
    assert outcome.status == "ok" and outcome.values["seg"].shape == (1024, 1024)
    assert seg_pass.provenance()["autocast"] is True


class Raises:
    """A stand-in TorchScript model whose every call raises `error` (its `.to` keeps it)."""

    def __init__(self, error: RuntimeError):
        self.error = error

    def to(self, dtype):
        return self

    def __call__(self, x):
        raise self.error


WRAPPED_OOM = ("The following operation failed in the TorchScript interpreter.\n"
               "Traceback of TorchScript (most recent call last):\n"
               "    x = torch.to(input, dtype=6)  # quoted model code mentions dtypes\n"
               "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("message", ["CUDA out of memory. Tried to allocate 2.00 GiB", WRAPPED_OOM,
                                     "shape '[1, 3, 64, 48]' is invalid for input of size 9216"],
                         ids=["oom", "torchscript-oom", "shape"])
def test_an_error_that_is_not_a_dtype_mismatch_propagates_without_a_second_copy(message, tmp_path,
                                                                               monkeypatch):
    reloads = []
    monkeypatch.setattr(sapiens, "load_torchscript", lambda *a: reloads.append(a))
    with pytest.raises(RuntimeError) as error:
        sapiens.lower_precision(Raises(RuntimeError(message)), tmp_path / "seg.pt2", "cpu", torch.bfloat16)
    assert str(error.value) == message and reloads == []


def test_a_dtype_mismatch_quoted_by_torchscript_is_recognised():
    error = RuntimeError("The following operation failed in the TorchScript interpreter.\n"
                         "    return self.conv(x)\n"
                         "RuntimeError: Input type (float) and bias type (c10::BFloat16) should be the same")
    assert sapiens.is_dtype_mismatch(error)


def test_the_auto_batch_estimate_doubles_at_fp32(model_dir, monkeypatch):
    monkeypatch.setattr(sapiens.torch_utils, "free_device_memory", lambda device: 30 * 2**30)
    chosen = {}
    for precision in ("bf16", "fp32"):
        seg_pass = SapiensSegPass(PassOptions(model_dir=model_dir, precision=precision))
        seg_pass.load()
        chosen[precision] = seg_pass.chosen_batch
    assert chosen == {"bf16": 14, "fp32": 7}  # 70% of 30 GiB over 1.5 GiB and 3 GiB per image


# ---------------------------------------------------------------------- depth and normal
@pytest.mark.parametrize("bucket", [SQUARE, TALL], ids=lambda b: b.label)
def test_depth_and_normal_are_zero_exactly_where_seg_is_background(bucket, full_run):
    arrays = full_run[2][bucket]
    background = arrays["seg"] == 0
    assert background.any() and (~background).any()
    assert (arrays["depth"][background] == 0).all()
    assert (arrays["normal"][background] == 0).all()


@pytest.mark.parametrize("bucket", [SQUARE, TALL], ids=lambda b: b.label)
def test_depth_is_foreground_min_max_scaled(bucket, full_run):
    depth, seg = full_run[2][bucket]["depth"], full_run[2][bucket]["seg"]
    assert depth.dtype == np.float16 and depth.shape == (bucket.height, bucket.width)
    assert np.isfinite(depth).all()
    foreground = depth[seg > 0]
    assert foreground.min() == 0.0 and foreground.max() == 1.0
    # the smoke depth is the column position: it rises left to right across the rectangle
    left, top, right, bottom = red_box(bucket)
    row = depth[(top + bottom) // 2, left + MARGIN:right - MARGIN].astype(np.float32)
    assert (np.diff(row) >= 0).all() and row[0] < 0.02 and row[-1] > 0.98


@pytest.mark.parametrize("bucket", [SQUARE, TALL], ids=lambda b: b.label)
def test_normals_are_unit_on_foreground_and_point_like_the_model(bucket, full_run):
    normal, seg = full_run[2][bucket]["normal"], full_run[2][bucket]["seg"]
    assert normal.dtype == np.float16 and normal.shape == (bucket.height, bucket.width, 3)
    assert np.isfinite(normal).all()
    lengths = np.linalg.norm(normal[seg > 0].astype(np.float32), axis=-1)
    assert np.abs(lengths - 1).max() < 2e-3
    left, top, right, bottom = red_box(bucket)
    expected = np.array(normalised(RED)) / np.linalg.norm(normalised(RED))
    centre = normal[(top + bottom) // 2, (left + right) // 2].astype(np.float32)
    np.testing.assert_allclose(centre, expected, atol=2e-3)


def test_full_run_counts_every_artifact_and_verifies(full_run):
    summary, output_dir, _ = full_run
    for name in ("seg", "depth", "normal"):
        assert summary.passes[name].done == 2
    report = verify(output_dir, fix=False)
    assert report.ok, report.format()


def test_flat_foreground_depth_gives_zeros(input_dir, tmp_path):
    flat_models = tmp_path / "models"
    build_sapiens_models(flat_models, flat_depth=True)
    summary = run_engine(input_dir, tmp_path / "out", "seg,depth", flat_models)
    assert summary.passes["depth"].done == 2
    for image_dir in (tmp_path / "out").rglob("depth.npy"):
        depth = np.load(image_dir)
        assert np.isfinite(depth).all() and (depth == 0).all()


def test_scale_depth_of_empty_foreground_is_zeros():
    depth = torch.rand(2, 1, 8, 6)
    scaled = scale_depth(depth, torch.zeros(2, 8, 6, dtype=torch.bool))
    assert torch.equal(scaled, torch.zeros(2, 8, 6))


# ---------------------------------------------------------------------- runs and errors
class NanSeg(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 28, 8, 6), float("nan"))


def test_non_finite_model_output_fails_the_image(input_dir, tmp_path):
    path = save_scripted(NanSeg(), tmp_path / "nan.pt2")
    seg_pass = SapiensSegPass(PassOptions(model_paths={"seg": path}))
    seg_pass.load()
    [outcome] = seg_pass.run_batch([item_for(input_dir / f"img_{SQUARE.label}.png")])
    assert (outcome.status, outcome.reason) == ("failed", "inference_error")


def test_depth_without_seg_is_skipped_and_counted(input_dir, model_dir, tmp_path):
    summary = run_engine(input_dir, tmp_path, "depth,normal", model_dir)
    for name in ("depth", "normal"):
        assert summary.passes[name].done == 0
        assert summary.passes[name].skipped["missing_input"] == 2
    assert not list(tmp_path.rglob("depth.npy")) and not list(tmp_path.rglob("normal.npy"))


def test_depth_reads_seg_from_disk_in_a_later_run(input_dir, model_dir, tmp_path):
    run_engine(input_dir, tmp_path, "seg", model_dir)
    summary = run_engine(input_dir, tmp_path, "depth", model_dir)
    assert summary.passes["depth"].done == 2 and not summary.passes["depth"].skipped


def test_one_run_preprocesses_each_crop_once_and_keeps_seg_in_memory(input_dir, model_dir, tmp_path,
                                                                     monkeypatch):
    calls, reads = [], []
    real_prepare, real_read = sapiens.prepare_input, Store.read
    monkeypatch.setattr(sapiens, "prepare_input", lambda *a: calls.append(1) or real_prepare(*a))
    monkeypatch.setattr(Store, "read", lambda self, i, artifact: reads.append(artifact.name) or real_read(self, i, artifact))
    summary = run_engine(input_dir, tmp_path, "seg,depth,normal", model_dir)
    assert [summary.passes[n].done for n in ("seg", "depth", "normal")] == [2, 2, 2]
    assert len(calls) == 2
    assert "seg" not in reads


def test_a_checkpoint_that_is_not_torchscript_is_an_error_naming_the_file(tmp_path):
    bad = write_not_torchscript(tmp_path / "facebook/sapiens-seg-1b-torchscript"
                                / sapiens.SEG_MODEL.files[0])
    seg_pass = SapiensSegPass(PassOptions(model_dir=tmp_path))
    with pytest.raises(InfrastructureError, match="is not a TorchScript checkpoint") as error:
        seg_pass.load()
    assert str(bad) in str(error.value)


def test_a_garbage_checkpoint_given_explicitly_is_an_error_naming_the_file(tmp_path):
    bad = tmp_path / "seg.pt2"
    bad.write_bytes(b"not a zip archive at all")
    seg_pass = SapiensSegPass(PassOptions(model_paths={"seg": bad}))
    with pytest.raises(InfrastructureError, match="seg.pt2 is not a TorchScript checkpoint"):
        seg_pass.load()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_depth_checkpoint_given_as_seg_is_an_error_naming_it_and_the_channels(model_dir, precision):
    depth_file = model_path(model_dir, "depth")
    seg_pass = SapiensSegPass(PassOptions(model_paths={"seg": depth_file}, precision=precision))
    with pytest.raises(InfrastructureError) as error:
        seg_pass.load()
    assert f"seg: {depth_file} gives 1 output channel, expected 28" in str(error.value)


def test_the_seg_checkpoint_given_as_normal_is_an_error(model_dir):
    normal_pass = SapiensNormalPass(PassOptions(model_paths={"normal": model_path(model_dir, "seg")}))
    with pytest.raises(InfrastructureError, match="gives 28 output channels, expected 3"):
        normal_pass.load()


class FixedSize(torch.nn.Module):
    """Accepts only the real 1024×768 input, like a ViT with a fixed token grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[2] == 1024 and x.shape[3] == 768, "needs a 1024x768 input")
        return torch.zeros(x.shape[0], 1, 1024, 768, dtype=x.dtype)


def test_a_model_that_needs_the_real_input_size_loads(tmp_path):
    depth_pass = SapiensDepthPass(PassOptions(model_paths={"depth": save_scripted(FixedSize(), tmp_path / "d.pt2")}))
    depth_pass.load()
    assert depth_pass.provenance()["file"] == "d.pt2"


def test_cli_process_writes_valid_seg_depth_normal(input_dir, model_dir, tmp_path):
    output_dir = tmp_path / "out"
    code = process_cli(input_dir, output_dir, "--passes", "seg,depth,normal",
                       "--model-dir", str(model_dir), "--device", "cpu", "--workers", "1")
    assert code == 0
    assert len(list(output_dir.rglob("normal.npy"))) == 2
    assert cli.main(["verify", str(output_dir)]) == 0


class CallRecorder(torch.nn.Module):
    """A seg-shaped model that records the batch size of every call (a TorchScript list attribute)."""

    def __init__(self):
        super().__init__()
        self.batches = torch.jit.Attribute([], List[int])  # typed for TorchScript (string annotations are not)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return torch.zeros(x.shape[0], 28, 8, 6, dtype=x.dtype, device=x.device)


def test_each_torchscript_model_is_warmed_up_at_load_at_the_batch_size_it_will_run(tmp_path):
    path = save_scripted(CallRecorder(), tmp_path / "seg.pt2")
    seg_pass = SapiensSegPass(PassOptions(model_paths={"seg": path}, batch_size=3))
    seg_pass.load()
    # One probe at batch 1 (checks the channels), then the warm-up: two calls at the run's batch,
    # the first profiles that shape and the second builds TorchScript's optimised graph for it.
    assert list(seg_pass._model.batches) == [1] + [3] * sapiens.WARM_UP_CALLS


def test_per_pass_precision_from_the_cli_is_recorded_in_the_run_record(input_dir, model_dir, tmp_path):
    import json

    output_dir = tmp_path / "out"
    code = process_cli(input_dir, output_dir, "--passes", "seg,depth,normal",
                       "--model-dir", str(model_dir), "--device", "cpu", "--workers", "1",
                       "--precision", "bf16,depth=tf32")
    assert code == 0
    (record,) = (output_dir / ".stratum" / "runs").glob("*.json")
    provenance = json.loads(record.read_text())["provenance"]
    assert {n: provenance[n]["precision"] for n in ("seg", "depth", "normal")} == {
        "seg": "bf16", "depth": "tf32", "normal": "bf16"}
