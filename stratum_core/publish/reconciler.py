"""`reconcile`: rebuild manifest.json and README.md from the files actually in the repo."""

from __future__ import annotations

import logging

from stratum_core.publish.card import build_card
from stratum_core.publish.config import PublishConfig, ReconcileResult
from stratum_core.publish.hub import HubClient, ParentMoved, PublishError, RepoState
from stratum_core.publish.layout import (ATTRIBUTION_PATH, CARD_PATH, INDEX_SUFFIX, MANIFEST_PATH, index_path,
                                         parse_chunk_path)
from stratum_core.publish.manifest import build_manifest, dumps, same_content
from stratum_core.publish.publisher import read_attribution

log = logging.getLogger("stratum.publish")

KNOWN_FILES = {MANIFEST_PATH, CARD_PATH, ATTRIBUTION_PATH, ".gitattributes"}


def chunk_info_from_repo(hub: HubClient, state: RepoState) -> tuple[dict, list[str]]:
    """payload path → counts, exact from the chunk's index where present, else from its range label."""
    info: dict[str, dict] = {}
    problems: list[str] = []
    for path in sorted(state.files):
        if path in KNOWN_FILES or path.endswith(INDEX_SUFFIX):
            continue
        parsed = parse_chunk_path(path)
        if parsed is None:
            problems.append(f"{path}: not part of the stratum layout (ignored)")
            continue
        index = hub.read_json(state, index_path(path))
        if index is None:
            info[path] = {"count": None, "exact": False}
        else:
            info[path] = {"count": int(index.get("count", len(index.get("ids", [])))),
                          "counts": index.get("counts", {}), "exact": True}
    return info, problems


def _repo_text(hub: HubClient, state: RepoState, path: str) -> str | None:
    return hub.download(path, state.sha).decode("utf-8") if path in state.files else None


def reconcile(config: PublishConfig, dry_run: bool = False, token: str | None = None,
              endpoint: str | None = None) -> ReconcileResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    hub = HubClient(config.hub_repo, token=token, endpoint=endpoint, retry=config.retry)
    for attempt in range(config.commit_retries + 1):
        state = hub.read_state()
        info, problems = chunk_info_from_repo(hub, state)
        manifest = build_manifest(info)
        attribution = read_attribution(config, hub, state)
        card = build_card(config.hub_repo, manifest, config.license, attribution)
        current_card = _repo_text(hub, state, CARD_PATH)
        orphans = [p for p in state.files if p.endswith(INDEX_SUFFIX)
                   and not any(index_path(c) == p for c in info)]
        problems += [f"{p}: index without its chunk (deleted)" for p in orphans]
        # --attribution-file rewrites ATTRIBUTION.md only when its text differs from the repo's copy.
        new_attribution = bool(config.attribution_file) and \
            attribution != _repo_text(hub, state, ATTRIBUTION_PATH)
        changed = not same_content(manifest, state.manifest) or card != current_card or bool(orphans) or \
            new_attribution
        result = ReconcileResult(config.hub_repo, manifest, card, changed, problems=problems)
        if dry_run or not changed:
            return result
        operations = [CommitOperationAdd(MANIFEST_PATH, dumps(manifest)), CommitOperationAdd(CARD_PATH, card.encode())]
        operations += [CommitOperationDelete(p) for p in orphans]
        if new_attribution:
            operations.append(CommitOperationAdd(ATTRIBUTION_PATH, attribution.encode()))
        try:
            result.committed = hub.commit(operations, "stratum reconcile: rebuild manifest and card", state.sha)
            return result
        except ParentMoved:
            log.warning("reconcile: the repo moved; re-reading it (attempt %d)", attempt + 1)
    raise PublishError(f"{config.hub_repo} kept moving; gave up reconciling")
