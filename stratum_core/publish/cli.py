"""`stratum publish` and `stratum reconcile`: build a PublishConfig from flags, read HF_TOKEN here only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from stratum_core.errors import StratumError
from stratum_core.publish.config import DEFAULT_LICENSE, PUBLISHABLE_LAYERS, PublishConfig

log = logging.getLogger("stratum.publish")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish layers of a dataset to a HuggingFace dataset repo")
    p.add_argument("dataset_dir", type=Path)
    _common(p)
    p.add_argument("--layers", default="caption",
                   help=f"comma-separated layers: {','.join(PUBLISHABLE_LAYERS)} (default caption)")
    p.add_argument("--offset", type=int, default=0, help="first image (position: sorted order, or shard registration order), default 0")
    p.add_argument("--limit", type=int, default=None, help="number of images from --offset (default: all)")
    p.add_argument("--private", action="store_true", help="create the repo private (when it does not exist)")
    p.add_argument("--rows-per-parquet", type=int, default=10_000, help="images per parquet file (default 10000)")
    p.add_argument("--images-per-tar", type=int, default=None,
                   help="images per tar, every layer (default: per layer, tars of about 4000 MB)")
    p.add_argument("--max-tar-mb", type=float, default=4800.0, help="split a tar above this size (default 4800)")
    p.add_argument("--chunks-per-commit", type=int, default=50, help="chunk files per commit (default 50)")
    p.add_argument("--folder-limit", type=int, default=9_999,
                   help="entries per repo folder (default 9999: the Hub allows < 10,000)")
    p.add_argument("--commits-per-hour", type=float, default=100.0,
                   help="commit pace (default 100: the Hub allows about 128 an hour)")
    p.add_argument("--allow-mixed-revisions", action="store_true",
                   help="publish a layer whose images were produced by different model revisions (the manifest "
                        "and card list the mix); default: refuse it")
    p.add_argument("--plan", action="store_true",
                   help="print the planned files, folders, bytes and commits and what produced each layer "
                        "(model, revision, pass version; mixed revisions publish would refuse); upload nothing, "
                        "read no arrays")
    p.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="also log every HTTP request")
    p.set_defaults(handler=cmd_publish)

    r = sub.add_parser("reconcile", help="rebuild manifest.json and the card from the files in the repo")
    _common(r)
    r.add_argument("--dry-run", action="store_true", help="print the rebuilt manifest, change nothing")
    r.set_defaults(handler=cmd_reconcile)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub-repo", required=True, help="owner/name of the dataset repo")
    p.add_argument("--license", default=DEFAULT_LICENSE, help=f"license id for the card (default {DEFAULT_LICENSE})")
    p.add_argument("--attribution-file", default=None, help="text file credited in the card and ATTRIBUTION.md")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default $HF_ENDPOINT or huggingface.co)")


def _token() -> str | None:
    # Read at the edge only; huggingface_hub falls back to its saved login when this is None.
    return os.environ.get("HF_TOKEN") or None


def quiet_http(verbose: bool) -> None:
    """huggingface_hub's HTTP client logs every request at INFO: keep those at DEBUG unless --verbose."""
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def cmd_publish(args: argparse.Namespace) -> int:
    if not args.dataset_dir.is_dir():
        raise StratumError(f"no dataset at {args.dataset_dir}")
    from stratum_core.publish import plan, publish

    quiet_http(args.verbose)
    config = PublishConfig(hub_repo=args.hub_repo, layers=args.layers, offset=args.offset, limit=args.limit,
                           license=args.license, attribution_file=args.attribution_file, private=args.private,
                           rows_per_parquet=args.rows_per_parquet, images_per_tar=args.images_per_tar,
                           max_tar_mb=args.max_tar_mb, chunks_per_commit=args.chunks_per_commit,
                           folder_limit=args.folder_limit, commits_per_hour=args.commits_per_hour,
                           allow_mixed_revisions=args.allow_mixed_revisions)
    if args.plan:
        layout = plan(args.dataset_dir, config, token=_token(), endpoint=args.endpoint)
        sys.stdout.write((json.dumps(layout.to_dict(), indent=1) if args.json else layout.summary()) + "\n")
        return 0 if layout.publishable else 2
    result = publish(args.dataset_dir, config, token=_token(), endpoint=args.endpoint)
    if result.commits:
        sys.stdout.write(f"published {len(result.uploaded_files)} file(s) to {result.repo_id} in "
                         f"{len(result.commits)} commit(s); {result.total_images} images in the manifest\n")
    else:
        sys.stdout.write(f"{result.repo_id} already up to date ({len(result.skipped_chunks)} chunk(s) unchanged)\n")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from stratum_core.publish import reconcile

    quiet_http(False)
    config = PublishConfig(hub_repo=args.hub_repo, license=args.license, attribution_file=args.attribution_file)
    result = reconcile(config, dry_run=args.dry_run, token=_token(), endpoint=args.endpoint)
    for problem in result.problems:
        log.warning("reconcile: %s", problem)
    if args.dry_run:
        sys.stdout.write(json.dumps(result.manifest, indent=1) + "\n")
        sys.stdout.write(("would update" if result.changed else "no change to") + " manifest.json and README.md\n")
    elif result.committed:
        sys.stdout.write(f"reconciled {result.repo_id}: {result.manifest['total_images']} images "
                         f"(commit {result.committed[:12]})\n")
    else:
        sys.stdout.write(f"{result.repo_id}: manifest and card already match the files\n")
    return 0
