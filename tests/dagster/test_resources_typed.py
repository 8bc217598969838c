"""The resources build each pass's config from typed fields: the same config objects `stratum process`
builds from its flags, with no command line in between."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from stratum_core.errors import ConfigError
from stratum_core.passes.base import parse_precision
from stratum_core.passes.caption import CaptionPass
from stratum_core.passes.dwpose import PoseConfig
from stratum_dagster.resources import CaptionServerResource, StratumResource
from tests.dagster.helpers import materialize, register, stratum_resource, write_tree

REPO = Path(__file__).parents[2]
CAPTION_VARIABLES = ("STRATUM_CAPTION_BACKEND", "STRATUM_CAPTION_URL", "STRATUM_CAPTION_MODEL",
                     "STRATUM_CAPTION_API_KEY", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def no_caption_environment(monkeypatch):
    for name in CAPTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def cli_caption_config(flags: list[str], environ: dict[str, str] | None = None):
    """The CaptionConfig `stratum process` builds from these --caption-* flags."""
    parser = argparse.ArgumentParser()
    CaptionPass.add_arguments(parser)
    return CaptionPass.config_from_args(parser.parse_args(flags), environ or {})


def as_used(config):
    """What the pass uses: url and model with the backend's defaults filled in."""
    return (config.backend, config.resolved_url, config.resolved_model, config.max_tokens, config.concurrency,
            config.timeout, config.retries, config.backoff_base, config.on_truncated, config.prompt,
            config.prompt_file, config.api_key)


@pytest.mark.parametrize("fields, flags", [
    ({}, []),
    ({"url": "http://box:11434/api/generate", "model": "llava:7b", "max_tokens": 64, "concurrency": 2,
      "timeout_s": 5.0, "retries": 0, "backoff_s": 0.5, "truncated": "fail"},
     ["--caption-url", "http://box:11434/api/generate", "--caption-model", "llava:7b", "--caption-max-tokens", "64",
      "--caption-concurrency", "2", "--caption-timeout", "5", "--caption-retries", "0", "--caption-backoff", "0.5",
      "--caption-truncated", "fail"]),
    ({"backend": "openai", "model": "qwen2-vl", "api_key": "sk-1"},
     ["--caption-backend", "openai", "--caption-model", "qwen2-vl"]),
])
def test_the_caption_resource_builds_the_config_stratum_process_builds_from_the_same_flags(fields, flags):
    environ = {"STRATUM_CAPTION_API_KEY": fields["api_key"]} if "api_key" in fields else {}
    assert as_used(CaptionServerResource(**fields).caption_config()) == as_used(cli_caption_config(flags, environ))


def test_the_caption_prompt_file_replaces_the_prompt_as_with_the_cli(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the colours only.\n", encoding="utf-8")
    config = CaptionServerResource(prompt_file=str(prompt)).caption_config()
    assert (config.prompt, config.prompt_file) == ("Describe the colours only.", str(prompt))
    assert as_used(config) == as_used(cli_caption_config(["--caption-prompt-file", str(prompt)]))


def test_unset_caption_fields_take_the_environment_and_set_fields_win(monkeypatch):
    monkeypatch.setenv("STRATUM_CAPTION_BACKEND", "openai")
    monkeypatch.setenv("STRATUM_CAPTION_URL", "http://env-box:8000/v1")
    monkeypatch.setenv("STRATUM_CAPTION_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    from_env = CaptionServerResource().caption_config()
    assert (from_env.backend, from_env.url, from_env.model, from_env.api_key) == (
        "openai", "http://env-box:8000/v1", "env-model", "sk-env")
    own = CaptionServerResource(url="http://own:8000/v1", model="own-model", api_key="sk-own").caption_config()
    assert (own.url, own.model, own.api_key) == ("http://own:8000/v1", "own-model", "sk-own")


@pytest.mark.parametrize("fields", [{"truncated": "drop"}, {"backend": "llamafile"}, {"concurrency": 0},
                                    {"backend": "openai"}])
def test_a_bad_caption_setting_is_a_config_error_naming_the_option(fields):
    with pytest.raises(ConfigError, match="--caption-"):
        CaptionServerResource(**fields).caption_config()


def test_the_pose_backend_field_is_the_pose_pass_config():
    stratum = StratumResource(input_root="in", output_root="out", pose_backend="torch")
    configs = stratum.pass_configs(["metadata", "pose", "seg"])
    assert configs == {"pose": PoseConfig("torch")}
    assert StratumResource(input_root="in", output_root="out").pass_configs(["pose"]) == {"pose": PoseConfig("auto")}
    with pytest.raises(ConfigError, match="--pose-backend"):
        StratumResource(input_root="in", output_root="out", pose_backend="tensorrt").pass_configs(["pose"])


def test_the_caption_servers_typed_settings_reach_the_server_in_a_step_run(tmp_path, instance):
    from stratum_testing.ollama import FakeOllama

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, ["people/a.png"])
    [key] = register(src, out, instance, "people")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Name the colours.", encoding="utf-8")
    fake = FakeOllama(models=["llava:7b"], captions="Grey and red.")
    with fake as url:
        caption = CaptionServerResource(url=f"{url}/api/generate", model="llava:7b", max_tokens=32,
                                        prompt_file=str(prompt))
        assert materialize(["caption"], key, instance, stratum_resource(src, out), caption).success
    [request] = fake.requests
    assert (request["model"], request["prompt"], request["options"]["num_predict"]) == (
        "llava:7b", "Name the colours.", 32)
    assert (out / "people" / "a" / "caption.txt").read_text() == "Grey and red."


def documented_resources_config() -> dict:
    """The run config example of docs/dagster.md's Settings section."""
    docs = (REPO / "docs" / "dagster.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if b.startswith("resources:")]
    return yaml.safe_load(block)


def test_the_documented_resources_config_is_valid_and_builds_the_pass_configs(monkeypatch):
    from stratum_dagster.definitions import defs

    monkeypatch.setenv("STRATUM_INPUT_DIR", "/data/images")
    monkeypatch.setenv("STRATUM_OUTPUT_DIR", "/data/dataset")
    monkeypatch.setenv("STRATUM_HUB_REPO", "me/dataset")
    run_config = documented_resources_config()
    dg.validate_run_config(defs().resolve_job_def("enrich_job"), run_config)

    resources = run_config["resources"]
    stratum_fields = {k: v for k, v in resources["stratum"]["config"].items() if not isinstance(v, dict)}
    stratum = StratumResource(input_root="/data/images", output_root="/data/dataset", **stratum_fields)
    parse_precision(stratum.precision)  # the documented precision is one the passes take
    caption = CaptionServerResource(**resources["caption_server"]["config"])
    configs = stratum.pass_configs(["caption", "pose"], caption)
    assert configs["pose"] == PoseConfig("torch")
    assert (configs["caption"].resolved_url, configs["caption"].resolved_model, configs["caption"].concurrency,
            configs["caption"].timeout, configs["caption"].on_truncated) == (
        "http://gpu-box:11434/api/generate", "gemma3:12b", 8, 300.0, "fail")
