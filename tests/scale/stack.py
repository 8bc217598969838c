"""The pieces of a real Dagster deployment for the scale tests: the daemon, Celery workers, a GraphQL backfill."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import dagster as dg

from tests.scale.conftest import stop

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "dagster.postgres.yaml.example"


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server process in its own process group (a wrapper's children too), stopped by that group's id."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc, group=True)


def daemon(env: dict[str, str], log: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """`dagster-daemon run` on the stratum code location (backfills, the run queue, run monitoring)."""
    return process([str(BIN / "dagster-daemon"), "run", "-m", "stratum_dagster.definitions"], env, log)


def celery_worker(queue: str, env: dict[str, str], log: Path,
                  concurrency: int = 1) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """The worker command of docs/scale-out.md for one queue, `concurrency` steps at a time."""
    return process([str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                    "-y", str(REPO / "docs" / "run_config" / "celery.yaml"), "-q", queue, "-n", queue,
                    "--", "--concurrency", str(concurrency)], env, log)


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message }
  }
}"""


def launch_backfill(instance: dg.DagsterInstance, assets: list[str], keys: list[str]) -> str:
    """Launch a backfill of `assets` over the shards `keys` with the GraphQL mutation the UI sends."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="stratum_dagster.definitions", attribute="defs",
                             working_directory=str(REPO)), location_name="stratum_dagster.definitions")
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        result = execute_dagster_graphql(context.create_request_context(), LAUNCH_BACKFILL, variables={
            "params": {"partitionNames": keys, "assetSelection": [{"path": [a]} for a in assets]}})
    answer = result.data["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


def wait_for_backfill_runs(instance: dg.DagsterInstance, backfill_id: str, count: int,
                           timeout_s: float) -> list[dg.DagsterRun]:
    """The backfill's runs once `count` of them have finished (any status), or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        if len(runs) >= count and all(r.is_finished for r in runs):
            return runs
        time.sleep(1.0)
    statuses = [(r.run_id[:8], r.status.value) for r in instance.get_runs(
        dg.RunsFilter(tags={"dagster/backfill": backfill_id}))]
    raise TimeoutError(f"backfill {backfill_id}: runs {statuses} after {timeout_s:.0f} s")


def base_env(home: Path, src: Path, out: Path, **more: str) -> dict[str, str]:
    """The environment every Dagster process of the deployment shares."""
    return {**os.environ, "DAGSTER_HOME": str(home), "STRATUM_INPUT_DIR": str(src), "STRATUM_OUTPUT_DIR": str(out),
            "STRATUM_HUB_REPO": "nobody/unused", "PYTHONPATH": str(REPO), **more}
