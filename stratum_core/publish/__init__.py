"""Publish chosen layers of a dataset to a HuggingFace dataset repo, and reconcile its manifest.

API (the CLI and the Dagster publish asset call these):
`publish(dataset_dir, PublishConfig(...), token=None, endpoint=None) -> PublishResult`
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


def reconcile(config: PublishConfig, dry_run: bool = False, token: str | None = None,
              endpoint: str | None = None) -> ReconcileResult:
    """Rebuild manifest.json and README.md from the files in the repo; commit them unless `dry_run`."""
    from stratum_core.publish.reconciler import reconcile as _reconcile

    return _reconcile(config, dry_run=dry_run, token=token, endpoint=endpoint)


__all__ = ["DEFAULT_LICENSE", "PUBLISHABLE_LAYERS", "PublishConfig", "PublishResult", "ReconcileResult",
           "RetryPolicy", "check_repo_id", "publish", "reconcile"]
