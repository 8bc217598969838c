"""Bench: bytes/s of packing a layer (data parquet + WebDataset tar) vs reading the same npy files from disk.

Goal: packing >= 0.9x the plain read rate. Default: 300 images of the dinov3 layer (1024x1024 bucket:
4096 patch tokens, ~8 MB per image); `--full-size` uses 2000 images. The layer is packed as publish packs
it: tars of at most `--max-tar-mb`, each held in memory and freed before the next one (through one
`PayloadPool`, so the next chunk reuses the freed one's memory; `--no-pool` packs each into a fresh memfd);
both sides start from a cold page cache. By default the pool starts holding one chunk's pages, as for every
chunk of a publish after its first; `--first-chunk` starts from a fresh pool (fresh pages are slow to fault
in, slowest in a VM).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _common import Samples, add_repeat, workspace
from stratum_core.artifacts import BY_NAME
from stratum_core.publish.config import PublishConfig
from stratum_core.publish.layout import split_by_size, tar_artifacts
from stratum_core.publish.pack import PayloadPool, pack_data, pack_tar, tar_member_bytes
from stratum_core.store import Store


def make(root: Path, n: int, patches: int) -> list[str]:
    store = Store(root)
    rng = np.random.default_rng(0)
    ids = [f"img/{i:06d}" for i in range(n)]
    patch = rng.standard_normal((patches, 1024)).astype(np.float16)
    for i, image_id in enumerate(ids):
        store.write(image_id, BY_NAME["metadata"], {"image_id": image_id, "source_path": image_id + ".jpg",
                                                    "width": 1024, "height": 1024, "aspect_bucket": "1024x1024"})
        store.write(image_id, BY_NAME["caption"], f"a photo number {i}")
        store.write(image_id, BY_NAME["dinov3_cls"], patch[i % patches])
        store.write(image_id, BY_NAME["dinov3_patches"], patch + np.float16(i % 7))
    return ids


def read_all(root: Path, ids: list[str]) -> int:
    """Read every file packing reads: the layer's npy files (the tar) and metadata.json, caption.txt and
    dinov3_cls.npy (the parquet); returns the bytes of the npy files of the tar."""
    total = 0
    for image_id in ids:
        for artifact in tar_artifacts("dinov3"):
            with open(root / image_id / artifact.filename, "rb") as f:
                total += len(f.read())
        for name in ("metadata.json", BY_NAME["caption"].filename):
            with open(root / image_id / name, "rb") as f:
                f.read()
    return total


def drop_cache(root: Path) -> None:
    """Drop the files' pages from the page cache, so both sides read from disk.

    `sync` first: the kernel only drops clean pages, and the files were just written (and the previous
    round's output may still be dirty), so without it some rounds would read from memory.
    """
    os.sync()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def timed_read(root: Path, ids: list[str]) -> float:
    drop_cache(root)
    t0 = time.perf_counter()
    read_all(root, ids)
    return time.perf_counter() - t0


def timed_pack(root: Path, ids: list[str], max_tar_mb: float, pooled: bool, first_chunk: bool) -> tuple[float, float]:
    """Seconds to pack the dinov3 tars and the data parquet of `ids` (payloads freed, as after upload).

    Default (steady state): the pool already holds one freed chunk's pages, as it does for every chunk of a
    publish after its first; freeing the pool at the end of the publish is not counted. `first_chunk`: a
    fresh pool, as for a publish's first chunk, freeing its memory counted too.
    """
    groups = split_by_size(ids, [tar_member_bytes(root, "dinov3", i) for i in ids], int(max_tar_mb * 2**20))
    pool = PayloadPool() if pooled else None
    if pool is not None and not first_chunk:
        pack_tar(root, "dinov3", max(groups, key=len), "dinov3/x.tar", pool=pool).close()
    drop_cache(root)
    t0 = time.perf_counter()
    for group in groups:
        pack_tar(root, "dinov3", group, "dinov3/x.tar", pool=pool).close()
    t1 = time.perf_counter()
    pack_data(root, ids, ("caption", "dinov3"), "data/x.parquet", pool=pool).close()
    if pool is not None and first_chunk:
        pool.close()
    t2 = time.perf_counter()
    if pool is not None:
        pool.close()
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--full-size", action="store_true")
    add_repeat(parser, 3)
    parser.add_argument("--max-tar-mb", type=float, default=PublishConfig.max_tar_mb)
    parser.add_argument("--no-pool", action="store_true", help="a fresh memfd per chunk (no page reuse)")
    parser.add_argument("--first-chunk", action="store_true",
                        help="start from a fresh pool, as a publish's first chunk does (default: steady state)")
    args = parser.parse_args()
    n = args.images or (2000 if args.full_size else 300)
    with workspace("publish") as tmp:
        root = tmp / "ds"
        ids = make(root, n, 4096)
        nbytes = read_all(root, ids)
        read_s, tar_s, parquet_s, pack_s = Samples(), Samples(), Samples(), Samples()
        for repeat in range(args.repeat):
            # Alternate which side goes first, so neither always runs right after the other's writeback.
            if repeat % 2:
                read_s.add(timed_read(root, ids))
            tar, parquet = timed_pack(root, ids, args.max_tar_mb, pooled=not args.no_pool,
                                      first_chunk=args.first_chunk)
            tar_s.add(tar)
            parquet_s.add(parquet)
            pack_s.add(tar + parquet)
            if not repeat % 2:
                read_s.add(timed_read(root, ids))
        mode = "first chunk of a publish (fresh pool)" if args.first_chunk else "steady state (pool holds one chunk)"
        print(f"images: {n}, npy bytes: {nbytes / 1e6:.1f} MB ({args.repeat} rounds: best, median; cold page cache, "
              f"{mode})")
        print(f"read the same files:   {_rates(nbytes, read_s)}   (npy bytes per second)")
        print(f"pack tar only:         {_rates(nbytes, tar_s)}")
        print(f"pack tar + parquet:    {_rates(nbytes, pack_s)}   (parquet {parquet_s.min * 1e3:.0f} ms)")
        print(f"ratio pack/read:       {read_s.min / pack_s.min:8.2f}x best, {read_s.median / pack_s.median:.2f}x "
              "median   (goal >= 0.90x)")


def _rates(nbytes: int, seconds: Samples) -> str:
    return f"{nbytes / seconds.min / 1e6:8.1f} MB/s, median {nbytes / seconds.median / 1e6:.1f}"


if __name__ == "__main__":
    main()
