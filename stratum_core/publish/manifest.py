"""manifest.json: what the repo holds, rebuilt from the list of chunk files and their counts."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Mapping

from stratum_core import __version__
from stratum_core.artifacts import artifacts_of
from stratum_core.publish.layout import DATA_DIR, PARQUET_LAYERS, TEXT_LAYERS, ChunkRange, parse_chunk_path
from stratum_core.publish.pack import data_schema

MANIFEST_VERSION = 1


def chunk_counts_from_manifest(manifest: Mapping | None) -> dict[str, dict]:
    """Counts recorded in an earlier manifest: payload path → {"count": n, "counts": {layer: n}}."""
    known: dict[str, dict] = {}
    if not manifest:
        return known
    data = manifest.get("data", {})
    data_paths = data.get("paths", {})
    for label, count in data.get("chunks", {}).items():
        known[data_paths.get(label, f"{DATA_DIR}/{label}.parquet")] = {"count": count, "counts": {}}
    for layer, entry in manifest.get("layers", {}).items():
        paths = entry.get("paths", {})
        for label, count in entry.get("chunks", {}).items():
            if layer in TEXT_LAYERS:
                path = data_paths.get(label, f"{DATA_DIR}/{label}.parquet")
                known.setdefault(path, {"count": None, "counts": {}})["counts"][layer] = count
            else:
                known[paths.get(label, f"{layer}/{label}.tar")] = {"count": count, "counts": {}}
    return known


def build_manifest(chunk_info: Mapping[str, Mapping], now: _dt.datetime | None = None,
                   chunking: Mapping[str, Mapping] | None = None,
                   provenance: Mapping[str, Mapping] | None = None) -> dict:
    """Manifest for the given chunk files.

    `chunk_info` maps each payload path in the repo to {"count": images in the chunk,
    "counts": {layer: images with that layer} (data chunks), "exact": bool}. `chunking`: each layer's grid
    {"images_per_chunk", "chunks_per_folder"}, kept so later runs cut the same chunks. `provenance`: layer →
    what produced it (`provenance.layer_provenance`), kept as the layer's `provenance`.
    Each layer (and `data`) lists `chunks` {range: count} and `paths` {range: file in the repo}.
    """
    data_chunks: dict[str, int] = {}
    data_paths: dict[str, str] = {}
    layers: dict[str, dict] = {}
    estimated: list[str] = []
    for path in sorted(chunk_info):
        parsed = parse_chunk_path(path)
        if parsed is None:
            continue
        layer, chunk = parsed
        info = chunk_info[path]
        if not info.get("exact", True):
            estimated.append(path)
        count = info.get("count")
        count = len(chunk) if count is None else int(count)
        if layer == DATA_DIR:
            data_chunks[chunk.label] = count
            data_paths[chunk.label] = path
            for text_layer in TEXT_LAYERS:
                n = info.get("counts", {}).get(text_layer)
                if n:
                    _layer_entry(layers, text_layer)["chunks"][chunk.label] = int(n)
                    _layer_entry(layers, text_layer)["paths"][chunk.label] = path
        else:
            _layer_entry(layers, layer)["chunks"][chunk.label] = count
            _layer_entry(layers, layer)["paths"][chunk.label] = path
    for name, entry in layers.items():
        entry["count"] = sum(entry["chunks"].values())
        if provenance and provenance.get(name):
            entry["provenance"] = dict(provenance[name])
    manifest = {
        "version": MANIFEST_VERSION,
        "total_images": sum(data_chunks.values()),
        "data": {"format": "parquet", "path": DATA_DIR, "columns": data_schema().names,
                 "chunks": data_chunks, "count": sum(data_chunks.values()), "paths": data_paths},
        "layers": {name: layers[name] for name in sorted(layers)},
        "created_with": f"stratum {__version__}",
        "updated_at": (now or _dt.datetime.now(_dt.timezone.utc)).replace(microsecond=0).isoformat(),
    }
    if chunking:
        manifest["chunking"] = {k: dict(v) for k, v in sorted(chunking.items())}
    if estimated:
        manifest["estimated_counts"] = estimated
    return manifest


def _layer_entry(layers: dict, layer: str) -> dict:
    if layer not in layers:
        if layer in TEXT_LAYERS:
            layers[layer] = {"format": "parquet", "path": DATA_DIR, "column": layer, "chunks": {}, "paths": {}}
        else:
            entry = {"format": "webdataset", "path": layer,
                     "artifacts": [a.name for a in artifacts_of(layer) if a.kind == "npy"], "chunks": {},
                     "paths": {}}
            if layer in PARQUET_LAYERS:
                entry["column"] = "dinov3_cls" if layer == "dinov3" else layer
            layers[layer] = entry
    return layers[layer]


def manifest_provenance(manifest: Mapping | None) -> dict[str, dict]:
    """layer → the provenance an earlier manifest recorded for it."""
    layers = (manifest or {}).get("layers", {})
    return {name: entry["provenance"] for name, entry in layers.items() if entry.get("provenance")}


def layer_ranges(manifest: Mapping | None, layer: str) -> list[ChunkRange]:
    """Ranges the manifest says `layer` covers."""
    if not manifest:
        return []
    chunks = manifest.get("layers", {}).get(layer, {}).get("chunks", {})
    from stratum_core.publish.layout import parse_range_label

    return [r for r in (parse_range_label(label) for label in chunks) if r is not None]


def same_content(a: Mapping | None, b: Mapping | None) -> bool:
    """Equal manifests apart from the timestamp."""
    strip = lambda m: {k: v for k, v in (m or {}).items() if k != "updated_at"}  # noqa: E731
    return strip(a) == strip(b)


def dumps(manifest: Mapping) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()
