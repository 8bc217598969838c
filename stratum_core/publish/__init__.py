"""Publish chosen layers of a dataset to a HuggingFace dataset repo, and reconcile its manifest.

API (the CLI and the Dagster publish asset call these):
`publish(dataset_dir, PublishConfig(...), token=None, endpoint=None) -> PublishResult`
`publish_new(dataset_dir, config, ..., ready=None) -> PublishResult` (only what is new since the last publish)
`plan(dataset_dir, config, ...) -> LayoutPlan` (what publish would do; uploads nothing)
`reconcile(PublishConfig(...), dry_run=False, token=None, endpoint=None) -> ReconcileResult`
"""

from __future__ import annotations

from stratum_core.publish.config import (DEFAULT_LICENSE, PUBLISHABLE_LAYERS, PublishConfig, PublishResult,
                                         ReconcileResult, RetryPolicy, check_repo_id)


def publish(dataset_dir, config: PublishConfig, token: str | None = None,
            endpoint: str | None = None) -> PublishResult:
    """Publish `config.layers` of the images [offset, offset+limit) of `dataset_dir`, one commit per batch."""
    from stratum_core.publish.publisher import publish as _publish

    return _publish(dataset_dir, config, token=token, endpoint=endpoint)


def publish_new(dataset_dir, config: PublishConfig, token: str | None = None, endpoint: str | None = None,
                ready=None) -> PublishResult:
    """Publish only what follows the repo's last published position (shards in registration order)."""
    from stratum_core.publish.publisher import publish_new as _publish_new

    return _publish_new(dataset_dir, config, token=token, endpoint=endpoint, ready=ready)


def plan(dataset_dir, config: PublishConfig, token: str | None = None, endpoint: str | None = None,
         offline: bool = False):
    """The LayoutPlan `publish` would carry out (files, folders, largest folder, bytes, commits); uploads nothing."""
    from stratum_core.publish.publisher import plan as _plan

    return _plan(dataset_dir, config, token=token, endpoint=endpoint, offline=offline)


def reconcile(config: PublishConfig, dry_run: bool = False, token: str | None = None,
              endpoint: str | None = None) -> ReconcileResult:
    """Rebuild manifest.json and README.md from the files in the repo; commit them unless `dry_run`."""
    from stratum_core.publish.reconciler import reconcile as _reconcile

    return _reconcile(config, dry_run=dry_run, token=token, endpoint=endpoint)


__all__ = ["DEFAULT_LICENSE", "PUBLISHABLE_LAYERS", "PublishConfig", "PublishResult", "ReconcileResult",
           "RetryPolicy", "check_repo_id", "plan", "publish", "publish_new", "reconcile"]
