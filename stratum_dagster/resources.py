"""Configurable resources: where the images are, how passes run, the caption server and the Hub.

Every field can come from an environment variable (`dg.EnvVar`) in `definitions.py` and
can be overridden per run in the launchpad or with `--config` (`resources: stratum: config: …`).
The resources build the same config objects as the `stratum` CLI; `stratum_core` does the work.
"""


import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import dagster as dg
from pydantic import Field

from stratum_core.discover import SourceImage
from stratum_core.preflight import Readiness
from stratum_core.publish.config import PublishConfig
from stratum_core.summary import RunSummary

if TYPE_CHECKING:
    from stratum_core.passes.caption import CaptionConfig

# The publish options default as in `stratum publish` (both take them from PublishConfig).
_PUBLISH_DEFAULTS = {f.name: f.default for f in fields(PublishConfig)}


@dataclass
class ShardRun:
    """The result of one engine run (several passes, each image decoded once) over one shard."""

    key: str
    pass_names: tuple[str, ...]  # as run: metadata first, dependency order
    images: list[SourceImage]
    summary: RunSummary
    device: str


# Read when a run starts (never at import), so sensor-launched and scheduled runs reach a remote server.
CAPTION_ENV = {"backend": "STRATUM_CAPTION_BACKEND", "url": "STRATUM_CAPTION_URL", "model": "STRATUM_CAPTION_MODEL"}


class CaptionServerResource(dg.ConfigurableResource):
    """The Ollama (or OpenAI-compatible) server the caption pass talks to, and how it is asked. `None` takes
    the environment variable (CAPTION_ENV) where there is one, else the caption pass's default (CaptionConfig)."""

    backend: Optional[str] = Field(default=None, description="ollama | openai (any OpenAI-compatible server); "
                                                             "default $STRATUM_CAPTION_BACKEND, else ollama")
    url: Optional[str] = Field(
        default=None, description="server URL (ollama: its /api/generate endpoint); default $STRATUM_CAPTION_URL")
    model: Optional[str] = Field(
        default=None, description="model name on the server; default $STRATUM_CAPTION_MODEL, else gemma3:27b")
    max_tokens: Optional[int] = Field(default=None, description="most tokens per caption [512]")
    concurrency: Optional[int] = Field(default=None, description="caption requests in flight [4]")
    timeout_s: Optional[float] = Field(default=None, description="seconds to wait for one answer [120]")
    retries: Optional[int] = Field(default=None, description="retries per image after a transient failure [3]")
    backoff_s: Optional[float] = Field(
        default=None, description="seconds of the first retry's backoff; the n-th waits up to this · 2ⁿ [1]")
    truncated: Optional[str] = Field(
        default=None, description="a caption cut at max_tokens: keep (counted) | fail the image [keep]")
    prompt_file: Optional[str] = Field(
        default=None, description="UTF-8 text file whose content replaces the built-in caption prompt")
    api_key: Optional[str] = Field(default=None, description="bearer token; use EnvVar('STRATUM_CAPTION_API_KEY')")

    def caption_config(self) -> "CaptionConfig":
        """The caption pass's config, the same object `stratum process` builds from its --caption-* flags."""
        from stratum_core.passes.caption import CaptionConfig, api_key_from, read_prompt_file

        backend, url, model = (getattr(self, f) or os.environ.get(v) or None for f, v in CAPTION_ENV.items())
        backend = backend or "ollama"
        settings: dict[str, Any] = {"max_tokens": self.max_tokens, "concurrency": self.concurrency,
                                    "timeout": self.timeout_s, "retries": self.retries,
                                    "backoff_base": self.backoff_s, "on_truncated": self.truncated}
        if self.prompt_file:
            settings.update(prompt=read_prompt_file(Path(self.prompt_file)), prompt_file=self.prompt_file)
        # The key is read here, at the edge, from the variables the CLI reads for this backend.
        api_key = self.api_key or api_key_from(os.environ, backend)
        return CaptionConfig(backend=backend, url=url, model=model, api_key=api_key,
                             **{k: v for k, v in settings.items() if v is not None})


class StratumResource(dg.ConfigurableResource):
    """Input and output roots and the run options every pass shares (the `stratum process` options)."""

    input_root: str = Field(description="folder of source images (STRATUM_INPUT_DIR)")
    output_root: str = Field(description="dataset folder to write (STRATUM_OUTPUT_DIR)")
    model_dir: Optional[str] = Field(default=None, description="models as <hub id>/ (default $STRATUM_MODEL_DIR)")
    model_paths: dict[str, str] = Field(default_factory=dict, description="pass name → explicit weights path")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N; auto claims a free GPU")
    precision: str = Field(default="auto", description="auto | fp32 | tf32 | bf16 | fp16, or per pass: 'bf16,depth=fp32'")
    batch_size: Optional[int] = Field(default=None, description="images per batch (default: by device, as the CLI)")
    workers: Optional[int] = Field(default=None, description="decode threads (default: as the CLI, cores up to 8)")
    shard_size: int = Field(default=1000, description="images per new shard")
    offline: Optional[bool] = Field(default=None, description="never download weights (default $HF_HUB_OFFLINE)")
    pose_backend: str = Field(default="auto", description="pose runtime: auto | onnxruntime | torch "
                                                          "(`--pose-backend`)")
    redo: Optional[str] = Field(
        default=None, description="stale | all: every run also recomputes existing artifacts (`--redo`); a run "
                                  "tagged stratum/redo (the status sensor's stale re-runs) uses its tag")

    @property
    def input_dir(self) -> Path:
        return Path(self.input_root)

    @property
    def output_dir(self) -> Path:
        return Path(self.output_root)

    def shard_images(self, key: str) -> list[SourceImage]:
        from stratum_core.shards import shard_sources

        return shard_sources(self.input_dir, self.output_dir, key)

    def run_passes(self, pass_names: Sequence[str], key: str,
                   caption: CaptionServerResource | None = None, redo: Optional[str] = None) -> ShardRun:
        """Run the passes (plus metadata) over shard `key` in ONE engine run: each image is decoded once,
        models load once, and a server-bound pass gets its own lane. A GPU is claimed for this run only,
        and only when a model pass is among them. `redo` (stale | all), else the resource's, as `--redo`."""
        from stratum_core.devices import claim_device
        from stratum_core.engine import RunConfig, run
        from stratum_core.errors import ConfigError
        from stratum_core.passes import MODEL_PASSES, parse_passes
        from stratum_core.provenance import REDO_MODES

        mode = redo or self.redo or "none"
        if mode not in REDO_MODES:
            raise ConfigError(f"redo must be one of {', '.join(REDO_MODES)}, got {mode!r}")
        images = self.shard_images(key)
        names = parse_passes(list(pass_names))
        configs = self.pass_configs(names, caption)
        claim = claim_device(self.device if any(n in MODEL_PASSES for n in names) else "cpu")
        try:
            config = RunConfig(output_dir=self.output_dir, passes=names, options=self._options(claim.device),
                               pass_configs=configs, workers=self.workers or max(1, min(8, os.cpu_count() or 1)),
                               redo=mode)
            summary = run(config, images)
        finally:
            claim.release()
        return ShardRun(key, names, images, summary, claim.device)

    def pass_configs(self, names: Sequence[str], caption: CaptionServerResource | None = None) -> dict[str, Any]:
        """The config of each pass that has options, from the typed fields: the objects the CLI builds."""
        from stratum_core.passes.dwpose import PoseConfig

        builders = {"caption": lambda: (caption or CaptionServerResource()).caption_config(),
                    "pose": lambda: PoseConfig(backend=self.pose_backend)}
        return {n: builders[n]() for n in names if n in builders}

    def preflight(self, pass_names: Sequence[str], caption: CaptionServerResource | None = None,
                  download: Optional[bool] = None) -> list[Readiness]:
        """Which of the passes can run here (dependencies, weights, server), before any image is touched;
        weights are fetched first when `download` (default: when the run may download them). No device is claimed."""
        from stratum_core.passes import build_passes
        from stratum_core.preflight import check_passes

        names = list(pass_names)
        options = self._options("cpu")
        return check_passes(build_passes(names, options, self.pass_configs(names, caption)),
                            download=not options.offline if download is None else download)

    def _options(self, device: str):
        from stratum_core.models import model_dir_from_env, offline_from_env
        from stratum_core.passes.base import PassOptions

        return PassOptions(
            device=device, precision=self.precision, batch_size=self.batch_size,
            model_dir=Path(self.model_dir) if self.model_dir else model_dir_from_env(),
            model_paths={name: Path(path) for name, path in self.model_paths.items()},
            offline=offline_from_env() if self.offline is None else self.offline)


class HubResource(dg.ConfigurableResource):
    """The HuggingFace dataset repo that `publish_job` and `reconcile_job` write to (the `stratum publish` options)."""

    repo_id: str = Field(description="owner/name of the dataset repo (STRATUM_HUB_REPO)")
    token: Optional[str] = Field(
        default=None, description="write token (default: $HF_TOKEN at run time, else huggingface_hub's saved login)")
    endpoint: Optional[str] = Field(default=None, description="Hub URL (default huggingface.co)")
    layers: list[str] = Field(default_factory=lambda: ["caption"], description="passes to publish")
    offset: int = Field(default=_PUBLISH_DEFAULTS["offset"], description="first image (position in sorted order)")
    limit: Optional[int] = Field(default=_PUBLISH_DEFAULTS["limit"], description="images from offset (default: all)")
    license: str = Field(default=_PUBLISH_DEFAULTS["license"], description="license id for the card")
    attribution_file: Optional[str] = Field(
        default=_PUBLISH_DEFAULTS["attribution_file"], description="text file credited in the card and ATTRIBUTION.md")
    private: bool = Field(default=_PUBLISH_DEFAULTS["private"], description="create the repo private (when it does not exist)")
    rows_per_parquet: int = Field(default=_PUBLISH_DEFAULTS["rows_per_parquet"], description="images per parquet file")
    images_per_tar: Optional[int] = Field(default=_PUBLISH_DEFAULTS["images_per_tar"],
                                          description="images per tar (default: per layer, tars of about 4 GB)")
    max_tar_mb: float = Field(default=_PUBLISH_DEFAULTS["max_tar_mb"], description="split a tar above this size")
    chunks_per_commit: int = Field(default=_PUBLISH_DEFAULTS["chunks_per_commit"], description="chunk files per commit")
    folder_limit: int = Field(default=_PUBLISH_DEFAULTS["folder_limit"], description="entries per repo folder")
    commits_per_hour: float = Field(default=_PUBLISH_DEFAULTS["commits_per_hour"], description="commit pace")
    allow_mixed_revisions: bool = Field(
        default=_PUBLISH_DEFAULTS["allow_mixed_revisions"],
        description="publish a layer whose images come from different model revisions (listed in the manifest)")

    def publish_config(self) -> PublishConfig:
        """The same config object `stratum publish` builds from its flags."""
        return PublishConfig(hub_repo=self.repo_id, layers=tuple(self.layers), offset=self.offset, limit=self.limit,
                             license=self.license, attribution_file=self.attribution_file, private=self.private,
                             rows_per_parquet=self.rows_per_parquet, images_per_tar=self.images_per_tar,
                             max_tar_mb=self.max_tar_mb, chunks_per_commit=self.chunks_per_commit,
                             folder_limit=self.folder_limit, commits_per_hour=self.commits_per_hour,
                             allow_mixed_revisions=self.allow_mixed_revisions)

    def hub_token(self) -> Optional[str]:
        """The configured token, else $HF_TOKEN as the run sees it; None lets huggingface_hub use its saved
        login, as the CLI does. Read here, at run time: an unset HF_TOKEN must not fail loading or the run."""
        return self.token or os.environ.get("HF_TOKEN") or None
