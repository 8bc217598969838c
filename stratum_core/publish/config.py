"""Publish options and results: the frozen config the CLI and Dagster build, and what a run reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stratum_core.artifacts import pass_names
from stratum_core.errors import ConfigError

DEFAULT_LICENSE = "cc-by-nc-sa-4.0"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# Layers a user can publish: every pass that writes an artifact, except metadata (always in the parquet).
PUBLISHABLE_LAYERS: tuple[str, ...] = tuple(p for p in pass_names() if p != "metadata")


def check_repo_id(repo_id: str) -> str:
    """Refuse anything but `owner/name` (no URLs, no extra slashes, no `..`)."""
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError(f"--hub-repo must be owner/name, got {repo_id!r}")
    return repo_id


@dataclass(frozen=True)
class RetryPolicy:
    """How transient Hub errors (429, 5xx, dropped connections) are retried."""

    attempts: int = 6
    backoff_s: float = 2.0  # first wait; doubles each time
    max_backoff_s: float = 120.0
    max_retry_after_s: float = 600.0  # cap on a server's Retry-After

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError("retry attempts must be >= 1 and backoff >= 0")


@dataclass(frozen=True)
class PublishConfig:
    """What to publish where. `layers` are pass names (caption, dinov3, t5, pose, seg, depth, normal, pixel)."""

    hub_repo: str
    layers: tuple[str, ...] = ("caption",)
    offset: int = 0
    limit: int | None = None
    license: str = DEFAULT_LICENSE
    attribution_file: str | None = None  # local path; its text goes into the card and ATTRIBUTION.md
    private: bool = False
    rows_per_parquet: int = 10_000
    images_per_tar: int | None = None  # None: per layer, as many as make a tar of about target_tar_mb
    max_tar_mb: float = 4800.0  # a tar that would be larger is split (the Hub recommends 1-5 GB files)
    target_tar_mb: float = 4000.0  # what per-layer sizing aims at (capped by max_tar_mb)
    chunks_per_commit: int = 50  # chunk files per commit (each commit also carries manifest and card)
    folder_limit: int = 9_999  # entries per folder (the Hub: < 10,000)
    file_limit: int = 99_999  # files per repo (the Hub: < 100,000)
    commits_per_hour: float = 100.0  # pace (the Hub allows about 128 an hour per repo)
    commit_retries: int = 5  # re-reads after losing a race on the parent commit
    allow_mixed_revisions: bool = False  # publish a layer whose images come from several model revisions
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        check_repo_id(self.hub_repo)
        layers = tuple(self.layers) if not isinstance(self.layers, str) else \
            tuple(x.strip() for x in self.layers.split(",") if x.strip())
        object.__setattr__(self, "layers", layers)
        unknown = [x for x in layers if x not in PUBLISHABLE_LAYERS]
        if unknown:
            raise ConfigError(f"unknown layer(s) {', '.join(unknown)}; choose from {', '.join(PUBLISHABLE_LAYERS)}")
        if self.offset < 0 or (self.limit is not None and self.limit < 0):
            raise ConfigError("--offset and --limit must be >= 0")
        if self.chunks_per_commit < 1:
            raise ConfigError("chunks_per_commit must be >= 1")
        if self.rows_per_parquet < 1 or (self.images_per_tar is not None and self.images_per_tar < 1) or \
                self.max_tar_mb <= 0 or self.target_tar_mb <= 0:
            raise ConfigError("--rows-per-parquet and --images-per-tar must be >= 1, --max-tar-mb > 0")
        if self.folder_limit < 2 or self.file_limit < 1 or self.commits_per_hour <= 0:
            raise ConfigError("--folder-limit must be >= 2, --commits-per-hour > 0")
        if not self.license or any(c.isspace() for c in self.license):
            raise ConfigError(f"--license must be one SPDX-like id, got {self.license!r}")


@dataclass
class PublishResult:
    """What one publish did: commits made, files uploaded, images per layer, chunks skipped as present."""

    repo_id: str
    commits: list[str] = field(default_factory=list)  # commit oids, one per batch
    uploaded_files: list[str] = field(default_factory=list)
    skipped_chunks: list[str] = field(default_factory=list)  # already on the Hub with the same content
    images: dict[str, int] = field(default_factory=dict)  # layer → images in the published chunks
    total_images: int = 0  # images in the manifest after publishing
    bytes_uploaded: int = 0
    shards: dict[str, str] = field(default_factory=dict)  # shard key → range of its positions in this publish
    provenance: dict[str, dict] = field(default_factory=dict)  # layer → what produced it (layer_provenance)

    @property
    def changed(self) -> bool:
        return bool(self.commits)

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "commits": self.commits, "uploaded_files": self.uploaded_files,
                "skipped_chunks": self.skipped_chunks, "images": self.images,
                "total_images": self.total_images, "bytes_uploaded": self.bytes_uploaded,
                "shards": self.shards, "provenance": self.provenance}


@dataclass
class ReconcileResult:
    """The manifest and card rebuilt from the repo's files, and whether they were committed."""

    repo_id: str
    manifest: dict
    card: str
    changed: bool  # the rebuilt manifest/card differ from the repo's
    committed: str | None = None  # commit oid, None on --dry-run or when nothing changed
    problems: list[str] = field(default_factory=list)  # files that do not follow the layout

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "manifest": self.manifest, "changed": self.changed,
                "committed": self.committed, "problems": self.problems}
