"""`source_images`: one observed partition per shard, its data version a cheap version of the shard's sources.

The pass assets that read pixels depend on it (`source_deps`), so when an image is replaced under the same
name the shard's metadata, caption, dinov3, pose, seg, depth, normal and pixel partitions show as stale in
the UI ("has a new dependency data version", the dependency `source_images[<shard>]`) without anything
being re-materialised. The version is `stratum_core.source_versions.shard_source_version`: the images'
names, sizes and mtimes, one stat each; which artifacts are stale and why stays `stratum status`'s job.

- `source_images_sensor` (ON by default, no runs) observes every shard partition whose version changed
  since its last tick (the cursor holds a short digest per shard), resuming after `TICK_BUDGET_S`.
- `source_images` is an observable source asset: "Observe" in the UI observes every shard partition
  in one run (Dagster observes partitioned source assets in an unpartitioned run).

A partition materialised before its sources were first observed records no source data version, so
Dagster can only compare later observations with each other after its next materialisation. The sensors
that add shard partitions (`shard_partitions_sensor`, `new_images_sensor`) therefore report the first
observation in the same tick (`first_observations`; the daemon stores a tick's asset events before its
partitions and runs); partitions added otherwise (`python -m stratum_dagster.partitions`) get theirs on
this sensor's next tick.
"""

import hashlib
import json
import time
import warnings

import dagster as dg

from stratum_core import shards
from stratum_core.passes import pass_class
from stratum_core.source_versions import SourceVersion, shard_source_version
from stratum_dagster.execution import CELERY_QUEUE_TAG, CPU_QUEUE
from stratum_dagster.partitions import SHARD_PARTITIONS_NAME, shard_partitions
from stratum_dagster.resources import StratumResource

SOURCE_IMAGES = dg.AssetKey("source_images")
TICK_BUDGET_S = 20.0  # well inside Dagster's 60 s sensor timeout


def source_deps(pass_name: str) -> list[dg.AssetKey]:
    """`[source_images]` for a pass that reads the image (every pass but t5), else nothing."""
    return [SOURCE_IMAGES] if pass_class(pass_name).uses_image else []


def shard_version(stratum: StratumResource, key: str) -> SourceVersion:
    """The version of shard `key`'s sources under the resource's input root."""
    return shard_source_version(stratum.input_dir, shards.load_shard(stratum.output_dir, key))


def observation(key: str, version: SourceVersion) -> dg.AssetObservation:
    """The observation of one shard's sources, with their version as the data version."""
    return dg.AssetObservation(asset_key=SOURCE_IMAGES, partition=key,
                               tags={"dagster/data_version": version.version},
                               metadata={"images": version.images, "missing": version.missing})


FIRST_OBSERVATIONS_BUDGET_S = 10.0  # inside the adding sensor's tick; the rest wait for source_images_sensor


def first_observations(stratum: StratumResource, keys: list[str],
                       budget_s: float = FIRST_OBSERVATIONS_BUDGET_S) -> list[dg.AssetObservation]:
    """Observations for shard partitions about to be added: the sensor that adds them reports these in the
    same tick, before any run of them can start, so their first materialisation records the source version.
    Stops after `budget_s` (a first tick over thousands of CLI-registered shards must not time out)."""
    events, started = [], time.monotonic()
    for key in keys:
        if time.monotonic() - started > budget_s:
            break
        events.append(observation(key, shard_version(stratum, key)))
    return events


def _observe_all(context: dg.AssetExecutionContext, stratum: StratumResource) -> dg.DataVersionsByPartition:
    on_disk = set(shards.shard_keys(stratum.output_dir))
    keys = [k for k in context.instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME) if k in on_disk]
    return dg.DataVersionsByPartition({k: dg.DataVersion(shard_version(stratum, k).version) for k in keys})


# observable_source_asset is a beta API in Dagster 1.13; it is the one that gives the UI an "Observe" button.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    source_images = dg.observable_source_asset(
        key=SOURCE_IMAGES, partitions_def=shard_partitions, group_name="sources",
        op_tags={CELERY_QUEUE_TAG: CPU_QUEUE},  # stats only: any CPU worker observes it
        description="The source images of each shard under the input root; its data version changes when an "
                    "image is replaced, touched or removed.")(_observe_all)


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Observes each shard's source images (names, sizes, mtimes); a replaced image makes "
                       "the shard's pass assets stale. Launches nothing.")
def source_images_sensor(context: dg.SensorEvaluationContext, stratum: StratumResource) -> dg.SensorResult:
    state = {"after": None, "seen": {}, **(json.loads(context.cursor) if context.cursor else {})}
    on_disk = set(shards.shard_keys(stratum.output_dir))  # a partition whose shard record is gone has no sources
    known = sorted(k for k in context.instance.get_dynamic_partitions(SHARD_PARTITIONS_NAME) if k in on_disk)
    todo = [k for k in known if state["after"] is None or k > state["after"]]
    events, started = [], time.monotonic()
    state["after"] = None
    for key in todo:
        version = shard_version(stratum, key)
        short = hashlib.sha1(version.version.encode()).hexdigest()[:10]
        if state["seen"].get(key) != short:
            events.append(observation(key, version))
            state["seen"][key] = short
        if time.monotonic() - started > TICK_BUDGET_S:
            state["after"] = key
            break
    registered = set(known)
    state["seen"] = {k: v for k, v in state["seen"].items() if k in registered}
    return dg.SensorResult(asset_events=events, cursor=json.dumps(state, separators=(",", ":")),
                           skip_reason=None if events else f"{len(todo)} shards' sources unchanged")


defs = dg.Definitions(assets=[source_images], sensors=[source_images_sensor])
