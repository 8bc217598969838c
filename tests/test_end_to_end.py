"""End to end: the `stratum` CLI as a user runs it, over smoke models for every pass, a fake Ollama and a fake Hub.

One module-scoped `stratum process --passes all,pixel` run feeds most tests; each test checks one behaviour.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stratum_core.artifacts import ARTIFACTS, BY_NAME, validate_value
from stratum_core.buckets import Bucket
from stratum_core.store import Store
from stratum_testing import images
from stratum_testing.model_dir import build_smoke_model_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_TOKEN = "hf_SECRETendToEnd1234567890"
CAPTION = "The image shows a person standing in soft light."

# image id → (source file, bucket it must land in); sizes are tiny, crops are full bucket size.
GOOD_IMAGES: dict[str, Bucket] = {
    "square": Bucket(1024, 1024),               # 64×64
    "wide": Bucket(1216, 832),                  # 96×64, aspect 1.5
    "nested/tall": Bucket(704, 1344),           # 48×96, aspect 0.5
    "nested/deeper/alpha": Bucket(1344, 704),   # 80×40 RGBA, aspect 2
    "rotated": Bucket(832, 1216),               # stored 120×80, EXIF 6 → shown 80×120
}
CORRUPT_ID = "broken"


def _write_sources(root: Path) -> Path:
    (root / "nested" / "deeper").mkdir(parents=True)
    images.write_gradient(root / "square.png", 64, 64)
    images.write_gradient(root / "wide.jpg", 96, 64, seed=1)
    images.write_gradient(root / "nested" / "tall.jpg", 48, 96, seed=2)
    images.write_rgba_png(root / "nested" / "deeper" / "alpha.png", (80, 40), (255, 0, 0, 128))
    images.write_exif_rotated_jpeg(root / "rotated.jpg", 120, 80)
    images.write_truncated(root / f"{CORRUPT_ID}.jpg")
    return root


def stratum(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m stratum_core ARGS` in a fresh process, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "stratum_core", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, DAGSTER_HOME=str(tmp / "dagster_home"), HF_HUB_OFFLINE="1")
    env.pop("STRATUM_MODEL_DIR", None)
    (tmp / "dagster_home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_lines(stdout: str) -> dict[str, str]:
    """pass name → its line of the run summary ("caption   done 5, existing 0")."""
    passes = {a.pass_name for a in ARTIFACTS}
    return {line.split()[0]: " ".join(line.split()[1:]) for line in stdout.splitlines()
            if line.split() and line.split()[0] in passes}


def _files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@dataclass
class Processed:
    source: Path
    output: Path
    env: dict[str, str]
    process_args: tuple[str, ...]
    first: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def model_dir(work) -> Path:
    return build_smoke_model_dir(work / "models")


@pytest.fixture(scope="module")
def source_dir(work) -> Path:
    return _write_sources(work / "in")


@pytest.fixture(scope="module")
def ollama():
    from stratum_testing.ollama import FakeOllama

    fake = FakeOllama(captions=CAPTION)
    with fake:
        yield fake


@pytest.fixture(scope="module")
def processed(work, model_dir, source_dir, ollama) -> Processed:
    """The first full run: every pass plus pixel, on the CPU."""
    output = work / "out"
    env = _base_env(work, STRATUM_MODEL_DIR=str(model_dir))
    args = ("process", str(source_dir), "-o", str(output), "--passes", "all,pixel",
            "--ollama-url", ollama.generate_url, "--ollama-model", ollama.models[0], "--device", "cpu")
    return Processed(source_dir, output, env, args, stratum(*args, env=env, timeout=300))


# ------------------------------------------------------------------ the model folder

def test_models_list_finds_every_smoke_model_in_the_model_dir(model_dir, work):
    from stratum_core.passes import MODEL_PASSES, pass_class

    run = stratum("models", "list", env=_base_env(work, STRATUM_MODEL_DIR=str(model_dir)))
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line for line in run.stdout.splitlines() if line.strip()}
    for spec in (pass_class(name).model for name in MODEL_PASSES):
        assert re.search(rf"present, [\d.]+ \w*B \(model_dir: {re.escape(str(model_dir / spec.hub_id))}\)",
                         rows[spec.hub_id]), rows[spec.hub_id]


# ------------------------------------------------------------------ the full run

def test_full_run_exits_1_and_summary_names_only_the_corrupt_file(processed):
    run = processed.first
    assert run.returncode == 1, run.stderr[-4000:]
    assert f"{CORRUPT_ID} [metadata] decode_error" in run.stdout
    lines = summary_lines(run.stdout)
    assert set(lines) == {a.pass_name for a in ARTIFACTS}
    assert lines.pop("metadata") == "done 5, existing 0, FAILED 1 (decode_error 1)"
    for name, line in lines.items():  # every other pass did the five good images, nothing failed or skipped
        assert line == "done 5, existing 0", name


def test_every_good_image_has_every_artifact_valid_for_its_bucket(processed):
    store = Store(processed.output)
    for image_id, bucket in GOOD_IMAGES.items():
        for artifact in ARTIFACTS:
            value = store.read(image_id, artifact)
            assert validate_value(artifact, value, bucket) is None, (image_id, artifact.name)
            if artifact.shape is not None:
                assert value.shape == artifact.shape(bucket), (image_id, artifact.name)
        meta = store.read(image_id, BY_NAME["metadata"])
        assert meta["aspect_bucket"] == bucket.label and meta["image_id"] == image_id


def test_corrupt_file_gets_no_artifacts(processed):
    corrupt_dir = processed.output / CORRUPT_ID
    visible = [p.name for p in corrupt_dir.iterdir() if not p.name.startswith(".")] if corrupt_dir.exists() else []
    assert visible == []  # only the hidden failure record, never a metadata.json


def test_exif_orientation_and_alpha_reach_the_artifacts(processed):
    store = Store(processed.output)
    meta = store.read("rotated", BY_NAME["metadata"])
    assert (meta["width"], meta["height"], meta["source_path"]) == (80, 120, "rotated.jpg")
    pixel = store.read("rotated", BY_NAME["pixel"]).astype(np.float32)
    assert pixel[0, 100, 416] > 0.9 and pixel[2, 100, 416] < 0.1      # top half red once rotated
    assert pixel[2, 1100, 416] > 0.9 and pixel[0, 1100, 416] < 0.1    # bottom half blue
    alpha = store.read("nested/deeper/alpha", BY_NAME["pixel"]).astype(np.float32)
    np.testing.assert_allclose(alpha[:, 352, 672], [1.0, 0.5, 0.5], atol=0.01)  # 50% red over white


def test_caption_is_cleaned_and_t5_encodes_it(processed):
    store = Store(processed.output)
    for image_id in GOOD_IMAGES:
        caption = store.read(image_id, BY_NAME["caption"])
        assert caption.strip() and not caption.lower().startswith("the image shows")
        assert "person standing in soft light" in caption
        mask = store.read(image_id, BY_NAME["t5_mask"])
        hidden = store.read(image_id, BY_NAME["t5_hidden"]).astype(np.float32)
        valid = int(mask.sum())
        assert 1 < valid < 512 and mask[:valid].all()
        assert np.abs(hidden[:valid]).sum(axis=1).min() > 0


def test_verify_passes_on_the_output(processed):
    run = stratum("verify", str(processed.output), env=processed.env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK" in run.stdout


def test_status_shows_every_artifact_complete_and_the_decode_failure(processed):
    run = stratum("status", str(processed.output), env=processed.env)
    assert run.returncode == 0, run.stderr
    # The undecodable source counts in the total, as failed metadata (it has no artifacts to count).
    total = len(GOOD_IMAGES) + 1
    assert f"Total images: {total}" in run.stdout
    for artifact in ARTIFACTS:
        assert f"{artifact.name}: 5 / {total} ({100 * 5 / total:.1f}%)" in run.stdout
    assert "metadata: 1 (decode_error 1)" in run.stdout


def test_second_run_does_no_work_and_exits_1_only_for_the_corrupt_file(processed):
    before = _files_under(processed.output)
    run = stratum(*processed.process_args, env=processed.env, timeout=300)
    assert run.returncode == 1, run.stderr[-4000:]
    assert "FAILED 1 (decode_error 1)" in run.stdout and f"{CORRUPT_ID} [metadata] decode_error" in run.stdout
    lines = summary_lines(run.stdout)
    assert lines.pop("metadata") == "done 0, existing 5, FAILED 1 (decode_error 1)"
    for name, line in lines.items():
        assert line == "done 0, existing 5", name
    assert "loading dinov3" not in run.stderr  # nothing to do: no model is loaded
    after = _files_under(processed.output)
    changed = {k for k in after if k.startswith(tuple(GOOD_IMAGES)) and before.get(k) != after[k]}
    assert not changed


# ------------------------------------------------------------------ preview and publish

def test_preview_writes_one_sheet_per_good_image_and_an_index(processed, work):
    out = work / "preview"
    run = stratum("preview", str(processed.output), "--out", str(out), env=processed.env)
    assert run.returncode == 0, run.stderr
    sheets = sorted(p.name for p in out.glob("*.png"))
    assert sheets == sorted(i.replace("/", "__") + ".png" for i in GOOD_IMAGES)
    index = (out / "index.html").read_text()
    assert all(name in index for name in sheets)


def test_publish_to_the_fake_hub_counts_every_good_image(processed, work):
    from stratum_testing.hub import FakeHub

    with FakeHub() as hub:
        env = dict(processed.env, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=HUB_TOKEN,
                   HF_HUB_OFFLINE="0")
        run = stratum("publish", str(processed.output), "--hub-repo", "user/ds", "--layers", "caption,dinov3,pose",
                      env=env)
        assert run.returncode == 0, run.stderr[-4000:]
        assert HUB_TOKEN not in run.stdout + run.stderr
        files = hub.files("user/ds")
    manifest = json.loads(files["manifest.json"])
    assert manifest["total_images"] == len(GOOD_IMAGES)
    for layer in ("caption", "dinov3", "pose"):
        assert manifest["layers"][layer]["count"] == len(GOOD_IMAGES), layer
    assert {"dinov3/00000/00000-00004.tar", "pose/00000/00000-00004.tar", "data/00000/00000-00004.parquet"} <= set(files)


# ------------------------------------------------------------------ infrastructure failures

def test_missing_weights_stop_the_run_naming_model_folder_and_download_command(source_dir, work):
    empty = work / "no-models"
    empty.mkdir()
    output = work / "out-missing-weights"
    env = _base_env(work, STRATUM_MODEL_DIR=str(empty))
    run = stratum("process", str(source_dir), "-o", str(output), "--passes", "dinov3", "--device", "cpu", env=env)
    assert run.returncode not in (0, 1), run.stdout
    message = run.stderr
    assert "facebook/dinov3-vitl16-pretrain-lvd1689m" in message
    assert str(empty / "facebook" / "dinov3-vitl16-pretrain-lvd1689m") in message
    assert "stratum models download" in message
    assert not list(output.rglob("dinov3_*"))


def test_ollama_down_fails_fast_with_a_clear_message_and_writes_nothing(source_dir, model_dir, work):
    port = _closed_port()
    output = work / "out-ollama-down"
    env = _base_env(work, STRATUM_MODEL_DIR=str(model_dir))
    run = stratum("process", str(source_dir), "-o", str(output), "--passes", "caption", "--device", "cpu",
                  "--ollama-url", f"http://127.0.0.1:{port}/api/generate", "--caption-retries", "0", env=env,
                  timeout=60)
    assert run.returncode not in (0, 1), run.stdout
    assert f"127.0.0.1:{port}" in run.stderr and "does not answer" in run.stderr
    assert not output.exists() or not [p for p in output.rglob("*") if p.is_file()]
