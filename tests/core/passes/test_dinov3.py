"""Tests of the dinov3 pass against a direct transformers forward of a 1-layer, 1024-wide smoke model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stratum_core import cli  # noqa: E402
from stratum_core.artifacts import BY_NAME  # noqa: E402
from stratum_core.buckets import Bucket  # noqa: E402
from stratum_core.discover import SourceImage  # noqa: E402
from stratum_core.engine import Engine, RunConfig  # noqa: E402
from stratum_core.errors import InfrastructureError, ModelNotFoundError  # noqa: E402
from stratum_core.intake import decode  # noqa: E402
from stratum_core.passes.base import Item, PassOptions  # noqa: E402
from stratum_core.passes.dinov3 import IMAGENET_MEAN, IMAGENET_STD, DINOv3Pass  # noqa: E402
from stratum_core.store import Store  # noqa: E402
from stratum_testing.cli import process_cli  # noqa: E402
from stratum_testing.transformers_models import build_dinov3, build_t5  # noqa: E402

HUB_ID = "facebook/dinov3-vitl16-pretrain-lvd1689m"

# Small sources whose aspect is exactly a bucket's, so each lands in that bucket.
SOURCES = {
    "square_a": ((64, 64), Bucket(1024, 1024)),
    "square_b": ((32, 32), Bucket(1024, 1024)),
    "portrait": ((52, 76), Bucket(832, 1216)),
    "tall": ((48, 80), Bucket(768, 1280)),
    "taller": ((44, 84), Bucket(704, 1344)),
}
PATCHES = {Bucket(1024, 1024): 4096, Bucket(832, 1216): 3952, Bucket(768, 1280): 3840, Bucket(704, 1344): 3696}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # other helpers share the two cores
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory) -> Path:
    return build_dinov3(tmp_path_factory.mktemp("models") / "dinov3")


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, ((w, h), _) in SOURCES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def engine_output(tmp_path_factory, input_dir, dino_folder) -> Path:
    """All five images (four buckets, two squares batched together) through the engine once."""
    out = tmp_path_factory.mktemp("out")
    options = PassOptions(model_paths={"dinov3": dino_folder}, batch_size=8)
    config = RunConfig(output_dir=out, passes=("metadata", "dinov3"), options=options, workers=1)
    summary = Engine(config).run(sources(input_dir))
    assert summary.passes["dinov3"].done == len(SOURCES)
    return out


def sources(input_dir: Path) -> list[SourceImage]:
    return [SourceImage(f"{name}.png", input_dir / f"{name}.png") for name in SOURCES]


def read(out: Path, name: str, artifact: str) -> np.ndarray:
    return Store(out).read(name, BY_NAME[artifact])


def reference_forward(folder: Path, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own forward of the crop normalised in numpy: (cls (1024,), patches (N, 1024)) fp32."""
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(folder).eval()
    pixels = (crop.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD,
                                                                                              np.float32)
    with torch.inference_mode():
        out = model(pixel_values=torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()))
    return out.pooler_output[0].numpy(), out.last_hidden_state[0, 1 + 4:].numpy()


def loaded_pass(folder: Path) -> DINOv3Pass:
    p = DINOv3Pass(PassOptions(model_paths={"dinov3": folder}))
    p.load()
    return p


@pytest.mark.parametrize("name", ["square_a", "portrait"])
def test_features_equal_a_direct_transformers_forward(engine_output, input_dir, dino_folder, name):
    cls, patches = reference_forward(dino_folder, decode(input_dir / f"{name}.png").crop)
    np.testing.assert_allclose(read(engine_output, name, "dinov3_cls").astype(np.float32), cls,
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(read(engine_output, name, "dinov3_patches").astype(np.float32), patches,
                               rtol=2e-3, atol=2e-3)


def test_patch_count_is_exact_for_every_bucket(engine_output):
    for name, (_, bucket) in SOURCES.items():
        patches = read(engine_output, name, "dinov3_patches")
        assert patches.shape == (PATCHES[bucket], 1024)
        assert patches.dtype == np.float16


def test_cls_is_1024_float16_and_finite(engine_output):
    for name in SOURCES:
        cls = read(engine_output, name, "dinov3_cls")
        assert cls.shape == (1024,) and cls.dtype == np.float16 and np.isfinite(cls).all()


def test_a_mixed_bucket_batch_equals_one_by_one(input_dir, dino_folder):
    p = DINOv3Pass(PassOptions(model_paths={"dinov3": dino_folder}, batch_size=2))
    p.load()
    items = [Item(SourceImage(f"{name}.png", input_dir / f"{name}.png"), decode(input_dir / f"{name}.png"))
             for name in ("square_b", "tall")]
    assert items[0].bucket != items[1].bucket
    forwarded, real_forward = [], p.forward
    p.forward = lambda batch: forwarded.append(len(batch)) or real_forward(batch)
    together = p.run_batch(items)
    alone = [p.run_batch([item])[0] for item in items]
    assert forwarded == [2, 1, 1]  # the square and the tall crop went through one forward
    for mixed, single in zip(together, alone):
        for artifact in ("dinov3_cls", "dinov3_patches"):
            np.testing.assert_allclose(mixed.values[artifact].astype(np.float32),
                                       single.values[artifact].astype(np.float32), rtol=2e-3, atol=2e-3)


class CountingModel:
    """Stands in for the ViT: CLS = mean pixel, patches = per-patch mean; counts calls."""

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, pixel_values):
        self.calls.append(tuple(pixel_values.shape))
        b, _, h, w = pixel_values.shape
        patches = pixel_values.mean(1).reshape(b, h // 16, 16, w // 16, 16).mean((2, 4)).reshape(b, -1, 1)
        tokens = torch.cat([torch.full((b, 5, 1), 7.0), patches], dim=1)
        return SimpleNamespace(pooler_output=pixel_values.mean((1, 2, 3))[:, None], last_hidden_state=tokens)


def test_one_model_call_per_crop_size_and_outputs_keep_order():
    p = DINOv3Pass(PassOptions())
    p._model, p._dtype, p._registers = CountingModel(), torch.float32, 4
    crops = [torch.full((32, 48, 3), 10, dtype=torch.uint8), torch.full((48, 32, 3), 20, dtype=torch.uint8),
             torch.full((32, 48, 3), 30, dtype=torch.uint8)]
    outputs = p.forward(crops)
    assert sorted(p._model.calls) == [(1, 3, 48, 32), (2, 3, 32, 48)]
    means = [float(cls[0]) for cls, _ in outputs]
    assert means[0] < means[1] < means[2]  # brighter crop → larger normalised mean, in input order
    assert [patches.shape for _, patches in outputs] == [(6, 1), (6, 1), (6, 1)]


def test_normalisation_is_imagenet_mean_std_over_255():
    from stratum_core.passes.dinov3 import normalize_crops

    crop = torch.tensor([[[255, 0, 128]]], dtype=torch.uint8)[None]  # (1, 1, 1, 3)
    x = normalize_crops(crop, torch.float32)[0, :, 0, 0].numpy()
    expected = (np.array([255, 0, 128]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_cli_with_explicit_model_option_writes_valid_features(tmp_path, input_dir, dino_folder):
    one = tmp_path / "in"
    one.mkdir()
    (one / "taller.png").write_bytes((input_dir / "taller.png").read_bytes())
    code = process_cli(one, tmp_path / "out", "--passes", "dinov3", "--device", "cpu",
                       "--workers", "1", "--model", f"dinov3={dino_folder}")
    assert code == 0
    assert read(tmp_path / "out", "taller", "dinov3_patches").shape == (3696, 1024)
    assert cli.main(["verify", str(tmp_path / "out")]) == 0


def test_cli_finds_weights_under_stratum_model_dir(tmp_path, input_dir, dino_folder, monkeypatch):
    model_dir = tmp_path / "models"
    (model_dir / HUB_ID).parent.mkdir(parents=True)
    (model_dir / HUB_ID).symlink_to(dino_folder, target_is_directory=True)
    one = tmp_path / "in"
    one.mkdir()
    (one / "taller.png").write_bytes((input_dir / "taller.png").read_bytes())
    monkeypatch.setenv("STRATUM_MODEL_DIR", str(model_dir))
    code = process_cli(one, tmp_path / "out", "--passes", "dinov3", "--device", "cpu",
                       "--workers", "1")
    assert code == 0
    assert read(tmp_path / "out", "taller", "dinov3_cls").shape == (1024,)


def test_folder_without_a_model_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    p = DINOv3Pass(PassOptions(model_paths={"dinov3": empty}))
    with pytest.raises(ModelNotFoundError, match=str(empty)):
        p.load()


def test_folder_with_another_model_is_an_error_naming_it(tmp_path):
    t5 = build_t5(tmp_path / "t5")
    p = DINOv3Pass(PassOptions(model_paths={"dinov3": t5}))
    with pytest.raises(InfrastructureError, match=f"{t5}.*not a DINOv3"):
        p.load()


def test_provenance_records_model_weights_and_precision(dino_folder):
    record = loaded_pass(dino_folder).provenance()
    assert record["model"] == HUB_ID and record["precision"] == "fp32"
    assert record["weights"] == str(dino_folder) and record["weights_source"] == "explicit"
