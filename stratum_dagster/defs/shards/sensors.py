"""Cursor sensors over the filesystem; each tick stops after `TICK_BUDGET_S` and resumes next tick.

- `shard_partitions_sensor` (ON by default) keeps Dagster's partitions equal to the shard records under
  `<output>/.stratum/shards/` (e.g. after `stratum shards register`). It never requests a run.
- `new_images_sensor` registers new images as new shards, adds them as partitions and requests
  `enrich_job` runs for them (never for shards that are already finished).
- `shard_status_sensor` counts finished artifacts per shard and pass: a shard completed outside
  Dagster (the CLI) is reported as a materialisation; a shard that lost files (deleted, or removed
  by `stratum verify --fix`) gets ONE run that redoes every pass that lost files. With
  `STRATUM_RERUN_STALE=1` in the sensor's environment (read at each tick), a shard with stale artifacts
  (another model revision, pass version or precision, a changed source, a rewritten upstream; see
  docs/provenance.md) gets a run of its stale passes tagged `stratum/redo: stale`, which recomputes
  exactly those artifacts (`stratum process --redo stale`); that run is part of the shard's one run.

The last two are stopped by default: they launch GPU runs over whatever the input root holds, so a
user turns them on deliberately (UI → Automation, or `dagster sensor start <name>`).
"""


import hashlib
import json
import os
import time

import dagster as dg

from stratum_core import provenance, shards
from stratum_core.passes import DEFAULT_PASSES, REGISTRY
from stratum_core.store import Store
from stratum_dagster.defs.passes.factory import enrich_job
from stratum_dagster.defs.passes.step import REDO_TAG
from stratum_dagster.defs.sources.observations import first_observations
from stratum_dagster.partitions import SHARD_PARTITIONS_NAME, shard_partitions
from stratum_dagster.resources import StratumResource

TICK_BUDGET_S = 20.0  # well inside Dagster's 60 s sensor timeout, whatever the tree's size
RERUN_STALE_ENV = "STRATUM_RERUN_STALE"  # "1": the status sensor also re-runs stale shards
PASS_NAMES = tuple(REGISTRY)
ENRICH_PASSES = ("metadata", *DEFAULT_PASSES)


def _load_cursor(context: dg.SensorEvaluationContext, default: dict) -> dict:
    return {**default, **json.loads(context.cursor)} if context.cursor else dict(default)


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Adds every shard registered on disk (`stratum shards register`) as a partition; "
                       "launches nothing.")
def shard_partitions_sensor(context: dg.SensorEvaluationContext, stratum: StratumResource) -> dg.SensorResult:
    to_add = _unknown_shards(context, stratum)
    if not to_add:
        return dg.SensorResult(skip_reason="every registered shard is a partition")
    context.log.info("registered shards added as partitions: %s", ", ".join(to_add))
    return dg.SensorResult(dynamic_partitions_requests=[shard_partitions.build_add_request(to_add)],
                           asset_events=first_observations(stratum, to_add))  # before any run of them


def _unknown_shards(context: dg.SensorEvaluationContext, stratum: StratumResource) -> list[str]:
    """Registered shard keys (one listing of the records folder) that are not partitions yet."""
    known = set(context.instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME))
    return [k for k in shards.shard_keys(stratum.output_dir) if k not in known]


@dg.sensor(job=enrich_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Registers new images under the input root as new shards and runs enrich_job on them.")
def new_images_sensor(context: dg.SensorEvaluationContext, stratum: StratumResource) -> dg.SensorResult:
    started = time.monotonic()
    cursor = _load_cursor(context, {"after": None})
    registration = shards.register_new(stratum.input_dir, stratum.output_dir, start_after=cursor["after"],
                                       time_budget=TICK_BUDGET_S, shard_size=stratum.shard_size)
    fresh = [s.key for s in registration.new_shards]
    # Runs for the shards registered now, and for other shards Dagster does not know yet (a crashed
    # tick's, the CLI's) that are not finished: never for a shard that is already complete on disk.
    # Those are checked while the tick's budget lasts; the rest stay unknown until the next tick.
    unknown, fresh_set = _unknown_shards(context, stratum), set(fresh)
    unknown_set = set(unknown)
    to_add, to_run = [k for k in fresh if k in unknown_set], list(fresh)
    for key in unknown:
        if key in fresh_set:
            continue
        if time.monotonic() - started > TICK_BUDGET_S:
            break
        to_add.append(key)
        if not _finished(stratum, key):
            to_run.append(key)
    next_cursor = json.dumps({"after": registration.cursor})
    if not to_add and not to_run:
        return dg.SensorResult(cursor=next_cursor,
                               skip_reason=f"no new images in {registration.groups_scanned} folders")
    context.log.info("new shards: %s", ", ".join(to_run) or "-")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=key, partition_key=key) for key in to_run],
        dynamic_partitions_requests=[shard_partitions.build_add_request(to_add)] if to_add else [],
        asset_events=first_observations(stratum, to_add),  # stored before the runs start
        cursor=next_cursor)


def _finished(stratum: StratumResource, key: str) -> bool:
    completion = shards.shard_completion(stratum.output_dir, shards.load_shard(stratum.output_dir, key))
    return all(completion.complete(p) for p in ENRICH_PASSES)


@dg.sensor(target=dg.AssetSelection.assets(*PASS_NAMES), minimum_interval_seconds=120,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Reports shards completed outside Dagster and re-runs passes whose files went missing.")
def shard_status_sensor(context: dg.SensorEvaluationContext, stratum: StratumResource) -> dg.SensorResult:
    state = _load_cursor(context, {"after": None, "done": {}, "tick": 0})
    state["tick"] += 1
    keys = shards.shard_keys(stratum.output_dir)
    todo = [k for k in keys if state["after"] is None or k > state["after"]]
    known = set(context.instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME))
    materialized: dict[str, set[str]] = {}
    events, requests = [], []
    started = time.monotonic()
    state["after"] = None
    rerun_stale = os.environ.get(RERUN_STALE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    for key in todo:
        shard = shards.load_shard(stratum.output_dir, key)
        completion = shards.shard_completion(stratum.output_dir, shard)
        before = state["done"].get(key)
        lost = []
        for index, pass_name in enumerate(PASS_NAMES):
            now = completion.done[pass_name]
            was = before[index] if before else None
            if completion.complete(pass_name) and was != now:
                if pass_name not in materialized:  # one instance query per pass and tick, only when needed
                    materialized[pass_name] = _materialized(context, pass_name)
                if key not in materialized[pass_name]:
                    events.append(dg.AssetMaterialization(
                        asset_key=pass_name, partition=key,
                        metadata={"source": "filesystem", "images": completion.total, "done": now}))
            elif was is not None and now < was:
                context.log.info("%s: %s lost %d finished images; re-running", key, pass_name, was - now)
                lost.append(pass_name)
        stale, stale_id = _stale_passes(stratum, shard) if rerun_stale else ([], "")
        if lost or stale:  # one run per shard: two runs of one shard would compute and claim the same images twice
            wanted = [p for p in PASS_NAMES if p in set(lost) | set(stale)]
            if stale:
                context.log.info("%s: stale artifacts of %s; re-running them", key, ", ".join(stale))
            # A stale-only run is keyed by what is stale, so later ticks do not launch it again while it
            # runs (Dagster launches one run per run key); a new change is a new key.
            run_key = f"{key}:{state['tick']}" if lost else f"{key}:stale:{stale_id}"
            requests.append(dg.RunRequest(run_key=run_key, partition_key=key,
                                          asset_selection=[dg.AssetKey(p) for p in wanted],
                                          tags={REDO_TAG: "stale"} if stale else {}))
        state["done"][key] = [completion.done[p] for p in PASS_NAMES]
        if time.monotonic() - started > TICK_BUDGET_S:
            state["after"] = key
            break
    registered = set(keys)
    state["done"] = {k: v for k, v in state["done"].items() if k in registered}
    to_add = sorted(({e.partition for e in events} | {r.partition_key for r in requests}) - known)
    return dg.SensorResult(
        run_requests=requests, asset_events=events, cursor=json.dumps(state, separators=(",", ":")),
        dynamic_partitions_requests=[shard_partitions.build_add_request(to_add)] if to_add else [],
        skip_reason=None if events or requests else f"{len(todo)} shards checked, nothing changed")


def _stale_passes(stratum: StratumResource, shard: shards.Shard) -> tuple[list[str], str]:
    """The shard's passes with stale artifacts, and an id of that staleness (which images, why, against
    which current configuration)."""
    status = provenance.image_staleness(stratum.output_dir, shard.image_ids)
    stale = [p for p in PASS_NAMES if p in status.stale]
    if not stale:
        return [], ""
    seen = {"stale": status.to_dict()["stale"], "images": status.to_dict()["stale_images"],
            "current": provenance.read_current(Store(stratum.output_dir).state_dir)}
    return stale, hashlib.sha1(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:12]


def _materialized(context: dg.SensorEvaluationContext, pass_name: str) -> set[str]:
    return context.instance.get_materialized_partitions(dg.AssetKey(pass_name))


defs = dg.Definitions(sensors=[shard_partitions_sensor, new_images_sensor, shard_status_sensor])
