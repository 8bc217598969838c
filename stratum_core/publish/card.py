"""The dataset card (README.md): YAML front matter with one `configs:` entry per layer, then prose."""

from __future__ import annotations

from typing import Mapping

from stratum_core.artifacts import BY_NAME, SEG_CLASSES
from stratum_core.publish.layout import DATA_DIR, TEXT_LAYERS

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n: int) -> str:
    for bound, label in SIZE_CATEGORIES:
        if n < bound:
            return label
    return "1B<n<10B"


def data_files_pattern(layer: str) -> str:
    return f"{DATA_DIR}/*.parquet" if layer in TEXT_LAYERS else f"{layer}/*.tar"


def data_files_patterns(layer: str, manifest: Mapping) -> list[str]:
    """The glob(s) reaching the layer's chunks: flat (`dinov3/*.tar`), nested (`dinov3/*/*.tar`) or both, only
    those that match files (datasets refuses a pattern that matches nothing)."""
    flat = data_files_pattern(layer)
    folder, _, name = flat.rpartition("/")
    entry = manifest.get("data", {}) if layer in (DATA_DIR, *TEXT_LAYERS) else manifest.get("layers", {}).get(layer, {})
    paths = list(entry.get("paths", {}).values())
    if not paths:
        return [flat]
    patterns = []
    if any(p.count("/") == 1 for p in paths):
        patterns.append(flat)
    if any(p.count("/") == 2 for p in paths):
        patterns.append(f"{folder}/*/{name}")
    return patterns


def _patterns(layer: str, manifest: Mapping) -> str:
    return ", ".join(f"`{p}`" for p in data_files_patterns(layer, manifest))


def seg_classes_section() -> list[str]:
    """The body-part name of each value in `seg.npy`, so the tars can be read without the model's docs."""
    lines = ["### seg classes", "", "| id | name |", "|---|---|"]
    return lines + [f"| {i} | {name} |" for i, name in enumerate(SEG_CLASSES)] + [""]


def provenance_section(layers: Mapping[str, Mapping]) -> list[str]:
    """Per layer, the model, revision, pass version and precision that produced it; a layer published with
    `--allow-mixed-revisions` gets one row per combination, marked mixed."""
    rows = []
    for name, entry in layers.items():
        info = entry.get("provenance")
        if not info:
            continue
        mixed = " (mixed)" if info.get("variants") else ""
        for v in info.get("variants") or [info]:
            if v.get("images"):
                rows.append(f"| {name}{mixed} | {v.get('model') or '-'} | {v.get('weights') or '-'} | "
                            f"{v.get('version') or '-'} | {v.get('precision') or '-'} | {v['images']} |")
        if info.get("unknown"):
            rows.append(f"| {name} | unknown (no provenance record) | - | - | - | {info['unknown']} |")
    if not rows:
        return []
    lines = ["## Provenance", "", "What produced each layer (`manifest.json` → `layers.<layer>.provenance`).", ""]
    if any((e.get("provenance") or {}).get("variants") for e in layers.values()):
        lines += ["A layer marked *mixed* was published from images produced by different model revisions "
                  "(`stratum publish --allow-mixed-revisions`).", ""]
    return lines + ["| layer | model | revision | pass version | precision | images |", "|---|---|---|---|---|---|",
                    *rows, ""]


def build_card(repo_id: str, manifest: Mapping, license: str, attribution: str | None = None) -> str:
    """README.md text; `load_dataset(repo, "<layer>")` works for every published layer."""
    layers = manifest.get("layers", {})
    total = int(manifest.get("total_images", 0))
    yaml = ["---", f"license: {license}", f"pretty_name: {repo_id.split('/')[1]}",
            "size_categories:", f"- {size_category(total)}", "tags:", "- stratum", "configs:"]
    names = list(layers) or []
    if not any(n in TEXT_LAYERS for n in names) and manifest.get("data", {}).get("chunks"):
        names = ["data", *names]
    for name in names:
        patterns = data_files_patterns(name, manifest)
        yaml += [f"- config_name: {name}", "  data_files:", "  - split: train"]
        yaml += [f"    path: {patterns[0]}"] if len(patterns) == 1 else ["    path:"] + [f"    - {p}" for p in patterns]
    yaml.append("---")
    body = [f"# {repo_id.split('/')[1]}", "",
            f"Multi-modal annotations for {total} images, published with {manifest.get('created_with', 'stratum')}.",
            "", "| layer | format | images | files |", "|---|---|---|---|"]
    body.append(f"| data (metadata table) | parquet | {manifest.get('data', {}).get('count', 0)} | "
                f"{_patterns('data', manifest)} |")
    for name, entry in layers.items():
        body.append(f"| {name} | {entry['format']} | {entry.get('count', 0)} | {_patterns(name, manifest)} |")
    body += ["", "## Layout", "",
             f"- `{DATA_DIR}/<folder>/<first>-<last>.parquet`: image_id, width, height, aspect_bucket, caption, "
             "pose (133×3 float16), dinov3_cls (1024 float16); a column is null where that layer is not published.",
             "- `<layer>/<folder>/<first>-<last>.tar`: uncompressed WebDataset tars, members `<key>.<artifact>.npy`; "
             "in the last path component of an id `%` is written `%25` and `.` is written `%2E`.",
             "- `<folder>/<first>-<last>.index.json`: the ids and counts of the folder's chunks in that range "
             "(`chunks` → range → entry); `manifest.json`: every chunk, its path and count.",
             "- `<first>-<last>` are positions (5+ digits, inclusive) in the dataset's image order (sorted, or "
             "shard registration order when the dataset was registered in shards); `<folder>` groups chunks "
             "so that no folder nears the Hub's 10,000 entries. Older repos may hold flat `<dir>/<first>-<last>.*` "
             "files, each with its own index.", ""]
    arrays = [BY_NAME[a] for entry in layers.values() for a in entry.get("artifacts", []) if a in BY_NAME]
    if arrays:
        body += ["## Arrays", ""] + [f"- `{a.name}` ({a.dtype}): {a.description}" for a in arrays] + [""]
    body += provenance_section(layers)
    if "seg" in layers:
        body += seg_classes_section()
    body += ["## Loading", "", "```python", "from datasets import load_dataset", ""]
    body += [f'ds = load_dataset("{repo_id}", "{name}", split="train")' for name in names]
    body += ["```", "", "## License", "", f"`{license}`.", ""]
    if attribution:
        body += ["## Attribution", "", attribution.strip(), ""]
    return "\n".join(yaml + body)
