"""Weight resolution of the dinov3 and t5 models (SPEC §7) and `stratum models list`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from stratum_core.errors import ModelNotFoundError
from stratum_core.models import resolve_model
from stratum_core.models_cli import cmd_list
from stratum_core.passes.dinov3 import DINOv3Pass
from stratum_core.passes.t5 import T5Pass

DINO = DINOv3Pass.model
T5 = T5Pass.model


def fake_model(folder: Path, files: tuple[str, ...]) -> Path:
    """A folder holding empty placeholders of `files`: resolution only checks that they exist."""
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def test_model_ids_are_the_spec_hub_ids():
    assert DINO.hub_id == "facebook/dinov3-vitl16-pretrain-lvd1689m"
    assert T5.hub_id == "google-t5/t5-large" and "t5-large" in T5.aliases


def test_explicit_folder_wins_over_the_model_dir(tmp_path):
    explicit = fake_model(tmp_path / "mine", ("config.json",))
    fake_model(tmp_path / "models" / DINO.hub_id, ("config.json",))
    found = resolve_model(DINO, explicit=explicit, model_dir=tmp_path / "models", offline=True)
    assert (found.root, found.source) == (explicit, "explicit")


def test_model_dir_layout_is_hub_id_folders(tmp_path):
    folder = fake_model(tmp_path / "models" / "facebook" / "dinov3-vitl16-pretrain-lvd1689m", ("config.json",))
    found = resolve_model(DINO, model_dir=tmp_path / "models", offline=True)
    assert (found.root, found.source) == (folder, "model_dir")


def test_t5_large_alias_is_accepted_in_the_model_dir(tmp_path):
    folder = fake_model(tmp_path / "models" / "t5-large", T5.files)
    found = resolve_model(T5, model_dir=tmp_path / "models", offline=True)
    assert found.root == folder


def test_t5_folder_without_its_tokenizer_is_not_found(tmp_path):
    fake_model(tmp_path / "models" / T5.hub_id, ("config.json", "model.safetensors"))
    with pytest.raises(ModelNotFoundError):
        resolve_model(T5, model_dir=tmp_path / "models", offline=True)


def test_explicit_folder_without_the_model_names_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=str(empty)):
        resolve_model(T5, explicit=empty, offline=True)


def test_offline_error_names_the_model_the_folder_and_the_download_command(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(DINO, model_dir=tmp_path / "models", offline=True)
    message = str(caught.value)
    assert DINO.hub_id in message
    assert str(tmp_path / "models" / DINO.hub_id) in message
    assert "stratum models download" in message


def test_offline_error_lists_the_alias_folder_too(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(T5, model_dir=tmp_path / "models", offline=True)
    assert str(tmp_path / "models" / "t5-large") in str(caught.value)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF hub cache (what HF_HUB_CACHE names) in a temp dir."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def cached_snapshot(cache: Path, repo_id: str, files: tuple[str, ...]) -> Path:
    """The layout `snapshot_download` leaves: models--<id>/refs/main naming snapshots/<commit>/."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return fake_model(repo / "snapshots" / commit, files)


@pytest.mark.parametrize("repo_id", [T5.hub_id, "t5-large"])
def test_hf_cache_is_searched_under_the_hub_id_and_its_alias(hf_cache, repo_id):
    snapshot = cached_snapshot(hf_cache, repo_id, T5.files)
    found = resolve_model(T5, offline=True)
    assert (found.root, found.source) == (snapshot, "hf_cache")


def test_offline_error_names_the_hf_cache_folder(hf_cache, tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(T5, model_dir=tmp_path / "models", offline=True)
    models = tmp_path / "models"
    assert f"{models / T5.hub_id}, {models / 't5-large'} and the HuggingFace cache {hf_cache} " in str(caught.value)


def test_offline_error_without_a_model_dir_says_it_is_not_set(hf_cache):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(T5, offline=True)
    assert f"$STRATUM_MODEL_DIR is not set; looked in the HuggingFace cache {hf_cache} (offline)" in str(caught.value)


def test_models_list_shows_present_and_missing(tmp_path, capsys):
    fake_model(tmp_path / "models" / "t5-large", T5.files)
    assert cmd_list(argparse.Namespace(model_dir=tmp_path / "models")) == 0
    output = capsys.readouterr().out.splitlines()
    assert output[0].startswith(f"Looked in {tmp_path / 'models'}/<hub id>/, then the HuggingFace cache ")
    lines = {line.split()[0]: line for line in output[1:]}
    assert re.search(r"present, [0-9.]+ (B|kB|MB|GB) \(model_dir: ", lines[T5.hub_id]) and str(tmp_path / "models" / "t5-large") in lines[T5.hub_id]
    assert lines[DINO.hub_id].rstrip().endswith("missing: stratum models download --passes dinov3")


@pytest.fixture
def fake_hub(monkeypatch):
    """The loopback fake Hub, with huggingface_hub pointed at it and allowed online."""
    import huggingface_hub.constants as hf_constants

    from stratum_testing.hub import FakeHub

    with FakeHub() as hub:
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        yield hub


def test_models_download_fetches_only_the_t5_files_into_the_model_dir_layout(tmp_path, fake_hub, capsys):
    from stratum_core.models_cli import cmd_download

    fake_hub.put_files(T5.hub_id, {"config.json": b"{}", "model.safetensors": b"\0weights", "tokenizer.json": b"{}",
                                   "tf_model.h5": b"\0a copy nobody needs"}, kind="models")
    assert cmd_download(argparse.Namespace(passes="t5", to=tmp_path / "models")) == 0
    folder = tmp_path / "models" / T5.hub_id
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(T5.files)
    assert resolve_model(T5, model_dir=tmp_path / "models", offline=True).root == folder


def test_a_failed_download_gives_its_cause(hf_cache, fake_hub):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(DINO, offline=False)  # the fake Hub has no such repo: 404
    message = str(caught.value)
    assert f"model {DINO.hub_id} not found" in message
    assert "The download failed: HfHubHTTPError: Client error '404 Not Found'" in message
