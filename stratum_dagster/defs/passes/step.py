"""One step run: check which selected passes can run, run those in one engine run, report each asset,
then fail once, naming every pass that could not run and how to fix it."""

from __future__ import annotations

from typing import Iterator, Sequence

import dagster as dg

from stratum_core import provenance
from stratum_core.passes import REGISTRY, upstream_passes
from stratum_core.preflight import Readiness
from stratum_core.shards import load_shard
from stratum_dagster.defs.passes.reporting import preview_markdown, run_metadata, verify_shard
from stratum_dagster.failures import dagster_failures, setup_failure, terminations_stop
from stratum_dagster.resources import CaptionServerResource, StratumResource

REDO_TAG = "stratum/redo"  # stale | all on a run: it recomputes existing artifacts (the status sensor's re-runs)
# The blocking check on a pass whose artifacts another pass of the same step reads (seg, for depth and normal).
INPUT_CHECK = "input_check"


def step_inputs(names: Sequence[str]) -> list[str]:
    """The passes of a step whose artifacts other passes of the step read (seg: depth and normal read seg.npy)."""
    return [u for u in names if any(u in upstream_passes(n) for n in names)]


def run_step(context: dg.AssetExecutionContext, names: Sequence[str], stratum: StratumResource,
             caption_server: CaptionServerResource) -> Iterator[dg.MaterializeResult]:
    """Materialise every selected asset of this step that can be computed here (a missing dinov3 never
    stops metadata or pose), then raise one `dg.Failure` for the rest."""
    key = context.partition_key
    selected = [n for n in names if dg.AssetKey(n) in context.selected_asset_keys]
    with dagster_failures():  # an unknown shard key or bad options fail at once, the cause as headline
        load_shard(stratum.output_dir, key)
        readiness = stratum.preflight(selected, caption_server)
    runnable = [r.pass_name for r in readiness if r.ready]
    blocked = [r for r in readiness if not r.ready]
    redo = context.run.tags.get(REDO_TAG)
    with dagster_failures():
        checks, bad_inputs = check_inputs(context, names, runnable, stratum, redo or stratum.redo)
    yield from checks
    runnable = [n for n in runnable if n not in {r.pass_name for r in bad_inputs}]
    blocked += bad_inputs
    for r in blocked:
        context.log.error(f"not run: {r.line()}")
    if runnable:
        with terminations_stop(context), dagster_failures():
            shard_run = stratum.run_passes(runnable, key, caption_server, redo=redo)
        # One preview per step run, on its first asset: it is the same sheet for all of them, and every
        # copy would stay in the event log for good.
        preview = preview_markdown(shard_run, runnable, stratum)
        for name in runnable:
            yield dg.MaterializeResult(asset_key=name, metadata=run_metadata(
                shard_run, name, stratum, preview if name == runnable[0] else None),
                data_version=dg.DataVersion(provenance.shard_data_version(
                    stratum.output_dir, [i.image_id for i in shard_run.images], name)))
    if blocked:
        raise setup_failure([*blocked, *_blocked_downstream(context, names, blocked, stratum, caption_server)],
                            runnable)


def _blocked_downstream(context: dg.AssetExecutionContext, names: Sequence[str], blocked: Sequence[Readiness],
                        stratum: StratumResource, caption_server: CaptionServerResource) -> list[Readiness]:
    """The passes of this run, in other steps, that need a blocked pass (t5 when caption cannot run):
    Dagster skips their steps, so this failure names them, each with its own problems, if any."""
    in_run = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    causes = {r.pass_name for r in blocked}
    waiting = [n for n in REGISTRY if n not in names and dg.AssetKey(n) in in_run
               and causes & set(upstream_passes(n))]
    own = {r.pass_name: r for r in stratum.preflight(waiting, caption_server) if not r.ready} if waiting else {}
    return [Readiness(n, False, f"not run (needs {', '.join(sorted(causes & set(upstream_passes(n))))})"
                      + (f"; also {own[n].advice}" if n in own else "")) for n in waiting]


def check_inputs(context: dg.AssetExecutionContext, names: Sequence[str], runnable: Sequence[str],
                 stratum: StratumResource, redo: str | None) -> tuple[list[dg.AssetCheckResult], list[Readiness]]:
    """Before the engine run, verify the artifacts on disk that passes of this run will read (the shard's
    seg.npy for depth and normal): a bad one keeps its readers from running over the shard, so nothing is
    computed from it. Returns the INPUT_CHECK results (when selected) and the readers blocked."""
    results, blocked = [], []
    for upstream in step_inputs(names):
        readers = [n for n in runnable if upstream in upstream_passes(n)]
        selected = dg.AssetCheckKey(dg.AssetKey(upstream), INPUT_CHECK) in context.selected_asset_check_keys
        if not (readers or selected):
            continue
        if redo == "all" and upstream in runnable:  # every file is rewritten before its readers see it
            verdict = dg.AssetCheckResult(passed=True, metadata={"rewritten_in_this_run": True})
        else:
            verdict = verify_shard(stratum, upstream, context.partition_key)
        if selected:
            results.append(dg.AssetCheckResult(asset_key=upstream, check_name=INPUT_CHECK, passed=verdict.passed,
                                               metadata=verdict.metadata))
        if not verdict.passed:
            bad = verdict.metadata["bad_ids"].value
            advice = (f"{len(bad)} {upstream} artifacts of the shard fail their check ({', '.join(list(bad)[:5])}); "
                      f"`stratum verify --fix` removes them, then run {upstream} again")
            blocked += [Readiness(n, False, advice) for n in readers]
    return results, blocked
