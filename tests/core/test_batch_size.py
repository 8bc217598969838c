"""`--batch-size` is one setting (`PassOptions.batch_size`): the model batch and the engine's group follow it."""

from __future__ import annotations

import logging

import pytest

from stratum_core.cli import main
from stratum_core.engine import RunConfig
from stratum_core.errors import ConfigError
from stratum_core.passes.base import PassOptions
from stratum_core.passes.pixel import PixelPass
from stratum_testing import images


def test_a_given_batch_size_is_both_the_model_batch_and_the_engine_group(tmp_path):
    options = PassOptions(batch_size=5)
    assert RunConfig(tmp_path, ("metadata", "pixel"), options).group_size == 5
    assert PixelPass(options).max_batch == 5


def test_a_batch_size_below_one_is_refused_by_the_options(tmp_path):
    with pytest.raises(ConfigError, match="^--batch-size must be at least 1$"):
        PassOptions(batch_size=0)


def test_the_cli_refuses_batch_size_zero_with_one_message_and_writes_nothing(tmp_path, caplog):
    images.write_gradient(tmp_path / "in" / "a.png", 40, 30)
    with caplog.at_level(logging.ERROR):
        code = main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--passes", "metadata",
                     "--batch-size", "0"])
    assert code == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "error: --batch-size must be at least 1"]
    assert not (tmp_path / "out" / "a").exists()


def test_zero_workers_is_refused_naming_only_workers(tmp_path):
    with pytest.raises(ConfigError, match="^--workers must be at least 1$"):
        RunConfig(tmp_path, ("metadata",), workers=0)
