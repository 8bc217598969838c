"""A loopback fake of the HuggingFace Hub HTTP API, enough for huggingface_hub 2.x with HF_HUB_DISABLE_XET=1.

Endpoints: repo create, validate-yaml, repo/revision info, preupload, LFS batch + PUT upload, NDJSON commit
(with parentCommit checks → 412), commit history, recursive tree listing, resolve (GET/HEAD). Fault injection per
(method, path regex): answer 429 + Retry-After, answer 5xx, or drop the connection mid-request; or, with
`applied=True`, carry the request out and then lose its reply (answer the error, or drop).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

REPO = r"(?P<repo>[^/]+/[^/]+)"
PREFIX = r"(?P<kind>datasets|models|spaces)"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": len(self.data), "oid": git_blob_sha(self.data)}
        if self.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(self.data).hexdigest(), "size": len(self.data), "pointerSize": 134}
        return entry


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, StoredFile]
    created: float = 0.0  # FakeHub.clock() when committed


@dataclass
class Repo:
    repo_id: str
    kind: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]


@dataclass
class Fault:
    """Answer matching requests with `action` ("429", "500", "503", "drop") `times` times."""

    method: str
    path: str  # regex searched in the URL path
    action: str
    times: int = 1
    retry_after: int | None = None
    applied: bool = False  # the request takes effect before the fault replaces its answer
    hits: int = 0


class FakeHub:
    """The server plus its state; `url` is the endpoint to give huggingface_hub."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[float, str, str, int]] = []  # (time, method, path, status)
        self.auth_headers: set[str] = set()
        self.lock = threading.RLock()
        self.clock = time.time  # commit dates (a test that fakes the publisher's clock sets the same one here)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- state helpers for tests -----------------------------------------------------------
    def create_repo(self, repo_id: str, kind: str = "datasets", private: bool = False) -> Repo:
        with self.lock:
            key = (kind, repo_id)
            if key not in self.repos:
                repo = Repo(repo_id, kind, private)
                repo.commits.append(Commit(self._new_oid("init"), None, "initial commit",
                                           {".gitattributes": StoredFile(b"*.parquet filter=lfs\n", False)},
                                           self.clock()))
                self.repos[key] = repo
            return self.repos[key]

    def repo(self, repo_id: str, kind: str = "datasets") -> Repo:
        return self.repos[(kind, repo_id)]

    def files(self, repo_id: str, kind: str = "datasets") -> dict[str, bytes]:
        with self.lock:
            return {p: f.data for p, f in self.repo(repo_id, kind).head.files.items()}

    def put_files(self, repo_id: str, files: dict[str, bytes], kind: str = "datasets",
                  delete: tuple[str, ...] = (), message: str = "hand edit") -> str:
        """Commit directly (as a person editing the repo on the website would)."""
        with self.lock:
            repo = self.create_repo(repo_id, kind)
            new_files = dict(repo.head.files)
            for path in delete:
                new_files.pop(path)
            for path, data in files.items():
                new_files[path] = StoredFile(data, b"\0" in data[:512] or len(data) > 10_000_000)
            return self._commit(repo, new_files, message)

    def add_fault(self, method: str, path: str, action: str, times: int = 1,
                  retry_after: int | None = None, applied: bool = False) -> Fault:
        fault = Fault(method, path, action, times, retry_after, applied)
        with self.lock:
            self.faults.append(fault)
        return fault

    def count(self, method: str, path_regex: str, status: int | None = None) -> int:
        return sum(1 for _, m, p, s in self.requests
                   if m == method and re.search(path_regex, p) and (status is None or s == status))

    # ---- internals -------------------------------------------------------------------------
    def _new_oid(self, seed: str) -> str:
        return hashlib.sha1(f"{seed}-{time.time_ns()}-{len(self.requests)}".encode()).hexdigest()

    def _commit(self, repo: Repo, files: dict[str, StoredFile], message: str) -> str:
        commit = Commit(self._new_oid(message), repo.head.oid, message, files, self.clock())
        repo.commits.append(commit)
        return commit.oid

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and re.search(fault.path, path) and fault.hits < fault.times:
                    fault.hits += 1
                    return fault
        return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    lost_reply: Fault | None = None  # set while an applied request runs: its answer is replaced by the fault

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    # ---- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        if self.lost_reply is not None:
            fault, self.lost_reply = self.lost_reply, None
            self._fail(fault, body_read=True)
            return
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.fake.requests.append((time.monotonic(), self.command, urlparse(self.path).path, status))

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Message": message})

    def _handle(self) -> None:
        auth = self.headers.get("Authorization")
        if auth:
            self.fake.auth_headers.add(auth)
        path = unquote(urlparse(self.path).path)
        fault = self.fake.take_fault(self.command, path)
        if fault is not None and not fault.applied:
            self._fail(fault, body_read=False)
            return
        self.lost_reply = fault
        for method, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and method == self.command:
                try:
                    handler(self, **match.groupdict())
                except KeyError as exc:
                    self._error(404, f"not found: {exc}")
                return
        self._error(404, f"no route for {self.command} {path}")

    do_GET = do_POST = do_PUT = do_HEAD = _handle

    def _fail(self, fault: Fault, body_read: bool) -> None:
        """Answer `fault` instead of the real reply (after reading the body, unless the handler did)."""
        path = unquote(urlparse(self.path).path)
        if fault.action == "drop":
            # Read (part of) the request, then vanish without answering: a dropped connection.
            if not body_read:
                self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
            self.fake.requests.append((time.monotonic(), self.command, path, 0))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if not body_read:
            self._body()
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        self._send(int(fault.action), {"error": f"injected {fault.action}"}, headers)

    def _repo(self, kind: str, repo: str) -> Repo:
        try:
            return self.fake.repo(repo, kind)
        except KeyError:
            raise KeyError(f"repository {repo}") from None

    def _revision(self, repo: Repo, rev: str) -> Commit:
        if rev in ("main", None, ""):
            return repo.head
        for commit in repo.commits:
            if commit.oid == rev:
                return commit
        raise KeyError(f"revision {rev}")

    # ---- endpoints -------------------------------------------------------------------------
    def create(self) -> None:
        payload = json.loads(self._body())
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        kind = {"dataset": "datasets", "model": "models", "space": "spaces"}[payload.get("type") or "model"]
        with self.fake.lock:
            exists = (kind, repo_id) in self.fake.repos
            self.fake.create_repo(repo_id, kind, bool(payload.get("private")))
        prefix = "" if kind == "models" else f"{kind}/"
        url = f"{self.fake.url}/{prefix}{repo_id}"
        if exists:
            message = "You already created this dataset repo"
            self._send(409, {"error": message, "url": url}, {"X-Error-Message": message})
        else:
            self._send(200, {"url": url, "name": repo_id})

    def validate_yaml(self) -> None:
        self._body()
        self._send(200, {"errors": [], "warnings": []})

    def info(self, kind: str, repo: str, rev: str | None = None) -> None:
        r = self._repo(kind, repo)
        commit = self._revision(r, rev or "main")
        self._send(200, {"id": repo, "sha": commit.oid, "private": r.private,
                         "siblings": [{"rfilename": p} for p in sorted(commit.files)]})

    def preupload(self, kind: str, repo: str, rev: str) -> None:
        payload = json.loads(self._body())
        commit = self._revision(self._repo(kind, repo), rev)
        files = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = b"\0" in sample or item["size"] > 10_000_000
            existing = commit.files.get(item["path"])
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": git_blob_sha(existing.data) if existing else None})
        self._send(200, {"files": files})

    def lfs_batch(self, kind: str | None, repo: str) -> None:
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.fake.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.fake.url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            self._error(400, "sha256 mismatch")
            return
        with self.fake.lock:
            self.fake.lfs_objects[oid] = data
        self._send(200, b"")

    def commit(self, kind: str, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        r = self._repo(kind, repo)
        header = lines[0]["value"]
        with self.fake.lock:
            parent = header.get("parentCommit")
            if parent is not None and parent != r.head.oid:
                self._error(412, "A commit has happened since. Please refresh and try again.")
                return
            files = dict(r.head.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    if value["oid"] not in self.fake.lfs_objects:
                        self._error(400, f"LFS object {value['oid']} was never uploaded")
                        return
                    files[value["path"]] = StoredFile(self.fake.lfs_objects[value["oid"]], True)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        self._error(404, "A file with this name doesn't exist")
                        return
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            oid = self.fake._commit(r, files, header.get("summary", ""))
        self._send(200, {"commitUrl": f"{self.fake.url}/{kind}/{repo}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})

    def commits(self, kind: str, repo: str, rev: str) -> None:
        """The history of `rev`, newest first (one page)."""
        r = self._repo(kind, repo)
        head = self._revision(r, rev)
        chain = r.commits[:r.commits.index(head) + 1]
        self._send(200, [{"id": c.oid, "title": c.message, "message": "", "authors": [],
                          "date": datetime.datetime.fromtimestamp(c.created, datetime.timezone.utc).isoformat()
                          .replace("+00:00", "Z")} for c in reversed(chain)])

    def tree(self, kind: str, repo: str, rev: str, path: str | None = None) -> None:
        commit = self._revision(self._repo(kind, repo), rev)
        query = parse_qs(urlparse(self.path).query)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = (path or "").strip("/")
        prefix = f"{base}/" if base else ""
        entries, dirs = [], set()
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(commit.files[file_path].tree_entry(file_path))
        if base and not entries and not dirs:
            self._error(404, f"path {base} not found")
            return
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                    for d in sorted(dirs)]
        self._send(200, entries)

    def resolve(self, kind: str | None, repo: str, rev: str, path: str) -> None:
        r = self._repo(kind or "models", repo)
        commit = self._revision(r, rev)
        stored = commit.files.get(path)
        if stored is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.fake.requests.append((time.monotonic(), self.command, path, 404))
            return
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha(stored.data)}"'}
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(stored.data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(stored.data))
        self._send(200, stored.data, headers, content_type="application/octet-stream")


ROUTES = (
    ("POST", r"/api/repos/create", _Handler.create),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"/api/{PREFIX}/{REPO}", _Handler.info),
    ("GET", rf"/api/{PREFIX}/{REPO}/revision/(?P<rev>[^/]+)", _Handler.info),
    ("POST", rf"/api/{PREFIX}/{REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("POST", rf"/api/{PREFIX}/{REPO}/commit/(?P<rev>[^/]+)", _Handler.commit),
    ("GET", rf"/api/{PREFIX}/{REPO}/commits/(?P<rev>[^/]+)", _Handler.commits),
    ("GET", rf"/api/{PREFIX}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", _Handler.tree),
    ("POST", rf"/(?:(?P<kind>datasets|spaces)/)?{REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", _Handler.lfs_upload),
    ("GET", rf"/(?:(?P<kind>datasets|spaces)/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
    ("HEAD", rf"/(?:(?P<kind>datasets|spaces)/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
)
