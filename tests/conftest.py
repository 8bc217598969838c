"""Test-session settings (offline, isolated caches and Dagster home, no real weights) and the fixtures
shared by more than one test package."""

from __future__ import annotations

import os
import tempfile

import pytest

_SESSION_HOME = tempfile.mkdtemp(prefix="stratum-tests-")

# Set before anything imports huggingface_hub or dagster, so no test reads or writes the user's state.
os.environ["DAGSTER_HOME"] = os.path.join(_SESSION_HOME, "dagster_home")
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf_home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("STRATUM_MODEL_DIR", None)
os.environ.pop("HF_TOKEN", None)
os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sapiens_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A $STRATUM_MODEL_DIR of the Sapiens smoke models (seg, depth, normal TorchScript), built once per run.
    Shared: a test that changes files in it works on a copy."""
    from stratum_testing.sapiens_models import build_sapiens_models

    folder = tmp_path_factory.mktemp("sapiens-models")
    build_sapiens_models(folder)
    return folder


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """A running fake Hub (tests/core/publish, tests/dagster); huggingface_hub leaves the suite's offline mode for it."""
    import huggingface_hub.constants as constants

    from stratum_testing.hub import FakeHub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as fake:
        yield fake
