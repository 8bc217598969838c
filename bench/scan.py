"""Benchmark: `stratum status` and a no-op re-run on a large dataset vs a bare os.scandir walk.

Builds a synthetic dataset of `--n` image directories (default 100,000) and the matching source
tree. `--artifacts all` (the default) gives each image dir every artifact of the table (empty files)
and the record a run of every pass writes; `--artifacts pixel` only metadata.json and pixel.npy.
Then it times, each in a fresh child process: a bare recursive `os.scandir` walk of the output tree,
`status` (with staleness: one provenance record read, the source's stat and, with `all`, the stat
of caption.txt and seg.npy as t5, depth and normal read them), a bare walk of the input and output
trees, and a no-op `process --passes pixel` re-run (discover + plan). Prints the ratios (goals:
status within 2.5x, the re-run within 2x) and each phase's peak memory (ru_maxrss).

    python bench/scan.py [--n 100000] [--artifacts all|pixel] [--root DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import Samples, add_repeat, table, workspace
from stratum_core.buckets import BUCKETS

PER_FOLDER = 1000  # source images per folder, like a typical crawl shard


def build(root: Path, n: int, artifacts: str = "all") -> None:
    """n empty source files (never opened on a no-op run) and n complete image directories, each with
    the provenance record a run writes (so `status` computes staleness for every image). `all`: every
    artifact of the table and a record of every pass, with the upstream files t5, depth and normal read
    (one more stat per image: status checks caption.txt and seg.npy for hand edits); `pixel`: metadata and
    pixel only (the smallest record)."""
    import hashlib

    from stratum_core import provenance
    from stratum_core.passes import REGISTRY, build_passes
    from stratum_core.passes.base import PassOptions
    from stratum_core.store import Store

    passes = build_passes(REGISTRY if artifacts == "all" else ("metadata", "pixel"), PassOptions())
    keys = {p.name: provenance.pass_key(p) for p in passes}
    store = Store(root / "out")
    provenance.write_current(store.state_dir, keys)
    filenames = [a.filename for p in passes for a in p.artifacts if a.filename != "metadata.json"]
    empty_sha = hashlib.sha256(b"").hexdigest()

    for i in range(n):
        folder, name = f"part{i // PER_FOLDER:04d}", f"{i:07d}"
        if i % PER_FOLDER == 0:
            (root / "in" / folder).mkdir(parents=True, exist_ok=True)
        (root / "in" / folder / f"{name}.jpg").touch()
        image_dir = root / "out" / folder / name
        image_dir.mkdir(parents=True)
        bucket = BUCKETS[i % len(BUCKETS)]
        metadata = {"image_id": f"{folder}/{name}", "source_path": f"{folder}/{name}.jpg", "width": 640,
                    "height": 480, "aspect_bucket": bucket.label}
        (image_dir / "metadata.json").write_text(json.dumps(metadata))
        for filename in filenames:
            (image_dir / filename).touch()  # status and planning only look at names
        source = root / "in" / folder / f"{name}.jpg"
        fingerprint = {"path": str(source.absolute()), "size": 0, "mtime_ns": source.stat().st_mtime_ns,
                       "sha256": empty_sha}
        stamps = {p: f"{i:012x}{k:04x}" for k, p in enumerate(keys)}
        entries = {}
        for p in passes:
            entry = {"key": keys[p.name], "stamp": stamps[p.name], "source_sha256": empty_sha,
                     "inputs": {up: stamps[up] for up in provenance.upstream_of(p)}}
            input_files = provenance._input_files(store, f"{folder}/{name}", p)  # as the writer records them
            if input_files:
                entry["input_files"] = input_files
            entries[p.name] = entry
        (image_dir / provenance.RECORD_NAME).write_bytes(provenance.encode_record(
            {"format": provenance.FORMAT, "source": fingerprint, "passes": entries}))


def bare_walk(*trees: Path) -> int:
    """The floor: every directory listed once with os.scandir, nothing else."""
    count = 0
    stack = [str(t) for t in trees]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def phase(name: str, root: Path) -> dict:
    """Run one phase in this (fresh) process; report seconds and peak memory."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    # Imports are a fixed cost (well under a second), not part of the per-image scan being compared.
    from stratum_core.discover import discover
    from stratum_core.engine import RunConfig, run
    from stratum_core.progress import Progress
    from stratum_core.status import dataset_status

    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if name == "walk_out":
        detail = bare_walk(root / "out")
    elif name == "walk_in_out":
        detail = bare_walk(root / "in", root / "out")
    elif name == "status":
        status = dataset_status(root / "out")
        assert not status.provenance.stale and not status.provenance.unknown, status.format()
        detail = status.total_images
    elif name == "rerun":
        found = discover(root / "in")
        summary = run(RunConfig(output_dir=root / "out", passes=("metadata", "pixel")), found.images, found.errors,
                      Progress(len(found.images), every=3600, stream=sys.stderr))
        assert summary.work_images == 0 and summary.passes["pixel"].existing == len(found.images), summary.format()
        detail = summary.passes["pixel"].existing
    else:
        raise SystemExit(f"unknown phase {name}")
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"phase": name, "seconds": seconds, "detail": detail, "peak_mib": peak_kib / 1024,
            "growth_mib": (peak_kib - before_kib) / 1024}


def run_phase(name: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--root", str(root)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="image directories (default 100000)")
    parser.add_argument("--root", type=Path, help="build in / reuse this folder (kept afterwards)")
    parser.add_argument("--artifacts", choices=("all", "pixel"), default="all",
                        help="what each image dir holds: every artifact and pass record (default) or pixel only")
    add_repeat(parser, 2)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.root)))
        return

    with workspace("scan", args.root) as root:
        if not (root / "out").is_dir():
            start = time.perf_counter()
            build(root, args.n, args.artifacts)
            print(f"built {args.n} image dirs ({args.artifacts}) in {time.perf_counter() - start:.1f}s")
        best: dict[str, dict] = {}
        seconds: dict[str, Samples] = {}
        for _ in range(args.repeat):
            for name in ("walk_out", "status", "walk_in_out", "rerun"):
                result = run_phase(name, root)
                seconds.setdefault(name, Samples()).add(result["seconds"])
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
        print(table(("phase", "best s", "median s", "peak MiB", "growth MiB"),
                    [(r["phase"], r["seconds"], seconds[r["phase"]].median, f"{r['peak_mib']:.1f}",
                      f"+{r['growth_mib']:.1f}") for r in best.values()]))
        for label, ratio in (("best", lambda n: best[n]["seconds"]), ("median", lambda n: seconds[n].median)):
            print(f"{label}: status (with staleness) / bare walk of the output: "
                  f"{ratio('status') / ratio('walk_out'):.2f}x (goal <= 2.5x); "
                  f"no-op re-run / bare walk of input+output: {ratio('rerun') / ratio('walk_in_out'):.2f}x "
                  f"(goal <= 2x)")


if __name__ == "__main__":
    main()
