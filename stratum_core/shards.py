"""The shard registry: stable, immutable batches of images recorded under `<output>/.stratum/shards/`.

A shard holds up to `shard_size` (default 1000) sorted images of one top-level source
folder (a "group"; images directly in the input root form the group `_root`). Its key is
readable, `<group slug>-<index:04d>` (e.g. `ffhq-0003`), and never contains a comma or
`...`. Each shard is one JSON file, `<output>/.stratum/shards/<key>.json`, written once
and never changed: images that appear later land in new shards with the next index, so
every process (the Dagster sensors, `stratum process --shard-key`) agrees on membership.

Registration works one group at a time so a caller can spread a large tree over several
calls with a cursor (`register_new(..., start_after=..., time_budget=...)`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from stratum_core.artifacts import pass_files, pass_names
from stratum_core.discover import DiscoveryError, SourceImage, entry_kind, image_id_for, scan, split_collisions
from stratum_core.errors import ConfigError
from stratum_core.store import FAILURE_PREFIX, STATE_DIR, Store, write_atomic

log = logging.getLogger("stratum.shards")

DEFAULT_SHARD_SIZE = 1000
ROOT_GROUP = ""  # images directly in the input root
ROOT_SLUG = "_root"
SHARDS_DIR = "shards"
_SLUG_MAX = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_KEY = re.compile(r"^[A-Za-z0-9_-]+-\d{4,}$")


@dataclass(frozen=True)
class Shard:
    """One registered shard: `images` are POSIX paths relative to the input root, sorted."""

    key: str
    group: str
    index: int
    images: tuple[str, ...]
    created: float = field(default=0.0, compare=False)

    @property
    def image_ids(self) -> list[str]:
        # The id rule on the string: a Path per image was a third of a status sweep over 1M images.
        return [image_id_for(p) for p in self.images]

    def to_json(self) -> bytes:
        return json.dumps({"key": self.key, "group": self.group, "index": self.index,
                           "created": self.created, "images": list(self.images)}, indent=0).encode()


@dataclass
class Registration:
    """What one `register_new` call did; `cursor` is the last group it finished."""

    new_shards: list[Shard] = field(default_factory=list)
    groups_scanned: int = 0
    cursor: str | None = None
    wrapped: bool = False  # True when the walk reached the last group
    errors: list[DiscoveryError] = field(default_factory=list)


def shards_dir(output_dir: Path) -> Path:
    return Path(output_dir) / STATE_DIR / SHARDS_DIR


def group_slug(group: str) -> str:
    """A key-safe name for a group: the folder name when it is already safe, else a sanitised name + hash."""
    if group == ROOT_GROUP:
        return ROOT_SLUG
    slug = _UNSAFE.sub("_", group)
    # A changed, leading-underscore or long name gets a short hash so two folders never share a slug.
    if slug != group or slug.startswith("_") or len(slug) > _SLUG_MAX:
        digest = hashlib.sha1(group.encode("utf-8", "surrogateescape")).hexdigest()[:6]
        slug = f"{slug[:_SLUG_MAX].rstrip('_-') or 'g'}-{digest}"
    return slug


def shard_key(group: str, index: int) -> str:
    return f"{group_slug(group)}-{index:04d}"


def list_groups(input_dir: Path) -> list[str]:
    """Top-level folders of `input_dir`, sorted, plus `""` when image files sit in the root itself."""
    root = os.path.realpath(input_dir)
    groups: list[str] = []
    has_root_images = False
    try:
        with os.scandir(input_dir) as it:
            entries = list(it)
    except OSError as exc:
        raise ConfigError(f"cannot list input directory {input_dir}: {exc}") from exc
    for entry in entries:
        if entry.name.startswith("."):
            continue
        kind, refusal = entry_kind(entry, root, entry.name)  # a link loop or a FIFO must not crash this
        if refusal is not None:
            has_root_images = True  # the root group's scan reports it (and registers no image for it)
        elif kind == "dir":
            groups.append(entry.name)
        elif kind == "file":
            has_root_images = True
    groups.sort()
    return ([ROOT_GROUP] if has_root_images else []) + groups


def scan_group(input_dir: Path, group: str) -> tuple[list[SourceImage], list[DiscoveryError]]:
    """The sorted, collision-free images of one group (paths relative to `input_dir`)."""
    rel_paths, errors = group_rel_paths(input_dir, group)
    return [SourceImage(rel, Path(input_dir, rel)) for rel in rel_paths], errors


def group_rel_paths(input_dir: Path, group: str) -> tuple[list[str], list[DiscoveryError]]:
    """`scan_group` as POSIX paths only: all that registration needs, one image object fewer per image."""
    input_dir = Path(input_dir)
    if group == ROOT_GROUP:  # the same rules as discovery: no hidden files, no links that leave the input
        found, errors = scan(input_dir, recursive=False)
        kept, collisions = split_collisions(found)
        return [s.rel_path for s in kept], errors + collisions
    # Collisions and order are the same with or without the shared `group/` prefix, so the
    # group's own scan is checked as is and only the kept paths get the prefix.
    inner, errors = scan(input_dir / group)
    kept, collisions = split_collisions(inner)
    prefix = f"{group}/"
    if collisions:  # rare: check the colliding ones again with full paths, so the messages name them
        colliding = {e.source for e in collisions}
        _, collisions = split_collisions([SourceImage(prefix + s.rel_path, s.path)
                                          for s in inner if s.rel_path in colliding])
    errors = [DiscoveryError(prefix + e.source, e.reason, e.message) for e in errors]
    return [prefix + s.rel_path for s in kept], errors + collisions


def load_shard(output_dir: Path, key: str) -> Shard:
    """Read one registered shard; a clear error for an unknown key."""
    if not _KEY.match(key):
        raise ConfigError(f"not a shard key: {key!r} (keys look like ffhq-0003)")
    path = shards_dir(output_dir) / f"{key}.json"
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no shard {key!r} is registered under {shards_dir(output_dir)}") from None
    return Shard(record["key"], record["group"], record["index"], tuple(record["images"]), record.get("created", 0.0))


def shard_keys(output_dir: Path) -> list[str]:
    """Every registered key, sorted (one directory listing)."""
    try:
        names = os.listdir(shards_dir(output_dir))
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json") and _KEY.match(n[:-5]))


def group_shards(output_dir: Path, group: str) -> list[Shard]:
    """The registered shards of one group, in index order."""
    prefix = re.compile(rf"^{re.escape(group_slug(group))}-(\d{{4,}})$")
    found = [load_shard(output_dir, k) for k in shard_keys(output_dir) if prefix.match(k)]
    return sorted((s for s in found if s.group == group), key=lambda s: s.index)


def shard_sources(input_dir: Path, output_dir: Path, key: str) -> list[SourceImage]:
    """The sources of shard `key` that still exist (what `stratum process --shard-key` runs)."""
    shard = load_shard(output_dir, key)
    images = [SourceImage(rel, Path(input_dir).joinpath(*rel.split("/"))) for rel in shard.images]
    present = [s for s in images if s.path.is_file()]
    if len(present) < len(images):
        log.warning("shard %s: %d of its %d sources are gone from %s", key, len(images) - len(present),
                    len(images), input_dir)
    return present


def register_group(input_dir: Path, output_dir: Path, group: str,
                   shard_size: int = DEFAULT_SHARD_SIZE) -> tuple[list[Shard], list[DiscoveryError]]:
    """Put the group's unregistered images into new shards (existing shards are never touched)."""
    if shard_size < 1:
        raise ConfigError("shard size must be at least 1")
    rel_paths, errors = group_rel_paths(input_dir, group)
    with _registry_lock(output_dir):
        existing = group_shards(output_dir, group)
        known = {rel for s in existing for rel in s.images}
        fresh = [rel for rel in rel_paths if rel not in known]
        next_index = existing[-1].index + 1 if existing else 0
        created = []
        for start in range(0, len(fresh), shard_size):
            index = next_index + len(created)
            shard = Shard(shard_key(group, index), group, index, tuple(fresh[start:start + shard_size]), time.time())
            _create_record(output_dir, shard)
            created.append(shard)
    if created:
        log.info("group %r: registered %d new shards (%d images)", group or ROOT_SLUG, len(created), len(fresh))
    return created, errors


def register_new(input_dir: Path, output_dir: Path, *, start_after: str | None = None,
                 time_budget: float = 20.0, shard_size: int = DEFAULT_SHARD_SIZE) -> Registration:
    """Register new images group by group, starting after group `start_after`, until `time_budget` is spent.

    Returns the new shards and the cursor to pass as `start_after` next time; once the
    last group is done the result is `wrapped` and its cursor is None (start over).
    """
    started = time.monotonic()
    result = Registration(cursor=start_after)
    groups = list_groups(input_dir)
    todo = [g for g in groups if start_after is None or g > start_after]
    for position, group in enumerate(todo):
        shards, errors = register_group(input_dir, output_dir, group, shard_size)
        result.new_shards.extend(shards)
        result.errors.extend(errors)
        result.groups_scanned += 1
        result.cursor = group
        if position + 1 < len(todo) and time.monotonic() - started > time_budget:
            return result
    result.wrapped = True
    result.cursor = None
    return result


def register_all(input_dir: Path, output_dir: Path, shard_size: int = DEFAULT_SHARD_SIZE) -> Registration:
    """Register every unregistered image of the input in one call (the CLI and the quickstart)."""
    total = Registration()
    cursor = None
    while True:
        step = register_new(input_dir, output_dir, start_after=cursor, time_budget=float("inf"),
                            shard_size=shard_size)
        total.new_shards.extend(step.new_shards)
        total.errors.extend(step.errors)
        total.groups_scanned += step.groups_scanned
        if step.wrapped:
            total.wrapped = True
            return total
        cursor = step.cursor


@dataclass
class ShardCompletion:
    """Per pass: images of the shard holding all its artifacts (`done`) and failure records (`failed`)."""

    total: int
    done: dict[str, int]
    failed: dict[str, int]

    def complete(self, pass_name: str) -> bool:
        return self.total > 0 and self.done.get(pass_name, 0) == self.total


def shard_completion(output_dir: Path, shard: Shard) -> ShardCompletion:
    """Count finished images per pass from the filesystem (one directory listing per image)."""
    store = Store(output_dir)
    files_of = {p: pass_files(p) for p in pass_names()}
    done = dict.fromkeys(files_of, 0)
    failed = dict.fromkeys(files_of, 0)
    for image_id in shard.image_ids:
        names = store.listing(image_id)
        for pass_name, files in files_of.items():
            if files <= names:
                done[pass_name] += 1
            elif f"{FAILURE_PREFIX}{pass_name}.json" in names:
                failed[pass_name] += 1
    return ShardCompletion(len(shard.images), done, failed)


def _create_record(output_dir: Path, shard: Shard) -> None:
    """Write a new shard record whole, and only if no record has its key: a group whose slug is the same
    as another's (a folder literally named `x_y-1a2b3c` next to `x y`) must never replace that shard."""
    path = shards_dir(output_dir) / f"{shard.key}.json"
    try:
        write_atomic(path, shard.to_json(), replace=False)
    except FileExistsError:
        other = load_shard(output_dir, shard.key)
        raise ConfigError(f"shard key {shard.key} of folder {shard.group or ROOT_SLUG!r} is already taken by "
                          f"folder {other.group or ROOT_SLUG!r} ({path}); rename one of the two folders") from None


@contextmanager
def _registry_lock(output_dir: Path) -> Iterator[None]:
    """One registering process at a time, so two sensors never hand out the same index."""
    directory = shards_dir(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
