"""Shared builders for the Dagster tests: a small source tree, registered shards, resources."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from stratum_core import shards
from stratum_dagster.defs.passes import assets as pass_area
from stratum_dagster.defs.passes.factory import build_pass_defs
from stratum_dagster.partitions import SHARD_PARTITIONS_NAME
from stratum_dagster.resources import CaptionServerResource, StratumResource

GREY, RED = (128, 128, 128), (255, 0, 0)
# The pass area as built for Dagster, less the retry policy: every asset and check retries an infrastructure
# error after 30 s and 90 s (execute_in_process cannot turn that off); these tests want the failure at once.
PASSES_WITHOUT_RETRIES = build_pass_defs(retry_policy=None)


def write_image(path: Path, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A grey (width, height) image with a red square in the middle (the smoke seg model's foreground)."""
    width, height = size
    array = np.full((height, width, 3), GREY, np.uint8)
    array[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = RED
    array[0, 0] = (seed * 37 % 256, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_tree(root: Path, rel_paths: list[str]) -> None:
    for i, rel in enumerate(rel_paths):
        write_image(root / rel, seed=i)


def register(src: Path, out: Path, instance: dg.DagsterInstance, group: str, shard_size: int = 1000) -> list[str]:
    """Register the group's shards on disk and as Dagster partitions; returns their keys."""
    created, _ = shards.register_group(src, out, group, shard_size)
    keys = [s.key for s in created]
    instance.add_dynamic_partitions(SHARD_PARTITIONS_NAME, keys)
    return keys


def tick(sensor, instance: dg.DagsterInstance, stratum: StratumResource, cursor: str | None = None
         ) -> dg.SensorResult:
    """Evaluate one tick and apply it as the sensor daemon does: its asset events (observations,
    materialisations) are stored first, then its partition requests."""
    from stratum_dagster.definitions import defs

    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"stratum": stratum},
                                      definitions=defs())
    result = sensor(context)
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def shard_processed_by_the_cli(root: Path, instance: dg.DagsterInstance) -> tuple[Path, Path, str]:
    """One registered shard of two images (ffhq/a, ffhq/b) whose pixel pass ran outside Dagster, through
    `stratum process --shard-key`: (input, output, shard key)."""
    from stratum_testing.cli import process_cli

    src, out = root / "in", root / "out"
    write_tree(src, ["ffhq/a.png", "ffhq/b.png"])
    [key] = register(src, out, instance, "ffhq")
    assert process_cli(src, out, "--passes", "pixel", "--device", "cpu", "--shard-key", key, "--workers", "1") == 0
    return src, out, key


def stratum_resource(src: Path, out: Path, **overrides) -> StratumResource:
    settings = {"device": "cpu", "workers": 1, "batch_size": 2, "offline": True, **overrides}
    return StratumResource(input_root=str(src), output_root=str(out), **settings)


def materialize(names: list[str], key: str, instance: dg.DagsterInstance, stratum: StratumResource,
                caption: CaptionServerResource | None = None, raise_on_error: bool = True) -> dg.ExecuteInJobResult:
    """Materialise the pass assets `names` (with their verify checks) for shard `key`."""
    return dg.materialize(
        [*PASSES_WITHOUT_RETRIES.assets, *PASSES_WITHOUT_RETRIES.asset_checks], selection=names, partition_key=key,
        instance=instance, resources={"stratum": stratum, "caption_server": caption or CaptionServerResource()},
        raise_on_error=raise_on_error)


def run_job(job_name: str, names: list[str], key: str, instance: dg.DagsterInstance, stratum: StratumResource,
            caption: CaptionServerResource | None = None) -> dg.ExecuteInJobResult:
    """Run one of the pass area's jobs (e.g. enrich_job) for shard `key`, selecting the assets `names`.

    The job is rebuilt with the real job's selection and executor over PASSES_WITHOUT_RETRIES, so an
    infrastructure error fails at once instead of after the retry delays."""
    [real] = [j for j in pass_area.defs.jobs if j.name == job_name]
    job = dg.define_asset_job(job_name, selection=real.selection, executor_def=real.executor_def)
    defs = dg.Definitions(
        assets=PASSES_WITHOUT_RETRIES.assets, asset_checks=PASSES_WITHOUT_RETRIES.asset_checks, jobs=[job],
        resources={"stratum": stratum, "caption_server": caption or CaptionServerResource()})
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, partition_key=key, asset_selection=[dg.AssetKey(n) for n in names],
        raise_on_error=False)


def step_of_event(result: dg.ExecuteInJobResult, name: str) -> str:
    """The step (op) that materialised asset `name` in this run."""
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(name)]
    return event.step_key


def asset_metadata(result: dg.ExecuteInJobResult, name: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(name)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def check_results(result: dg.ExecuteInJobResult) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.asset_check_key.asset_key.to_user_string():
            e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
