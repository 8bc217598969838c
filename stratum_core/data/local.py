"""StratumDataset: a map-style dataset over a local output folder, the requested layers joined per image.

Which images exist, and which artifacts each holds, comes from one walk of the tree (the same
`discover.iter_image_dirs` walk `stratum status` makes) or, with `shards=`, from the registered shard
records and one directory listing per image of those shards. No array is opened until a sample is read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

from stratum_core.artifacts import ARTIFACTS, BY_NAME, Artifact, validate_value
from stratum_core.buckets import Bucket
from stratum_core.data.arrays import SampleError, load_npy
from stratum_core.discover import iter_image_dirs
from stratum_core.errors import ConfigError
from stratum_core.publish.config import PUBLISHABLE_LAYERS
from stratum_core.shards import load_shard
from stratum_core.store import Store

log = logging.getLogger("stratum.data")

MISSING_MODES = ("skip", "error", "none")
CORRUPT_MODES = ("error", "skip")
METADATA = BY_NAME["metadata"].filename
NO_METADATA = "no metadata.json"
_META_THREADS = 8  # metadata.json reads are small and I/O-bound


def layer_artifacts(layers: Sequence[str] | str) -> tuple[tuple[str, ...], tuple[Artifact, ...]]:
    """Check publish layer names; (layers, the artifacts they hold, in table order)."""
    layers = tuple(x.strip() for x in layers.split(",")) if isinstance(layers, str) else tuple(layers)
    unknown = [x for x in layers if x not in PUBLISHABLE_LAYERS]
    if unknown or not layers:
        raise ConfigError(f"unknown layer(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(PUBLISHABLE_LAYERS)}")
    return layers, tuple(a for a in ARTIFACTS if a.pass_name in layers)


def check_mode(name: str, value: str, modes: Sequence[str]) -> str:
    if value not in modes:
        raise ConfigError(f"{name} must be one of {', '.join(modes)}, got {value!r}")
    return value


def missing_layers(names: set[str], layers: Sequence[str], artifacts: Sequence[Artifact]) -> list[str]:
    """The layers an image directory holding `names` lacks (a layer counts only with all its files)."""
    absent = {a.pass_name for a in artifacts if a.filename not in names}
    return [layer for layer in layers if layer in absent]


class StratumDataset:
    """Samples of a local stratum output folder: dicts keyed by artifact name plus `image_id`, `bucket`
    ("WxH"), `width`, `height` (metadata.json: the source size after EXIF orientation).

    - `layers`: publish layer names (caption, dinov3, t5, pose, seg, depth, normal, pixel). Arrays come with
      the artifact table's dtype and shape for the image's bucket; large ones are memory-mapped read-only.
    - `shards`: keys of registered shards (`ffhq-0003`): their images, in shard order, without walking the
      tree. Otherwise every image directory with a metadata.json, in sorted id order (publish's order).
    - `missing`: "skip" leaves out images lacking a requested layer (counted in `left_out`), "error" refuses
      them, "none" keeps them with None under the absent keys.
    - `corrupt`: "error" raises `SampleError` naming the bad file; "skip" logs it and returns None for that
      sample (`collate` drops None samples).
    """

    def __init__(self, root: Path | str, layers: Sequence[str] | str = ("pixel", "caption"),
                 shards: Iterable[str] | None = None, missing: str = "skip", corrupt: str = "error"):
        self.root = Path(root)
        self.layers, self.artifacts = layer_artifacts(layers)
        self.missing = check_mode("missing", missing, MISSING_MODES)
        self.corrupt = check_mode("corrupt", corrupt, CORRUPT_MODES)
        self.left_out: Counter = Counter()  # reason ("missing t5", "no metadata.json") → images left out
        self.image_ids: list[str] = []
        self._absent: list[frozenset[str]] | None = [] if missing == "none" else None
        self._meta: list[tuple[int, int, Bucket] | None] | None = None
        self._select(self._listing(shards), in_id_order=shards is None)

    # ---- listing ---------------------------------------------------------------------------
    def _listing(self, shards: Iterable[str] | None) -> Iterable[tuple[str, set[str]]]:
        if shards is None:
            return iter_image_dirs(self.root)
        if isinstance(shards, str):
            shards = [shards]
        store = Store(self.root)
        keys = list(dict.fromkeys(shards))
        image_ids = [i for key in keys for i in load_shard(self.root, key).image_ids]  # checks every key first
        return ((i, store.listing(i)) for i in image_ids)

    def _select(self, listing: Iterable[tuple[str, set[str]]], in_id_order: bool) -> None:
        """Keep the images the `missing` rule admits; `in_id_order`: sort them by id (publish's order)."""
        refused: list[str] = []
        kept: list[tuple[str, frozenset[str]]] = []
        for image_id, names in listing:
            lacking = [NO_METADATA] if METADATA not in names else \
                [f"missing {x}" for x in missing_layers(names, self.layers, self.artifacts)]
            if lacking and (self.missing != "none" or lacking == [NO_METADATA]):
                self.left_out[lacking[0]] += 1
                if self.missing == "error" and len(refused) < 3:
                    refused.append(f"{image_id} ({', '.join(lacking)})")
                continue
            kept.append((image_id, frozenset(a.name for a in self.artifacts if a.filename not in names)))
        if in_id_order:
            kept.sort(key=lambda item: item[0])  # the walk's order is per path component, publish's by id
        self.image_ids = [image_id for image_id, _ in kept]
        if self._absent is not None:
            self._absent = [absent for _, absent in kept]
        if refused:
            raise ConfigError(f"{sum(self.left_out.values())} image(s) of {self.root} lack requested layers, e.g. "
                              f"{'; '.join(refused)}; use missing='skip' or missing='none'")
        if self.left_out:
            detail = ", ".join(f"{reason} {n}" for reason, n in self.left_out.most_common())
            log.info("StratumDataset %s: %d images, %d left out (%s)", self.root, len(self.image_ids),
                     self.skipped, detail)

    @property
    def skipped(self) -> int:
        """Images left out (see `left_out` for why)."""
        return sum(self.left_out.values())

    # ---- metadata --------------------------------------------------------------------------
    @property
    def buckets(self) -> list[str | None]:
        """The bucket label ("WxH") of every index, from metadata.json (no array is opened).

        None marks an image whose metadata.json is unreadable under corrupt="skip" (samplers leave it out).
        """
        return [m[2].label if m is not None else None for m in self._all_meta()]

    def _all_meta(self) -> list[tuple[int, int, Bucket] | None]:
        if self._meta is None:
            n = len(self.image_ids)
            step = 1024
            with ThreadPoolExecutor(_META_THREADS) as pool:
                parts = pool.map(self._read_meta_range, range(0, n, step), [step] * len(range(0, n, step)))
                self._meta = [m for part in parts for m in part]
        return self._meta

    def _read_meta_range(self, start: int, count: int) -> list[tuple[int, int, Bucket] | None]:
        out = []
        for i in range(start, min(start + count, len(self.image_ids))):
            try:
                out.append(self._read_meta(i))
            except SampleError as exc:
                if self.corrupt == "error":
                    raise
                log.warning("skipping a sample: %s", exc)
                out.append(None)
        return out

    def _read_meta(self, index: int) -> tuple[int, int, Bucket]:
        path = f"{self.root}/{self.image_ids[index]}/{METADATA}"
        try:
            with open(path, "rb") as f:
                meta = json.loads(f.read())
            return int(meta["width"]), int(meta["height"]), Bucket.parse(str(meta["aspect_bucket"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SampleError(f"{path}: unreadable metadata ({type(exc).__name__}: {exc})", path) from None

    # ---- samples ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self._sample(index)
        except SampleError as exc:
            if self.corrupt == "error":
                raise
            log.warning("skipping a sample: %s", exc)
            return None

    def _sample(self, index: int) -> dict:
        image_id = self.image_ids[index]
        meta = self._meta[index] if self._meta is not None else self._read_meta(index)
        if meta is None:
            raise SampleError(f"{self.root}/{image_id}/{METADATA}: unreadable metadata", METADATA)
        width, height, bucket = meta
        absent = self._absent[index] if self._absent is not None else frozenset()
        sample: dict = {"image_id": image_id, "bucket": bucket.label, "width": width, "height": height}
        directory = f"{self.root}/{image_id}"
        for artifact in self.artifacts:
            if artifact.name in absent:
                sample[artifact.name] = None
            elif artifact.kind == "npy":
                sample[artifact.name] = load_npy(f"{directory}/{artifact.filename}", artifact, bucket)
            else:
                sample[artifact.name] = read_text(f"{directory}/{artifact.filename}", artifact)
        return sample

    def __repr__(self) -> str:
        return f"StratumDataset({str(self.root)!r}, layers={self.layers}, {len(self)} images)"


def read_text(path: str, artifact: Artifact) -> str:
    """A text artifact (caption), stripped, checked as `verify` checks it."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SampleError(f"{path}: unreadable text: {exc}", path) from None
    problem = validate_value(artifact, text, None)
    if problem:
        raise SampleError(f"{path}: {problem}", path)
    return text
