"""`dagster dev` for the tests that drive the UI's server: started on 127.0.0.1 in its own process group and
stopped by its pgid, and the GraphQL calls the UI makes (launch a run, list runs and partitions, reload)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VENV_BIN = Path(sys.executable).parent
LOCATION = "stratum_dagster.definitions"
REPO_ROOT = Path(__file__).parents[2]


@contextmanager
def dagster_dev(env: dict[str, str], log_path: Path, timeout: float = 120) -> Iterator[str]:
    """`dagster dev -m stratum_dagster.definitions` with `env`; yields its URL once it answers."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "dagster"), "dev", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)],
            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(url + "/server_info", process, timeout)
            yield url
        finally:
            stop_group(process)


def wait_for_partition(url: str, key: str, timeout: float = 90) -> list[str]:
    """The shard partitions once `key` is among them (the daemon's first sensor tick adds it)."""
    query = """{ assetNodeOrError(assetKey: {path: ["metadata"]}) {
                   ... on AssetNode { partitionKeysByDimension { partitionKeys } } } }"""
    deadline = time.monotonic() + timeout
    while True:
        keys = graphql(url, query)["assetNodeOrError"]["partitionKeysByDimension"][0]["partitionKeys"]
        if key in keys or time.monotonic() > deadline:
            return keys
        time.sleep(1)


def launch(url: str, job: str, partition: str, run_config: dict | None = None) -> str:
    """launchRun as the launchpad does; returns the run id (the run is queued by the instance)."""
    mutation = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
                    ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {"selector": {"repositoryLocationName": LOCATION,
                           "repositoryName": "__repository__", "jobName": job},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
              "runConfigData": run_config or {}}
    launched = graphql(url, mutation, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def runs(url: str, run_ids: list[str] | None = None, tags: list[dict] | None = None) -> list[dict]:
    query = """query($f: RunsFilter) { runsOrError(filter: $f) { ... on Runs {
                 results { runId status startTime endTime } } } }"""
    run_filter = {k: v for k, v in (("runIds", run_ids), ("tags", tags)) if v is not None}
    return graphql(url, query, {"f": run_filter})["runsOrError"]["results"]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = {"query": query, "variables": variables or {}}
    request = urllib.request.Request(url + "/graphql", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


def free_port() -> int:
    # dagster dev takes no port 0: ask the OS for a free one and hand it over.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"dagster dev did not answer on {url} within {timeout:.0f}s")


def stop_group(process: subprocess.Popen) -> None:
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def reload_location(url: str, timeout: float = 120) -> None:
    """Reload the code location, as the UI's "Reload" button does, and wait until it has loaded again."""
    mutation = """mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
                    __typename ... on WorkspaceLocationEntry { locationOrLoadError { __typename } } } }"""
    reloaded = graphql(url, mutation, {"name": LOCATION})["reloadRepositoryLocation"]
    assert reloaded["__typename"] == "WorkspaceLocationEntry", reloaded
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
                 locationOrLoadError { __typename } } } } }"""
    deadline = time.monotonic() + timeout
    while True:
        [entry] = [e for e in graphql(url, query)["workspaceOrError"]["locationEntries"] if e["name"] == LOCATION]
        if entry["loadStatus"] == "LOADED":
            assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
            return
        assert time.monotonic() < deadline, f"{LOCATION} did not load again: {entry}"
        time.sleep(0.5)


def wait_for_runs(url: str, run_ids: list[str], timeout: float = 240) -> list[str]:
    """The runs' final statuses, in order, once none is queued or in progress."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {r["runId"]: r["status"] for r in runs(url, run_ids=run_ids)}
        if all(statuses.get(i) in ("SUCCESS", "FAILURE", "CANCELED") for i in run_ids):
            return [statuses[i] for i in run_ids]
        assert time.monotonic() < deadline, f"runs still going after {timeout:.0f}s: {statuses}"
        time.sleep(0.5)
