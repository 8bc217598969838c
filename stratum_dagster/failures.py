"""stratum errors as Dagster failures: permanent ones (and setup problems found before any image is
touched) fail at once with their cause as the headline; transient ones raised during the work (a
caption server lost mid-run, out of device memory) go through the retry policy."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import dagster as dg

from stratum_core.errors import ConfigError, InfrastructureError, ModelNotFoundError, StratumError
from stratum_core.preflight import Readiness

# Waiting cannot fix these: missing weights, an unknown shard key, bad options.
PERMANENT_ERRORS = (ModelNotFoundError, ConfigError)


def is_permanent(exc: BaseException) -> bool:
    """True for errors a retry cannot fix; an InfrastructureError (server, device) may pass."""
    if isinstance(exc, PERMANENT_ERRORS):
        return True
    return isinstance(exc, StratumError) and not isinstance(exc, InfrastructureError)


@contextlib.contextmanager
def dagster_failures() -> Iterator[None]:
    """Re-raise a stratum error as `dg.Failure` (its message is the step's headline); a permanent one
    with `allow_retries=False`, so a typo'd shard key fails in seconds, not after the retry delays."""
    try:
        yield
    except StratumError as exc:
        raise dg.Failure(description=str(exc), allow_retries=not is_permanent(exc)) from exc


def setup_failure(blocked: Sequence[Readiness], materialized: Sequence[str]) -> dg.Failure:
    """One failure naming every selected pass that could not run and how to fix it. Never retried: a
    setup problem found before any image was touched (no weights, no package, no caption server
    answering) is the user's to fix, and a retry 30 s later would only hide the cause for minutes."""
    lines = [r.line() for r in blocked]
    done = f" ({', '.join(materialized)} materialised)" if materialized else ""
    headline = (lines[0] if len(lines) == 1 else f"{len(lines)} passes could not run: " + "; ".join(lines)) + done
    return dg.Failure(description=headline,
                      metadata={"could_not_run": dg.MetadataValue.json({r.pass_name: r.advice for r in blocked})},
                      allow_retries=False)


@contextlib.contextmanager
def terminations_stop(context: dg.AssetExecutionContext) -> Iterator[None]:
    """A run terminated from the UI (or `dagster run terminate`) stops: its step gets the interrupt and
    the engine finishes the writes in flight, but Dagster would then retry an interrupted step under a
    retry policy and carry on. So when the run is being canceled, fail without a retry instead; any
    other interrupt (a preempted worker's SIGTERM) keeps Dagster's retry."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    try:
        yield
    except (KeyboardInterrupt, DagsterExecutionInterruptedError) as exc:
        run = context.instance.get_run_by_id(context.run_id)
        if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            raise dg.Failure(description="the run was terminated: this step stopped after the writes in flight",
                             allow_retries=False) from exc
        raise
