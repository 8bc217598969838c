"""Benchmark: the two shard sensors' tick times on a large input tree (SPEC §9: each tick well inside 60 s).

Builds a synthetic input tree of `--n` empty image files (default 1,000,000; discovery only
reads names): 20 top-level folders of which half hold nested subfolders (some two deep), one
flat folder with 20% of the images (200,000 at the default size) and a few images in the root.
Then, on a real Dagster instance (DAGSTER_HOME in a temp dir, sqlite storage) and through
`dg.build_sensor_context`, it times:

1. `new_images_sensor` from an empty registry until every image is in a shard (ticks, time each);
2. one more full sweep with no change;
3. a sweep after adding 1,000 images to one folder;
4. `shard_status_sensor` over all shards, with `--complete` of the shards fully done on disk
   (empty artifact files: status reads directory listings only) and as many with metadata only:
   a first sweep (reports completed shards) and a quiet second sweep.

Each tick's evaluation time is what Dagster's 60 s sensor timeout covers; applying the
partition requests and asset events (done here as the daemon would) is shown apart.

    python bench/sensors.py [--n 1000000] [--keep DIR] [--complete 0.1] [--shard-size 1000] [--repeat 1]

`--keep DIR` builds the input tree and the artifact files there once and reuses them
(building a million files takes a minute or two); the registry is rebuilt each run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from _common import Samples, add_repeat, dagster_home, table, workspace

GOAL_S = 60.0
TOP_FOLDERS = 20
FLAT_SHARE = 0.2  # of the images, in one flat folder (the largest single group)
ROOT_IMAGES = 10
PER_SUBFOLDER = 1000
ADDED = 1000
ADDED_FOLDER = "set03"
EXTENSIONS = (".jpg", ".png", ".webp", ".jpeg")


@dataclass
class Tick:
    phase: str
    number: int
    seconds: float
    apply_seconds: float
    note: str


def touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def folder_paths(n: int) -> dict[str, list[str]]:
    """Folder (relative) → file names, for the whole synthetic layout."""
    flat = int(n * FLAT_SHARE)
    per_top = (n - flat - ROOT_IMAGES) // TOP_FOLDERS
    layout: dict[str, list[str]] = {"": [f"root{i:02d}.jpg" for i in range(ROOT_IMAGES)],
                                    "flat": [f"{i:07d}.jpg" for i in range(flat)]}
    for t in range(TOP_FOLDERS):
        top = f"set{t:02d}"
        count = per_top + (n - flat - ROOT_IMAGES - per_top * TOP_FOLDERS if t == TOP_FOLDERS - 1 else 0)
        names = [f"{i:06d}{EXTENSIONS[i % len(EXTENSIONS)]}" for i in range(count)]
        if t % 2:  # a flat crawl folder
            layout[top] = names
            continue
        for start in range(0, count, PER_SUBFOLDER):  # nested: part/…, every fourth folder two deep
            sub = f"part{start // PER_SUBFOLDER:03d}"
            if t % 4 == 0:
                sub = f"batch{start // (10 * PER_SUBFOLDER):02d}/{sub}"
            layout[f"{top}/{sub}"] = names[start:start + PER_SUBFOLDER]
    return layout


def build_input(src: Path, n: int) -> float:
    marker = src / f".built-{n}"
    if marker.exists():
        return 0.0
    started = time.perf_counter()
    shutil.rmtree(src, ignore_errors=True)
    for folder, names in folder_paths(n).items():
        directory = src / folder
        directory.mkdir(parents=True, exist_ok=True)
        base = str(directory)
        for name in names:
            touch(f"{base}/{name}")
    marker.touch()
    return time.perf_counter() - started


def remove_added(src: Path) -> None:
    for path in (src / ADDED_FOLDER).glob("zz-added-*"):
        path.unlink()


def add_images(src: Path) -> None:
    base = str(src / ADDED_FOLDER)
    for i in range(ADDED):
        touch(f"{base}/zz-added-{i:04d}.jpg")


def build_outputs(out: Path, keys: list[str], fraction: float) -> tuple[int, int, float]:
    """Every k-th shard fully done (all artifact files), the one after it metadata only; returns counts."""
    from stratum_core import shards
    from stratum_core.artifacts import ARTIFACTS

    step = max(1, round(1 / fraction)) if fraction > 0 else 0
    complete = keys[::step] if step else []
    partial = keys[1::step] if step else []
    marker = out / f".artifacts-{len(keys)}-{step}"
    if marker.exists():
        return len(complete), len(partial), 0.0
    started = time.perf_counter()
    names = [a.filename for a in ARTIFACTS]
    for key, files in [(k, names) for k in complete] + [(k, ["metadata.json"]) for k in partial]:
        for image_id in shards.load_shard(out, key).image_ids:
            directory = f"{out}/{image_id}"
            os.makedirs(directory, exist_ok=True)
            for name in files:
                touch(f"{directory}/{name}")
    marker.touch()
    return len(complete), len(partial), time.perf_counter() - started


def make_tick(instance, stratum, defs):
    import dagster as dg

    def tick(sensor, cursor: str | None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"stratum": stratum},
                                          definitions=defs)
        context.log.setLevel(logging.WARNING)  # a tick logs every new key: 1,000 of them at the full size
        started = time.perf_counter()
        result = sensor(context)
        evaluated = time.perf_counter() - started
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for event in result.asset_events or []:
            instance.report_runless_asset_event(event)
        return result, evaluated, time.perf_counter() - started - evaluated

    return tick


def sweep(tick, sensor, cursor, phase: str, ticks: list[Tick], note: Callable[[object], str]) -> str | None:
    """Tick until the cursor wraps (every group or shard scanned once); returns the last cursor."""
    number = 0
    while True:
        number += 1
        result, seconds, applied = tick(sensor, cursor)
        cursor = result.cursor
        ticks.append(Tick(phase, number, seconds, applied, note(result)))
        if json.loads(cursor)["after"] is None:
            return cursor


def new_images_note(result) -> str:
    return f"{len(result.run_requests or [])} runs requested, cursor after={json.loads(result.cursor)['after']}"


def status_note(result) -> str:
    return (f"{len(result.asset_events or [])} materialisations, {len(result.run_requests or [])} "
            f"re-runs, cursor {len(result.cursor) // 1024} KiB")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace, root: Path) -> list[Tick]:
    """One measurement on a fresh Dagster instance (the trees under `root` are reused across rounds)."""
    with dagster_home():
        return measure(args, root / "in", root / "out")


def measure(args: argparse.Namespace, src: Path, out: Path) -> list[Tick]:
    import dagster as dg

    from stratum_core import shards
    from stratum_dagster.defs.shards.sensors import new_images_sensor, shard_status_sensor
    from stratum_dagster.definitions import defs
    from stratum_dagster.resources import StratumResource

    built = build_input(src, args.n)
    remove_added(src)
    print(f"input tree: {args.n:,} images under {src} ({'built in %.0f s' % built if built else 'reused'})")
    shutil.rmtree(shards.shards_dir(out), ignore_errors=True)
    stratum = StratumResource(input_root=str(src), output_root=str(out), device="cpu", shard_size=args.shard_size)
    ticks: list[Tick] = []
    with dg.DagsterInstance.get() as instance:
        tick = make_tick(instance, stratum, defs())
        cursor = sweep(tick, new_images_sensor, None, "register all", ticks, new_images_note)
        keys = shards.shard_keys(out)
        print(f"registered {len(keys):,} shards; Dagster knows {len(instance.get_dynamic_partitions('shards')):,}")
        cursor = sweep(tick, new_images_sensor, cursor, "no change", ticks, new_images_note)
        add_images(src)
        try:
            sweep(tick, new_images_sensor, cursor, f"+{ADDED} images", ticks, new_images_note)
        finally:
            remove_added(src)
        keys = [k for k in shards.shard_keys(out) if k in set(keys)]  # the added images' shard has no files
        complete, partial, seconds = build_outputs(out, keys, args.complete)
        print(f"output tree: {complete} shards complete, {partial} metadata only "
              f"({'built in %.0f s' % seconds if seconds else 'reused'})")
        status_cursor = sweep(tick, shard_status_sensor, None, "status sweep 1", ticks, status_note)
        sweep(tick, shard_status_sensor, status_cursor, "status sweep 2", ticks, status_note)
    return ticks


def report(rounds: list[list[Tick]]) -> None:
    """Each tick's best (and median) evaluation time over the rounds, then the per-sweep totals of the best."""
    samples: dict[tuple[str, int], Samples] = {}
    for one in rounds:
        for t in one:
            samples.setdefault((t.phase, t.number), Samples()).add(t.seconds)
    medians = {key: s.median for key, s in samples.items()}
    ticks = [Tick(t.phase, t.number, samples[t.phase, t.number].min, t.apply_seconds, t.note) for t in rounds[0]]
    print()
    print(table(("phase", "tick", "eval s", "median s", "apply s", "note"),
                [(t.phase, t.number, t.seconds, medians[t.phase, t.number], t.apply_seconds, t.note) for t in ticks]))
    print()
    for phase in dict.fromkeys(t.phase for t in ticks):
        of_phase = [t for t in ticks if t.phase == phase]
        print(f"{phase:<16} {len(of_phase)} ticks per sweep, {sum(t.seconds for t in of_phase):.1f} s in all")
    worst = max(ticks, key=lambda t: t.seconds)
    print(f"\nmax tick: {worst.seconds:.2f} s ({worst.phase} #{worst.number}) = {worst.seconds / GOAL_S:.2f}x "
          f"the {GOAL_S:.0f} s timeout ({'OK' if worst.seconds < GOAL_S / 2 else 'TOO CLOSE'}; goal: well inside)"
          + (f"; best of {len(rounds)} rounds" if len(rounds) > 1 else ""))
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="images in the synthetic input tree")
    parser.add_argument("--keep", type=Path, help="build/reuse the trees here instead of a temp dir")
    parser.add_argument("--complete", type=float, default=0.1, help="share of shards fully done on disk")
    parser.add_argument("--shard-size", type=int, default=1000)
    add_repeat(parser, 1)
    args = parser.parse_args()
    with workspace("sensors", args.keep) as root:
        report([run(args, root) for _ in range(args.repeat)])


if __name__ == "__main__":
    main()
