"""The Hub client: huggingface_hub calls with retries of transient errors and parent-pinned commits.

Retried: 429 (waiting Retry-After when given), 5xx, dropped connections and timeouts, with exponential
backoff. Any other 4xx fails at once with the server's message. The token is passed to huggingface_hub
and never formatted into a message or a log line.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from stratum_core.errors import StratumError
from stratum_core.publish.config import RetryPolicy, check_repo_id
from stratum_core.publish.layout import MANIFEST_PATH

log = logging.getLogger("stratum.publish")

T = TypeVar("T")
REPO_TYPE = "dataset"


class PublishError(StratumError):
    """The Hub refused a request (or kept failing after all retries)."""


class ParentMoved(StratumError):
    """Someone committed between our read and our commit; re-read the repo and try again."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str | None
    sha256: str | None  # LFS files only


@dataclass
class RepoState:
    """The repo at one commit: its oid, files and manifest (None when absent or unreadable)."""

    sha: str
    files: dict[str, RemoteFile] = field(default_factory=dict)
    manifest: dict | None = None
    _chunks: dict | None = field(default=None, repr=False, compare=False)

    def chunk(self, path: str):
        """The layout.ChunkFile at `path` (None when it is not a chunk of this repo)."""
        if self._chunks is None:
            from stratum_core.publish.layout import list_chunks

            self._chunks = {c.path: c for c in list_chunks(self.files)}
        return self._chunks.get(path)


class Pacer:
    """At most `per_hour` commits in any sliding hour: `wait()` sleeps until the next one may go."""

    WINDOW_S = 3600.0

    def __init__(self, per_hour: float, clock: Callable[[], float], sleep: Callable[[float], None]):
        self.per_hour, self.clock, self.sleep = per_hour, clock, sleep
        self.times: list[float] = []  # clock() of recent commits (ours, and the repo's seeded at start)

    def wait(self) -> float:
        now = self.clock()
        # 1 ms of slack: commit dates read back from the Hub carry rounding of their own.
        self.times = [t for t in self.times if now - t < self.WINDOW_S - 1e-3]
        if len(self.times) < self.per_hour:
            return 0.0
        wait = self.times[-int(self.per_hour)] + self.WINDOW_S - now
        log.info("publish: %d commits in the last hour (limit %g); waiting %.0fs before the next one",
                 len(self.times), self.per_hour, wait)
        self.sleep(wait)
        return wait

    def committed(self) -> None:
        self.times.append(self.clock())


# Module-level so tests can replace the clock and the sleep of every client (pacing waits an hour).
_clock = time.time
_sleep = time.sleep

# Network errors of whichever HTTP client the installed huggingface_hub uses (2.x: httpx2, 1.x: httpx).
_TRANSIENT_NAMES = ("TimeoutException", "NetworkError", "RemoteProtocolError")


def _transient_exceptions() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.extend(getattr(module, name) for name in _TRANSIENT_NAMES if hasattr(module, name))
    return tuple(found)


class HubClient:
    """One repo on one endpoint; every call goes through `call` (retries) — nothing here prints the token."""

    def __init__(self, repo_id: str, token: str | None = None, endpoint: str | None = None,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] | None = None,
                 commits_per_hour: float = float("inf"), clock: Callable[[], float] | None = None):
        from huggingface_hub import HfApi

        self.repo_id = check_repo_id(repo_id)
        self.retry = retry or RetryPolicy()
        self.sleep = sleep or _sleep
        self.clock = clock or _clock
        self.api = HfApi(endpoint=endpoint, token=token)
        self.waited_s = 0.0
        self.pacer = Pacer(commits_per_hour, self.clock, self.sleep)
        self._json: dict[tuple[str, str], dict | None] = {}

    # ---- retries ---------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` under the publisher's retry policy (the loader's Hub reads use it too)."""
        from huggingface_hub.errors import HfHubHTTPError

        transient = _transient_exceptions()
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                message = exc.server_message or (exc.response.reason_phrase if exc.response is not None else "")
                if what == "commit" and status == 412:  # Precondition Failed: main is no longer our parent
                    raise ParentMoved(f"{what}: the repo moved ({status})") from None
                if status != 429 and not (status is not None and status >= 500):
                    raise PublishError(f"Hub refused {what} on {self.repo_id}: HTTP {status}: {message}") from None
                if attempt == self.retry.attempts:
                    raise PublishError(f"{what} on {self.repo_id} still failing after {attempt} attempts: "
                                       f"HTTP {status}: {message}") from None
                wait = self._retry_after(exc) if status == 429 else None
                self._wait(what, attempt, f"HTTP {status}", wait)
            except transient as exc:
                if attempt == self.retry.attempts:
                    raise PublishError(f"{what} on {self.repo_id}: connection failed after {attempt} attempts: "
                                       f"{type(exc).__name__}") from None
                self._wait(what, attempt, type(exc).__name__, None)
            except RuntimeError as exc:
                # huggingface_hub ends an LFS upload that kept failing (after its own tries) with a bare
                # RuntimeError("Error while uploading ..."): transient like a 5xx; nothing is committed yet.
                if what != "preupload" or "Error while uploading" not in str(exc):
                    raise
                if attempt == self.retry.attempts:
                    raise PublishError(f"{what} on {self.repo_id}: LFS upload still failing after {attempt} "
                                       f"attempts: {_first_line(exc)}") from None
                self._wait(what, attempt, "LFS upload failed", None)
        raise AssertionError("unreachable")

    def seed_pace(self) -> None:
        """Count the repo's commits of the last hour (anyone's) toward the pace, so a re-run after an
        interruption keeps it; a Hub that cannot list commits leaves only this run's own."""
        now = self.clock()
        try:
            commits = self.call("list_repo_commits", lambda: list(self.api.list_repo_commits(
                self.repo_id, repo_type=REPO_TYPE)))
        except (PublishError, KeyError, TypeError, ValueError) as exc:
            log.warning("publish: cannot list the repo's commits (%s); pacing counts this run's only", exc)
            return
        # A commit dated a little in our future is the Hub's clock running ahead (or rounding): it is recent.
        ages = [max(0.0, now - c.created_at.timestamp()) for c in commits if getattr(c, "created_at", None)]
        self.pacer.times = sorted(now - age for age in ages if age < Pacer.WINDOW_S)

    def _retry_after(self, exc) -> float | None:
        value = exc.response.headers.get("Retry-After") if exc.response is not None else None
        try:
            return min(float(value), self.retry.max_retry_after_s) if value is not None else None
        except ValueError:
            return None

    def _wait(self, what: str, attempt: int, why: str, retry_after: float | None) -> None:
        wait = retry_after if retry_after is not None else \
            min(self.retry.backoff_s * 2 ** (attempt - 1), self.retry.max_backoff_s)
        log.warning("%s: %s, retrying in %.1fs (attempt %d/%d)", what, why, wait, attempt + 1, self.retry.attempts)
        self.waited_s += wait
        self.sleep(wait)

    # ---- calls -----------------------------------------------------------------------------
    def ensure_repo(self, private: bool) -> None:
        self.call("create_repo", self.api.create_repo, self.repo_id, repo_type=REPO_TYPE, private=private,
                   exist_ok=True)

    def read_state(self) -> RepoState:
        """Head commit, file list and manifest of `main` (all read at one pinned commit)."""
        info = self.call("repo_info", self.api.dataset_info, self.repo_id, revision="main")
        sha = info.sha
        entries = self.call("list_repo_tree", lambda: list(self.api.list_repo_tree(
            self.repo_id, repo_type=REPO_TYPE, revision=sha, recursive=True)))
        files = {}
        for entry in entries:
            if hasattr(entry, "blob_id"):
                files[entry.path] = RemoteFile(entry.path, entry.size, entry.blob_id,
                                               entry.lfs.sha256 if entry.lfs else None)
        manifest = None
        if MANIFEST_PATH in files:
            try:
                manifest = json.loads(self.download(MANIFEST_PATH, sha))
            except ValueError:
                log.warning("manifest.json in %s is not valid JSON; rebuilding it", self.repo_id)
        return RepoState(sha, files, manifest)

    def read_state_if_exists(self) -> RepoState | None:
        """`read_state`, or None when the repo does not exist (yet)."""
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.api.dataset_info(self.repo_id, revision="main")
        except HfHubHTTPError as exc:  # RepositoryNotFoundError is one; a bare 404 from other servers too
            if exc.response is not None and exc.response.status_code == 404:
                return None
        except Exception:  # noqa: BLE001 - read_state's retries and messages handle the rest
            pass
        return self.read_state()

    def download(self, path: str, revision: str) -> bytes:
        from huggingface_hub import hf_hub_download

        local = self.call(f"download {path}", hf_hub_download, self.repo_id, path, repo_type=REPO_TYPE,
                           revision=revision, endpoint=self.api.endpoint, token=self.api.token)
        with open(local, "rb") as f:
            return f.read()

    def read_json(self, state: "RepoState", path: str) -> dict | None:
        """The JSON object stored at `path` in `state`; None when absent or not a JSON object (logged)."""
        if path not in state.files:
            return None
        key = (state.sha, path)
        if key not in self._json:  # a commit's files never change: read each once
            try:
                value = json.loads(self.download(path, state.sha))
            except ValueError:
                value = None
            if not isinstance(value, dict):
                log.warning("publish: %s in %s is not a JSON object; ignored", path, self.repo_id)
                value = None
            self._json[key] = value
        return self._json[key]

    def preupload(self, additions: Sequence) -> None:
        """Upload large files to LFS storage ahead of the commit (huggingface_hub shows progress bars)."""
        self.call("preupload", self.api.preupload_lfs_files, self.repo_id, additions=list(additions),
                   repo_type=REPO_TYPE)

    def commit(self, operations: Sequence, message: str, parent: str) -> str:
        """One commit on top of `parent`, paced; raises ParentMoved when main moved since."""
        self.waited_s += self.pacer.wait()
        info = self.call("commit", self.api.create_commit, self.repo_id, operations=list(operations),
                          commit_message=message, repo_type=REPO_TYPE, parent_commit=parent)
        self.pacer.committed()
        return info.oid


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
