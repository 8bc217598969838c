"""`reconcile`: rebuild manifest.json and README.md from the files actually in the repo."""

from __future__ import annotations

import logging

from stratum_core.publish.card import build_card
from stratum_core.publish.config import PublishConfig, ReconcileResult
from stratum_core.publish.hub import HubClient, ParentMoved, PublishError, RepoState
from stratum_core.publish.layout import (ATTRIBUTION_PATH, CARD_PATH, INDEX_SUFFIX, MANIFEST_PATH, index_entry,
                                         list_chunks, parse_chunk_path)
from stratum_core.publish.manifest import build_manifest, dumps, manifest_provenance, same_content
from stratum_core.publish.publisher import INDEX_VERSION, live_entries, index_bytes, read_attribution

log = logging.getLogger("stratum.publish")

KNOWN_FILES = {MANIFEST_PATH, CARD_PATH, ATTRIBUTION_PATH, ".gitattributes"}


def chunk_info_from_repo(hub: HubClient, state: RepoState) -> tuple[dict, list[str]]:
    """payload path → counts, exact from the chunk's index entry where present, else from its range label
    (both layouts: flat chunks with an index each, nested ones with one index per folder and batch)."""
    info: dict[str, dict] = {}
    problems: list[str] = []
    for path in sorted(state.files):
        if path not in KNOWN_FILES and not path.endswith(INDEX_SUFFIX) and parse_chunk_path(path) is None:
            problems.append(f"{path}: not part of the stratum layout (ignored)")
    for chunk in list_chunks(state.files):
        entry = index_entry(hub.read_json(state, chunk.index), chunk) if chunk.index else None
        if entry is None:
            info[chunk.path] = {"count": None, "exact": False}
        else:
            info[chunk.path] = {"count": int(entry.get("count", len(entry.get("ids", [])))),
                                "counts": entry.get("counts", {}), "exact": True}
    return info, problems


def stale_indexes(hub: HubClient, state: RepoState) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Index files to rewrite (nested ones listing chunks that are gone) and to delete (indexes of no chunk)."""
    indexed = {c.index for c in list_chunks(state.files) if c.index}
    writes: list[tuple[str, bytes]] = []
    deletes = [p for p in state.files if p.endswith(INDEX_SUFFIX) and p not in indexed]
    for path in sorted(indexed):
        index = hub.read_json(state, path) or {}
        if index.get("version", 1) < 2:
            continue
        live = live_entries(hub, state, path, lambda _: True)
        if len(live) < len(index.get("chunks", {})):
            writes.append((path, index_bytes({"version": INDEX_VERSION, "chunks": dict(sorted(live.items()))})))
    return writes, sorted(set(deletes))


def _repo_text(hub: HubClient, state: RepoState, path: str) -> str | None:
    return hub.download(path, state.sha).decode("utf-8") if path in state.files else None


def reconcile(config: PublishConfig, dry_run: bool = False, token: str | None = None,
              endpoint: str | None = None) -> ReconcileResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    hub = HubClient(config.hub_repo, token=token, endpoint=endpoint, retry=config.retry)
    for attempt in range(config.commit_retries + 1):
        state = hub.read_state()
        info, problems = chunk_info_from_repo(hub, state)
        manifest = build_manifest(info, chunking=(state.manifest or {}).get("chunking"),
                                  provenance=manifest_provenance(state.manifest))
        attribution = read_attribution(config, hub, state)
        card = build_card(config.hub_repo, manifest, config.license, attribution)
        current_card = _repo_text(hub, state, CARD_PATH)
        rewrites, orphans = stale_indexes(hub, state)
        problems += [f"{p}: index without its chunk (deleted)" for p in orphans]
        problems += [f"{p}: lists chunks that are gone (rewritten)" for p, _ in rewrites]
        # --attribution-file rewrites ATTRIBUTION.md only when its text differs from the repo's copy.
        new_attribution = bool(config.attribution_file) and \
            attribution != _repo_text(hub, state, ATTRIBUTION_PATH)
        changed = not same_content(manifest, state.manifest) or card != current_card or bool(orphans) or \
            bool(rewrites) or new_attribution
        result = ReconcileResult(config.hub_repo, manifest, card, changed, problems=problems)
        if dry_run or not changed:
            return result
        operations = [CommitOperationAdd(MANIFEST_PATH, dumps(manifest)), CommitOperationAdd(CARD_PATH, card.encode())]
        operations += [CommitOperationDelete(p) for p in orphans]
        operations += [CommitOperationAdd(p, data) for p, data in rewrites]
        if new_attribution:
            operations.append(CommitOperationAdd(ATTRIBUTION_PATH, attribution.encode()))
        try:
            result.committed = hub.commit(operations, "stratum reconcile: rebuild manifest and card", state.sha)
            return result
        except ParentMoved:
            log.warning("reconcile: the repo moved; re-reading it (attempt %d)", attempt + 1)
    raise PublishError(f"{config.hub_repo} kept moving; gave up reconciling")
