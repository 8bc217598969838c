"""Bench: reading a stratum dataset for training, locally and from the (loopback) Hub, as ratios in one run.

The Hub half starts the test suite's fake Hub (`stratum_testing.hub`, installed with the package):

    python bench/data.py            # 96 images, layers pixel,t5,pose,caption (~7 MB an image)

1. Local: `StratumDataset` + `BucketBatchSampler` + `collate` through a torch `DataLoader` (in-process, and
   with 1 and `--workers` workers) vs a naive loop that np.loads the same files and np.stacks each batch
   (same batches, same output: torch tensors). Goal: >= 0.9x the naive loop per worker. Also the floor: the
   same batches from arrays already in memory through as many workers (the copy and torch's transfer only).
2. Hub: `HubStream` over the repo `stratum publish` wrote to a loopback fake Hub vs reading the same tars with
   `tarfile` + np.load, (a) each tar downloaded from the same Hub first (hf_hub_download), (b) the tars
   already on local disk, against a HubStream epoch whose chunks are cached (`cache_dir`, no transfer).
   Goal: >= 0.8x the raw tar read.

Every side reads from a warm page cache (a first pass is not timed) and touches every 4 KiB page of every
array it yields (a memory-mapped array is not read until touched); best (and median) of `--repeat`, sides
interleaved.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import Samples, add_repeat, table, workspace
from stratum_core.artifacts import BY_NAME
from stratum_core.buckets import BUCKETS
from stratum_core.data import BucketBatchSampler, HubStream, StratumDataset, collate
from stratum_core.data.local import layer_artifacts
from stratum_core.publish.layout import TEXT_LAYERS, list_chunks
from stratum_core.store import Store

PAGE = 4096


def make_tree(root: Path, n: int, layers: tuple[str, ...]) -> None:
    """n images over two buckets, every requested layer present, random contents."""
    store = Store(root)
    rng = np.random.default_rng(0)
    _, artifacts = layer_artifacts(layers)
    for i in range(n):
        bucket = BUCKETS[i % 2]
        image_id = f"set/{i:05d}"
        store.write(image_id, BY_NAME["metadata"], {"image_id": image_id, "source_path": image_id + ".jpg",
                                                    "width": bucket.width, "height": bucket.height,
                                                    "aspect_bucket": bucket.label})
        for a in artifacts:
            if a.kind == "text":
                store.write(image_id, a, f"a photo number {i}")
            elif a.dtype == "uint8":
                store.write(image_id, a, rng.integers(0, 2, a.shape(bucket), dtype=np.uint8))
            else:
                store.write(image_id, a, rng.random(a.shape(bucket), dtype=np.float32).astype(np.float16))


def touch(array) -> int:
    """Read one byte of every page (what any consumer does first), returning the array's size."""
    flat = np.asarray(array).reshape(-1).view(np.uint8)
    int(flat[::PAGE].sum())
    return flat.size


def batch_bytes(batch: dict) -> int:
    return sum(touch(v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()
               if k not in ("width", "height") and hasattr(v, "shape"))


# ---- local ---------------------------------------------------------------------------------
def naive_local(root: Path, ds: StratumDataset, batches: list[list[int]]) -> int:
    """What a user writes without stratum.data: np.load every file, stack per batch, torch tensors."""
    import torch

    total = 0
    for indices in batches:
        arrays: dict[str, list] = {}
        for i in indices:
            image_id = ds.image_ids[i]
            json.loads((root / image_id / "metadata.json").read_bytes())
            for a in ds.artifacts:
                path = root / image_id / a.filename
                if a.kind == "npy":
                    arrays.setdefault(a.name, []).append(np.load(path))
                else:
                    path.read_text(encoding="utf-8")
        total += batch_bytes({k: torch.from_numpy(np.stack(v)) for k, v in arrays.items()})
    return total


def loader(ds: StratumDataset, sampler: BucketBatchSampler, workers: int):
    """A DataLoader as a training run keeps it: workers started once, reused every epoch."""
    import torch

    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                       persistent_workers=workers > 0)


class InMemory:
    """The same samples with every array already in memory (one per bucket): a DataLoader over it costs only
    the batch copy and torch's transfer from the workers, the floor any loader with workers pays."""

    def __init__(self, ds: StratumDataset):
        self.buckets = ds.buckets
        self.by_bucket = {}
        for i, label in enumerate(self.buckets):
            if label not in self.by_bucket:
                self.by_bucket[label] = {k: np.array(v) if isinstance(v, np.ndarray) else v
                                         for k, v in ds[i].items()}

    def __len__(self) -> int:
        return len(self.buckets)

    def __getitem__(self, index: int) -> dict:
        return self.by_bucket[self.buckets[index]]


def ours_local(batches) -> int:
    return sum(batch_bytes(batch) for batch in batches)


class Side:
    """One side's seconds over the rounds, and the bytes it yields each time."""

    def __init__(self) -> None:
        self.seconds, self.nbytes = Samples(), 0

    def time(self, fn) -> None:
        t0 = time.perf_counter()
        self.nbytes = fn()
        self.seconds.add(time.perf_counter() - t0)


def cpu_timed(fn) -> float:
    """CPU seconds this process spends in `fn`: what one worker pays per epoch, whatever else the machine
    runs (on a shared machine wall-clock ratios swing by +-40% from run to run)."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def bench_local(root: Path, layers: tuple[str, ...], batch: int, workers: int, repeat: int) -> dict:
    ds = StratumDataset(root, layers=layers)
    sampler = BucketBatchSampler(ds, batch, shuffle=False)
    batches = list(sampler)
    naive_local(root, ds, batches)  # warm the page cache
    loaders = {f"ours, {n} workers": loader(ds, sampler, n) for n in sorted({0, 1, workers})}
    for each in loaders.values():
        ours_local(each)  # start the workers (a run does this once)
    floor = loader(InMemory(ds), sampler, workers)
    ours_local(floor)
    runs = {"naive": lambda: naive_local(root, ds, batches)}
    runs.update({name: (lambda each=each: ours_local(each)) for name, each in loaders.items()})
    runs[f"floor, {workers} workers"] = lambda: ours_local(floor)
    best = {name: Side() for name in runs}
    cpu = {"naive": float("inf"), "ours, 0 workers": float("inf")}
    for _ in range(repeat):
        for name, run in runs.items():
            best[name].time(run)
        for name in cpu:
            cpu[name] = min(cpu[name], cpu_timed(runs[name]))
    best["_cpu"] = cpu
    return best


# ---- hub -----------------------------------------------------------------------------------
def publish(root: Path, hub, repo: str, layers: tuple[str, ...], images_per_tar: int) -> None:
    from stratum_core.publish import PublishConfig
    from stratum_core.publish import publish as publish_dataset

    config = PublishConfig(hub_repo=repo, layers=layers, images_per_tar=images_per_tar,
                           rows_per_parquet=10 * images_per_tar)
    publish_dataset(root, config, token="hf_bench", endpoint=hub.url)


def tar_paths(hub, repo: str, layers: tuple[str, ...]) -> list[str]:
    files = list(hub.files(repo))
    return [c.path for layer in layers if layer not in TEXT_LAYERS for c in list_chunks(files, layer)]


def read_tar(path: str) -> int:
    total = 0
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                total += touch(np.load(io.BytesIO(tar.extractfile(member).read())))
    return total


def raw_from_hub(hub, repo: str, paths: list[str]) -> int:
    from huggingface_hub import hf_hub_download

    total = 0
    with tempfile.TemporaryDirectory(prefix="stratum-bench-tars-") as tmp:
        for path in paths:
            local = hf_hub_download(repo, path, repo_type="dataset", endpoint=hub.url, token="hf_bench",
                                    local_dir=tmp)
            total += read_tar(local)
            os.unlink(local)
    return total


def raw_local(local_dir: Path, paths: list[str]) -> int:
    return sum(read_tar(str(local_dir / path)) for path in paths)


def stream(hub, repo: str, layers: tuple[str, ...]) -> int:
    return read_stream(HubStream(repo, layers=layers, endpoint=hub.url, token="hf_bench"))


def read_stream(samples) -> int:
    total = 0
    for sample in samples:
        total += sum(touch(v) for v in sample.values() if isinstance(v, np.ndarray))
    return total


def bench_hub(root: Path, layers: tuple[str, ...], images_per_tar: int, repeat: int, tmp: Path) -> dict:
    import huggingface_hub.constants as constants

    from stratum_testing.hub import FakeHub

    constants.HF_HUB_OFFLINE = False
    repo = "bench/data"
    with FakeHub() as hub:
        publish(root, hub, repo, layers, images_per_tar)
        paths = tar_paths(hub, repo, layers)
        local_dir = tmp / "tars"
        for path in paths:
            (local_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / path).write_bytes(hub.files(repo)[path])
        raw_local(local_dir, paths)  # warm
        # A second epoch with cache_dir reads the chunks from local disk: HubStream's own cost, no transfer.
        cached = HubStream(repo, layers=layers, endpoint=hub.url, token="hf_bench", cache_dir=str(tmp / "cache"))
        read_stream(cached)
        runs = {"tarfile, local tars": lambda: raw_local(local_dir, paths),
                "tarfile, downloaded": lambda: raw_from_hub(hub, repo, paths),
                "HubStream": lambda: stream(hub, repo, layers),
                "HubStream, cached": lambda: read_stream(cached)}
        best: dict = {name: Side() for name in runs}
        for _ in range(repeat):
            for name, run in runs.items():
                best[name].time(run)
        best["_chunks"] = len(paths)
    return best


def report(title: str, n: int, best: dict, base: str) -> None:
    """Each side's best images/s (and median), MB/s and its ratio to `base`, best against best."""
    print(title)
    rows = [(name, f"{n / side.seconds.min:.1f}", f"{n / side.seconds.median:.1f}",
             f"{side.nbytes / side.seconds.min / 1e6:.1f}", f"{best[base].seconds.min / side.seconds.min:.2f}x")
            for name, side in best.items() if not name.startswith("_")]
    print("\n".join("  " + line for line in table(("", "images/s", "median", "MB/s", f"vs {base}"), rows).splitlines()))


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # the fake Hub speaks LFS, not Xet (set before the import)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--layers", default="pixel,t5,pose,caption")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images-per-tar", type=int, default=16)
    add_repeat(parser, 3)
    parser.add_argument("--skip-hub", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    layers = tuple(x.strip() for x in args.layers.split(","))
    with workspace("data") as tmp:
        root = tmp / "ds"
        make_tree(root, args.images, layers)
        local = bench_local(root, layers, args.batch, args.workers, args.repeat)
        report(f"local, {args.images} images, layers {','.join(layers)}, batch {args.batch} "
               f"(best of {args.repeat}, warm page cache)", args.images, local, "naive")
        naive = args.images / local["naive"].seconds.min
        for n in sorted({0, 1, args.workers}):
            ratio = args.images / local[f"ours, {n} workers"].seconds.min / max(n, 1) / naive
            print(f"  ratio ours ({n} workers) / naive, per worker: {ratio:5.2f}x   (goal >= 0.90x)")
        naive_cpu, ours_cpu = local["_cpu"]["naive"], local["_cpu"]["ours, 0 workers"]
        print(f"  CPU time per image, in-process: naive {naive_cpu / args.images * 1e3:.1f} ms, ours "
              f"{ours_cpu / args.images * 1e3:.1f} ms: ratio {naive_cpu / ours_cpu:5.2f}x"
              "   (per-worker cost; goal >= 0.90x)")
        floor = local[f"floor, {args.workers} workers"].seconds.min
        print(f"  ours ({args.workers} workers) / the in-memory floor with as many workers: "
              f"{floor / local[f'ours, {args.workers} workers'].seconds.min:5.2f}x   (the rest is torch's transfer)")
        print(f"  (CPU cores here: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f})")
        if args.skip_hub:
            return
        hub = bench_hub(root, layers, args.images_per_tar, args.repeat, tmp)
        report(f"hub, {hub['_chunks']} tars of {args.images_per_tar} images (loopback fake Hub)", args.images,
               hub, "tarfile, downloaded")
        for ours, base in (("HubStream", "tarfile, downloaded"), ("HubStream, cached", "tarfile, local tars"),
                           ("HubStream", "tarfile, local tars")):
            print(f"  ratio {ours} / {base}: {hub[base].seconds.min / hub[ours].seconds.min:5.2f}x   (goal >= 0.80x)")


if __name__ == "__main__":
    main()
