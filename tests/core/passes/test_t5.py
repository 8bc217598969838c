"""Tests of the t5 pass against a direct encoder forward of a 1-layer, d_model 1024 smoke model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stratum_core.artifacts import BY_NAME  # noqa: E402
from stratum_core.buckets import Bucket  # noqa: E402
from stratum_core.discover import SourceImage  # noqa: E402
from stratum_core.engine import Engine, RunConfig  # noqa: E402
from stratum_core.errors import InfrastructureError  # noqa: E402
from stratum_core.intake import Decoded  # noqa: E402
from stratum_core.passes.base import Item, PassOptions  # noqa: E402
from stratum_core.passes.t5 import MAX_LENGTH, T5Pass, compute_precision  # noqa: E402
from stratum_core.store import Store  # noqa: E402
from stratum_testing.cli import process_cli  # noqa: E402
from stratum_testing.transformers_models import build_t5  # noqa: E402

CAPTIONS = [
    "a man standing in soft light, wearing a red jacket.",
    "a woman sitting on the left, dark background, photo from above.",
    " ".join(["a person with hair and a blue shirt"] * 120),  # > 512 tokens: truncated
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    # Like the real google-t5/t5-large repo: no tokenizer_config.json, the class comes from config.json.
    return build_t5(tmp_path_factory.mktemp("models") / "t5", with_tokenizer_config=False)


@pytest.fixture(scope="module")
def outcomes(t5_folder):
    p = T5Pass(PassOptions(model_paths={"t5": t5_folder}))
    p.load()
    return p.run_batch([caption_item(f"img{i}", text) for i, text in enumerate(CAPTIONS)])


@pytest.fixture(scope="module")
def reference(t5_folder):
    """transformers' tokenizer and encoder called directly on the three captions."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(t5_folder)
    model = T5EncoderModel.from_pretrained(t5_folder).eval()
    encoded = tokenizer(CAPTIONS, max_length=512, padding="max_length", truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    return hidden.numpy(), encoded["attention_mask"].numpy()


def caption_item(image_id: str, caption: str) -> Item:
    item = Item(SourceImage(f"{image_id}.png", Path(f"{image_id}.png")), Decoded(None, 64, 64, Bucket(1024, 1024)))
    item.inputs["caption"] = caption
    return item


def test_hidden_states_equal_a_direct_encoder_forward(outcomes, reference):
    hidden, _ = reference
    for i, outcome in enumerate(outcomes):
        assert outcome.status == "ok"
        np.testing.assert_allclose(outcome.values["t5_hidden"].astype(np.float32), hidden[i], rtol=2e-3, atol=2e-3)


def test_mask_equals_the_tokenizers_attention_mask(outcomes, reference):
    _, mask = reference
    for i, outcome in enumerate(outcomes):
        assert outcome.values["t5_mask"].dtype == np.uint8
        np.testing.assert_array_equal(outcome.values["t5_mask"], mask[i])


def test_padded_rows_are_present_and_everything_is_finite(outcomes):
    for outcome in outcomes:
        hidden, mask = outcome.values["t5_hidden"], outcome.values["t5_mask"]
        assert hidden.shape == (MAX_LENGTH, 1024) and hidden.dtype == np.float16
        assert mask.shape == (MAX_LENGTH,)
        assert np.isfinite(hidden).all()
    short_mask = outcomes[0].values["t5_mask"]
    assert 0 < short_mask.sum() < 40 and not short_mask[40:].any()  # padding after the caption


def test_long_caption_is_truncated_to_512_valid_tokens(outcomes):
    assert outcomes[2].values["t5_mask"].sum() == MAX_LENGTH


@pytest.mark.parametrize("resolved, cuda, bf16, expected", [
    ("fp16", True, True, "bf16"),
    ("fp16", True, False, "fp32"),
    ("fp16", False, False, "fp32"),
    ("bf16", True, True, "bf16"),
    ("fp32", True, True, "fp32"),
])
def test_fp16_is_never_the_compute_precision(resolved, cuda, bf16, expected):
    assert compute_precision(resolved, cuda, bf16) == expected


def test_fp16_request_on_cpu_computes_in_fp32(t5_folder):
    p = T5Pass(PassOptions(precision="fp16", model_paths={"t5": t5_folder}))
    p.load()
    assert p.provenance()["precision"] == "fp32"
    assert next(p._model.parameters()).dtype == torch.float32


def test_image_without_caption_is_skipped_and_counted(tmp_path, t5_folder):
    from PIL import Image

    for name in ("with", "without"):
        Image.new("RGB", (32, 32), (200, 100, 50)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    Store(out).write("with", BY_NAME["caption"], CAPTIONS[0])
    config = RunConfig(output_dir=out, passes=("metadata", "t5"),
                       options=PassOptions(model_paths={"t5": t5_folder}), workers=1)
    summary = Engine(config).run([SourceImage(f"{n}.png", tmp_path / f"{n}.png") for n in ("with", "without")])
    assert summary.passes["t5"].done == 1
    assert summary.passes["t5"].skipped["missing_input"] == 1
    assert Store(out).read("with", BY_NAME["t5_mask"]).sum() > 0
    assert "t5_hidden.npy" not in Store(out).listing("without")


def test_cli_finds_weights_under_the_t5_large_alias(tmp_path, t5_folder, monkeypatch):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    Store(out).write("a", BY_NAME["caption"], CAPTIONS[1])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "t5-large").symlink_to(t5_folder, target_is_directory=True)
    monkeypatch.setenv("STRATUM_MODEL_DIR", str(tmp_path / "models"))
    code = process_cli(tmp_path / "in", out, "--passes", "t5", "--device", "cpu",
                       "--workers", "1")
    assert code == 0
    assert Store(out).read("a", BY_NAME["t5_hidden"]).shape == (MAX_LENGTH, 1024)


def encoder_returning(value: float, row: int):
    """A stand-in for the encoder's forward: zeros, with `value` at one place of caption `row`."""
    from types import SimpleNamespace

    def forward(input_ids, attention_mask):
        hidden = torch.zeros(*input_ids.shape, 1024)
        hidden[row, 3, 7] = value
        return SimpleNamespace(last_hidden_state=hidden)

    return forward


@pytest.mark.parametrize("value, why", [(float("inf"), "non-finite"), (float("-inf"), "non-finite"),
                                        (float("nan"), "non-finite"), (1e6, "beyond float16's range")])
def test_hidden_states_float16_cannot_hold_fail_only_that_image(t5_folder, monkeypatch, value, why):
    p = T5Pass(PassOptions(model_paths={"t5": t5_folder}))
    p.load()
    monkeypatch.setattr(p._model, "forward", encoder_returning(value, row=0))
    bad, good = p.run_batch([caption_item("bad", CAPTIONS[0]), caption_item("good", CAPTIONS[1])])
    assert (bad.status, bad.reason) == ("failed", "inference_error") and why in bad.message
    assert good.status == "ok" and not good.values["t5_hidden"].any()


def test_folder_with_another_model_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "dino"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "dinov3_vit"}')
    for name in ("model.safetensors", "tokenizer.json"):  # complete enough to resolve, wrong model inside
        (folder / name).write_text("{}")
    p = T5Pass(PassOptions(model_paths={"t5": folder}))
    with pytest.raises(InfrastructureError, match=f"{folder}.*not T5"):
        p.load()
