"""The whole GPU measurement in one command: every model pass at full size, through the real engine.

For each pass group (dinov3, t5, pose, seg+depth+normal) it builds the real architecture with
random weights (DINOv3 ViT-L/16 from its real config values, the T5-large encoder, Sapiens-1B-shaped
TorchScript checkpoints, DWPose-shaped ONNX graphs at the real networks' cost), then measures on real
JPEGs it generates (1024×1024 crops):

- ours: images/s (captions/s for t5) through `Engine` at the run's default precision and chosen
  batch, decode in worker threads and the background writer included, after one warm-up batch;
- naive: the batch-1 fp32 loop (decode, one forward per image, np.save), for pose the reference
  DWPose flow on onnxruntime's CPU provider (its default);
- the FLOP bound: FLOPs per item counted from the architecture (torch's FlopCounterMode on one
  item; the ONNX builders' own count for pose) against the device's dense bf16 peak;
- peak GPU memory during the run, the activation memory per item the pass assumes against what it
  used, the batch it chose here and the batch its formula gives on an 80 GB card;
- the host side: decode and artifact-write rates measured at the same time on --workers threads.

It writes gpu.json and gpu.md to --out (default $OUT, else ./bench-gpu) and prints the table.
`--smoke` runs the same code on the CPU with tiny shapes in well under a minute (CI runs it).

    PYTHONPATH=. python bench/gpu.py                   # a CUDA host, ~4-6 minutes
    PYTHONPATH=. python bench/gpu.py --smoke --out /tmp/gpu-smoke

`--repeat N` times ours and naive N times each (ours on fresh outputs): the table shows the best, with the
median beside it; gpu.json has both.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from _common import CAPTION_WORDS, Samples, add_repeat, table, workspace
from stratum_core.artifacts import BY_NAME, artifacts_of
from stratum_core.buckets import Bucket
from stratum_core.discover import SourceImage
from stratum_core.engine import Engine, RunConfig
from stratum_core.intake import decode
from stratum_core.passes import build_passes
from stratum_core.passes.base import Item, Pass, PassOptions
from stratum_core.passes.torch_utils import bytes_per_element, synchronize
from stratum_core.progress import Progress
from stratum_core.store import Store

log = logging.getLogger("bench.gpu")

BUCKET = Bucket(1024, 1024)
CARD_80GB = 80 * 10**9
AUTO_HEADROOM = 0.7  # torch_utils.auto_batch_size's share of free memory
# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), matched on the device name in
# this order; any other device uses the measured bf16 matmul rate.
BF16_PEAKS = (("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
              ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
              ("L4", 121e12), ("A10", 125e12), ("4090", 165e12), ("A6000", 155e12))


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    smoke: bool
    images: int  # engine run, per image pass group
    naive_images: int
    captions: int
    naive_captions: int
    sapiens_images: int
    sapiens_naive: int
    workers: int
    precision: str = "auto"  # ours: --precision as `stratum process` takes it (auto: each pass's default)
    repeat: int = 1  # timed runs of ours and of naive (--repeat)


FULL = Plan(False, images=256, naive_images=16, captions=2048, naive_captions=64, sapiens_images=64,
            sapiens_naive=4, workers=16)
SMOKE = Plan(True, images=2, naive_images=1, captions=4, naive_captions=1, sapiens_images=1, sapiens_naive=1,
             workers=2)


@dataclass
class Row:
    """One pass group's figures."""

    name: str
    unit: str
    precision: dict[str, str]
    batch: dict[str, int]
    items: int
    ours_per_s: float
    naive_per_s: float
    flops_per_item: float
    bound_per_s: float
    peak_gib: float | None = None
    assumed_mib_per_item: float | None = None
    used_mib_per_item: float | None = None
    batch_on_80gb: dict[str, int] = field(default_factory=dict)
    note: str = ""
    ours_median_per_s: float | None = None  # over --repeat runs
    naive_median_per_s: float | None = None

    @property
    def speedup(self) -> float:
        return self.ours_per_s / self.naive_per_s if self.naive_per_s else float("nan")

    @property
    def of_bound(self) -> float:
        return self.ours_per_s / self.bound_per_s if self.bound_per_s else float("nan")


# ---------------------------------------------------------------------- device
def device_info(device: str, smoke: bool) -> dict[str, Any]:
    """Name, memory, and the bf16 peak used for the FLOP bound (data sheet, else measured)."""
    if not device.startswith("cuda"):
        measured = matmul_rate(device, torch.float32, 512 if smoke else 2048)
        return {"device": f"CPU ({torch.get_num_threads()} threads)", "memory_gib": None,
                "peak_flops": measured, "peak_source": "measured fp32 matmul (CPU: no bf16 tensor cores)",
                "measured_matmul_flops": measured}
    name = torch.cuda.get_device_name(device)
    total = torch.cuda.get_device_properties(device).total_memory
    measured = matmul_rate(device, torch.bfloat16, 8192)
    sheet = next((peak for key, peak in BF16_PEAKS if key in name), None)
    return {"device": name, "memory_gib": total / 2**30, "peak_flops": sheet or measured,
            "peak_source": "data sheet, dense bf16" if sheet else "measured bf16 matmul",
            "measured_matmul_flops": measured}


def matmul_rate(device: str, dtype: Any, n: int, repeats: int = 10) -> float:
    """FLOP/s of an n×n matmul (the best of `repeats`)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_memory(device: str) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None


def reset_memory(device: str) -> int | None:
    """Free cached blocks and reset the peak; returns the bytes allocated now (the loaded weights)."""
    gc.collect()
    if not device.startswith("cuda"):
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


# ---------------------------------------------------------------------- inputs
def make_images(folder: Path, n: int) -> list[SourceImage]:
    """`n` smooth colour 1536×1536 JPEGs (photo-like files; they crop to the 1024×1024 bucket)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(30, 225, (8, 8, 3), dtype=np.uint8)
        field_ = Image.fromarray(small).resize((1536, 1536), Image.Resampling.BICUBIC)
        field_.save(folder / f"{i:05d}.jpg", quality=90)
    return [SourceImage(p.name, p) for p in sorted(folder.iterdir())]


def make_captions(folder: Path, n: int, workers: int) -> tuple[list[SourceImage], Path, list[str]]:
    """An output tree whose `n` images have metadata and a caption (60-120 words), for the t5 pass."""
    rng = np.random.default_rng(1)
    source, out = folder / "in", folder / "out"
    source.mkdir(parents=True)
    store = Store(out)
    texts = []
    for i in range(n):
        Image.new("RGB", (8, 8)).save(source / f"{i:05d}.png")
        texts.append(" ".join(rng.choice(CAPTION_WORDS, size=int(rng.integers(60, 120)))) + ".")
        store.write(f"{i:05d}", BY_NAME["caption"], texts[-1])
    images = [SourceImage(p.name, p) for p in sorted(source.iterdir())]
    Engine(RunConfig(output_dir=out, passes=("metadata",), workers=workers, progress_every=1e9)).run(
        images, progress=Progress(len(images), every=1e9))
    return images, out, texts


# ---------------------------------------------------------------------- models
def build_dinov3(folder: Path, smoke: bool) -> Path:
    """DINOv3 ViT-L/16 with the values of facebook/dinov3-vitl16-pretrain-lvd1689m's config.json."""
    from stratum_testing import transformers_models

    return transformers_models.build_dinov3(folder, layers=0 if smoke else 24,
                                            intermediate_size=256 if smoke else 4096,
                                            layerscale_value=transformers_models.DINOV3_LAYERSCALE)


def build_t5(folder: Path, smoke: bool) -> Path:
    """The T5-large encoder (google-t5/t5-large's config values) and a small T5 tokenizer."""
    from stratum_testing import transformers_models

    return transformers_models.build_t5(folder, layers=1 if smoke else 24, d_ff=256 if smoke else 4096,
                                        vocab_size=transformers_models.T5_LARGE_VOCAB)


def build_sapiens(model_dir: Path, smoke: bool, device: str) -> float:
    """The three Sapiens-1B-shaped TorchScript checkpoints (bench/sapiens.py's builder) under their real
    names; returns the FLOPs of one image through all three, counted on the eager modules (meta device).
    The smoke run uses the test suite's pooling checkpoints instead (~0 FLOPs: the 1024×768 heads of even
    a tiny ViT take seconds per call on a CI core)."""
    from torch.utils.flop_counter import FlopCounterMode

    if smoke:
        from stratum_testing.sapiens_models import build_sapiens_models

        build_sapiens_models(model_dir)
        return 0.0
    import sapiens  # bench/sapiens.py (bench/ is on sys.path): one source for each shape
    sapiens.build_models(model_dir, sapiens.FULL, device)
    flops = 0.0
    for _spec, classes, head_attr, deconvs, convs in sapiens.TASKS.values():
        with torch.device("meta"):
            module = sapiens.SapiensLike(sapiens.FULL, classes, getattr(sapiens.FULL, head_attr), deconvs, convs)
            with FlopCounterMode(display=False) as counter:
                module(torch.zeros(1, 3, 1024, 768))
        flops += counter.get_total_flops()
    return flops


def build_pose(folder: Path, smoke: bool) -> float:
    """The two DWPose-shaped ONNX graphs (bench/pose.py's builders, dynamic batch); returns FLOPs per image
    (one detector call plus one person)."""
    import pose  # bench/pose.py (bench/ is on sys.path)

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"det": ((8, 16, 32, 64, 128), 0), "pose": ((8, 16, 32, 64, 128), 0)} if smoke else pose.FULL
    from stratum_core.passes.dwpose import DETECTOR_FILE, POSE_FILE

    macs = pose.build_detector(folder / DETECTOR_FILE, *sizes["det"], "N")
    macs += pose.build_pose(folder / POSE_FILE, *sizes["pose"], "N")
    return 2.0 * macs


# ---------------------------------------------------------------------- running passes
def loaded_passes(names: Sequence[str], options: PassOptions, configs: dict | None = None) -> list[Pass]:
    """Passes loaded once and kept open across the engine runs of this benchmark (the engine closes them)."""
    passes = build_passes(names, options, configs)
    for p in passes:
        p.check_requirements()
        p.load()
        p.close, p.really_close = (lambda: None), p.close
    return passes


def close(passes: Sequence[Pass]) -> None:
    for p in passes:
        p.really_close()


def run_items(passes: Sequence[Pass], items: list[Item]) -> None:
    """Every pass over `items` in order, each pass's artifacts handed to the next (seg → depth, normal)."""
    for p in passes:
        if p.name == "metadata":
            continue
        for item, outcome in zip(items, p.run_batch(items)):
            if outcome.status != "ok":
                raise SystemExit(f"{p.name} failed in the benchmark: {outcome}")
            item.inputs.update(outcome.values)


def items_for(sources: Sequence[SourceImage], captions: dict[str, str] | None) -> list[Item]:
    """Decoded items, or caption-only items for t5 (which reads no pixels)."""
    if captions is not None:
        return [Item(s, None, inputs={"caption": captions[s.image_id]}) for s in sources]  # type: ignore[arg-type]
    return [Item(s, decode(s.path)) for s in sources]


def counted_flops(passes: Sequence[Pass], item: Item) -> float:
    """FLOPs of one item through `passes` (matmuls, convolutions, attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run_items(passes, [item])
    return float(counter.get_total_flops())


def engine_rate(passes: Sequence[Pass], options: PassOptions, sources: Sequence[SourceImage], out: Path,
                workers: int) -> float:
    """Items/s of one `Engine` run over `sources` (passes already loaded and warmed up)."""
    config = RunConfig(output_dir=out, passes=tuple(p.name for p in passes), options=options, workers=workers,
                       progress_every=1e9)
    engine = Engine(config, passes, preloaded=True)
    synchronize(options.device)
    start = time.perf_counter()
    summary = engine.run(list(sources), progress=Progress(len(sources), every=1e9))
    synchronize(options.device)
    seconds = time.perf_counter() - start
    for p in passes:
        stats = summary.passes[p.name]
        if p.name != "metadata" and stats.done != len(sources):
            raise SystemExit(f"{p.name}: {stats.done} of {len(sources)} done in the benchmark: {summary.to_dict()}")
    return len(sources) / seconds


def naive_rate(passes: Sequence[Pass], sources: Sequence[SourceImage], out: Path,
               captions: dict[str, str] | None, warm: bool) -> float:
    """Items/s of the batch-1 loop: decode, every pass on that one item, np.save of each artifact."""
    out.mkdir(parents=True, exist_ok=True)

    def one(source: SourceImage) -> None:
        [item] = items_for([source], captions)
        run_items(passes, [item])
        for name, value in item.inputs.items():
            if isinstance(value, np.ndarray):
                np.save(out / f"{source.image_id}.{name}.npy", value)

    if warm:
        one(sources[0])
    synchronize(passes[0].options.device)
    start = time.perf_counter()
    for source in sources:
        one(source)
    synchronize(passes[0].options.device)
    return len(sources) / (time.perf_counter() - start)


# ---------------------------------------------------------------------- memory per item
def assumed_bytes(p: Pass) -> int | None:
    """The activation memory per item the pass's batch choice assumes (None: it does not choose)."""
    precision = p.options.resolved_precision
    if p.name == "dinov3":
        from stratum_core.buckets import BUCKETS
        from stratum_core.passes.dinov3 import activation_bytes

        config = p._model.config
        tokens = 1 + config.num_register_tokens + max(r * c for r, c in (b.patch_grid for b in BUCKETS))
        return activation_bytes(tokens, config.hidden_size, config.intermediate_size, bytes_per_element(precision))
    if p.name == "t5":
        from stratum_core.passes.t5 import activation_bytes

        config = p._model.config
        return activation_bytes(config.d_model, config.d_ff, config.num_heads, bytes_per_element(p._precision))
    if p.name in ("seg", "depth", "normal"):
        from stratum_core.passes.sapiens import bytes_per_item

        return bytes_per_item(precision)
    return None


def weight_bytes(p: Pass) -> int:
    model = getattr(p, "_model", None)
    if model is None or not hasattr(model, "parameters"):
        return 0
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def batch_on_card(p: Pass, card: int, others: int) -> int | None:
    """The batch `auto_batch_size` picks for `p` on a card of `card` bytes holding `others` bytes of weights."""
    per_item = assumed_bytes(p)
    if per_item is None:
        return None
    cap = {"t5": 256, "seg": 32, "depth": 32, "normal": 32}.get(p.name, 64)
    return max(1, min(cap, int((card - others) * AUTO_HEADROOM) // per_item))


# ---------------------------------------------------------------------- one group
@dataclass(frozen=True)
class Group:
    name: str
    passes: tuple[str, ...]
    unit: str
    build: Callable[[Path], Any]
    model_paths: Callable[[Path], dict[str, Path]]


def measure(group: Group, device: str, plan: Plan, work: Path, images: list[SourceImage],
            caption_work: tuple[list[SourceImage], Path, list[str]] | None, peak: float) -> Row:
    """Build, then ours (engine), the FLOP count, naive, and memory, for one group of passes."""
    root = work / group.name
    root.mkdir(parents=True)
    built = group.build(root / "models")
    options = PassOptions(device=device, model_paths=group.model_paths(root / "models"), offline=True,
                          model_dir=root / "models", batch_size=1 if plan.smoke else None, precision=plan.precision)
    configs = {"pose": _pose_config(plan)} if "pose" in group.passes else None
    captions = None
    if caption_work is not None:
        sources, caption_out, texts = caption_work
        captions = {s.image_id: t for s, t in zip(sources, texts)}
        naive_sources = sources[:plan.naive_captions]
        n_ours = plan.captions
    else:
        sapiens = group.name == "sapiens"
        sources = images[:plan.sapiens_images if sapiens else plan.images]
        naive_sources = images[:plan.sapiens_naive if sapiens else plan.naive_images]
        n_ours = len(sources)
    ours = loaded_passes(("metadata", *group.passes), options, configs)
    models = [p for p in ours if p.name != "metadata"]
    weights = reset_memory(device)
    # One item (counted when the builder did not count its FLOPs), then a warm-up at the chosen batch size.
    if isinstance(built, float):
        flops = built
        run_items(ours, items_for(sources[:1], captions))
    else:
        flops = counted_flops(ours, items_for(sources[:1], captions)[0])
    if models[0].max_batch > 1:
        run_items(ours, items_for(sources[:models[0].max_batch], captions))
    reset_memory(device)
    ours_rates = ours_runs(ours, options, sources[:n_ours], caption_out if caption_work is not None else None,
                           root, plan)
    peak_bytes = peak_memory(device)
    row = Row(group.name, group.unit, {p.name: p.provenance().get("precision", "?") for p in models},
              {p.name: p.max_batch for p in models}, n_ours, ours_rates.max, 0.0, flops,
              peak / flops if flops else 0.0, ours_median_per_s=ours_rates.median)
    if not flops:
        row.note = "FLOPs not counted (smoke checkpoints): no bound"
    assumed = [b for b in (assumed_bytes(p) for p in models) if b is not None]
    if peak_bytes is not None and weights is not None:
        row.peak_gib = peak_bytes / 2**30
        row.used_mib_per_item = (peak_bytes - weights) / max(p.max_batch for p in models) / 2**20
    if assumed:
        row.assumed_mib_per_item = max(assumed) / 2**20
        others = sum(weight_bytes(p) for p in models)
        row.batch_on_80gb = {p.name: b for p in models if (b := batch_on_card(p, CARD_80GB, others)) is not None}
    if "pose" in group.passes:
        row.note = (f"backend {models[0].provenance().get('backend')}; naive = the reference DWPose flow on "
                    "onnxruntime's CPU provider over decoded crops (no decode or writes in its time)")
    close(ours)
    reset_memory(device)
    naive_rates = naive_side(group, options, plan, naive_sources, root, captions)
    row.naive_per_s, row.naive_median_per_s = naive_rates.max, naive_rates.median
    shutil.rmtree(root, ignore_errors=True)  # the Sapiens checkpoints alone are ~14 GB
    return row


def ours_runs(passes: Sequence[Pass], options: PassOptions, sources: Sequence[SourceImage],
              caption_out: Path | None, root: Path, plan: Plan) -> Samples:
    """Items/s of each of `plan.repeat` engine runs, each writing a fresh output tree (an engine run skips
    what is already there); for t5 each run starts from a copy of the caption tree."""
    pristine = None
    if caption_out is not None and plan.repeat > 1:
        pristine = root / "captions-before"
        shutil.copytree(caption_out, pristine)
    rates = Samples()
    for r in range(plan.repeat):
        out = (caption_out or root / "out") if r == 0 else root / f"out{r}"
        if pristine is not None and r > 0:
            shutil.copytree(pristine, out)
        rates.add(engine_rate(passes, options, sources, out, plan.workers))
        if r > 0:
            shutil.rmtree(out, ignore_errors=True)
    return rates


def _pose_config(plan: Plan) -> Any:
    from stratum_core.passes.dwpose import PoseConfig

    return PoseConfig("torch" if plan.smoke else "auto")  # the smoke run exercises the torch backend


def naive_side(group: Group, options: PassOptions, plan: Plan, sources: Sequence[SourceImage], root: Path,
               captions: dict[str, str] | None) -> Samples:
    """Items/s of each of `plan.repeat` naive runs."""
    if "pose" in group.passes:
        import pose  # bench/pose.py

        crops = [decode(s.path).crop for s in sources]
        return pose.bench_naive(root / "models", crops, repeat=plan.repeat)
    naive_options = replace(options, precision="fp32", batch_size=1)
    passes = loaded_passes(group.passes, naive_options)
    try:
        return Samples([naive_rate(passes, sources, root / "naive", captions, warm=not plan.smoke and r == 0)
                        for r in range(plan.repeat)])
    finally:
        close(passes)
        reset_memory(options.device)


def groups(smoke: bool, device: str) -> dict[str, Group]:
    """The measured pass groups, by name; `smoke` picks the builders' tiny shapes."""
    return {
        "dinov3": Group("dinov3", ("dinov3",), "images/s", lambda m: build_dinov3(m / "dinov3", smoke),
                        lambda m: {"dinov3": m / "dinov3"}),
        "t5": Group("t5", ("t5",), "captions/s", lambda m: build_t5(m / "t5", smoke), lambda m: {"t5": m / "t5"}),
        "pose": Group("pose", ("pose",), "images/s", lambda m: build_pose(m, smoke), lambda m: {"pose": m}),
        # The Sapiens checkpoints sit under model_dir/<hub id>/<file>, as `stratum models download` lays them out.
        "sapiens": Group("sapiens", ("seg", "depth", "normal"), "images/s",
                         lambda m: build_sapiens(m, smoke, device), lambda m: {}),
    }


# ---------------------------------------------------------------------- host side
def host_rates(sources: Sequence[SourceImage], workers: int, work: Path, rounds: int,
               writes: int) -> dict[str, float]:
    """Decode (images/s, `rounds` × the sources) and artifact writes (images/s and MB/s, every array
    artifact of a 1024² image, `writes` images) measured at the same time, each on `workers` threads."""
    arrays = {a.name: np.zeros(a.shape(BUCKET), dtype=a.dtype) for p in ("dinov3", "t5", "pose", "seg", "depth",
                                                                         "normal") for a in artifacts_of(p)}
    image_bytes = sum(a.nbytes for a in arrays.values())
    store = Store(work / "host-writes")
    jobs = [s for _ in range(rounds) for s in sources]

    def write(i: int) -> None:
        for name, value in arrays.items():
            store.write(f"w{i:06d}", BY_NAME[name], value)

    timings: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        fn()
        timings[label] = time.perf_counter() - start

    with ThreadPoolExecutor(workers) as decoders, ThreadPoolExecutor(workers) as writers, \
            ThreadPoolExecutor(2) as both:
        a = both.submit(timed, "decode", lambda: list(decoders.map(lambda s: decode(s.path), jobs)))
        b = both.submit(timed, "write", lambda: list(writers.map(write, range(writes))))
        a.result(), b.result()
    shutil.rmtree(work / "host-writes", ignore_errors=True)
    return {"decode_images_per_s": len(jobs) / timings["decode"], "write_images_per_s": writes / timings["write"],
            "write_mb_per_s": writes * image_bytes / timings["write"] / 1e6, "workers": workers,
            "bytes_per_image": image_bytes}


# ---------------------------------------------------------------------- report
def markdown(info: dict[str, Any], rows: list[Row], host: dict[str, float] | None, elapsed: float) -> str:
    lines = [f"# bench/gpu.py on {info['device']}", "",
             f"Peak for the bound: {_rate(info['peak_flops'])} ({info['peak_source']}; measured matmul "
             f"{_rate(info['measured_matmul_flops'])}). Total {elapsed:.0f} s.", "",
             table(("pass", "ours", "naive b1 fp32", "× naive", "FLOP bound", "% of bound", "GFLOP/item",
                    "precision", "batch", "peak GiB", "MiB/item assumed / used", "batch on 80 GB"),
                   [_cells(r) for r in rows], markdown=True)]
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    if host:
        notes.append(f"- host, at the same time on {host['workers']} threads: decode {host['decode_images_per_s']:.0f} "
                     f"images/s, writes {host['write_images_per_s']:.0f} images/s ({host['write_mb_per_s']:.0f} MB/s, "
                     f"{host['bytes_per_image'] / 2**20:.1f} MiB of artifacts per image)")
    return "\n".join(lines + [""] + notes) + "\n"


def _cells(r: Row) -> tuple[str, ...]:
    assumed = f"{r.assumed_mib_per_item:.0f}" if r.assumed_mib_per_item else "-"
    used = f"{r.used_mib_per_item:.0f}" if r.used_mib_per_item is not None else "-"
    peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
    bound, share = (f"{r.bound_per_s:.1f}", f"{100 * r.of_bound:.0f}%") if r.bound_per_s else ("-", "-")
    return (r.name, f"{r.ours_per_s:.2f} {r.unit}{_median(r.ours_median_per_s, r.ours_per_s)}",
            f"{r.naive_per_s:.2f}{_median(r.naive_median_per_s, r.naive_per_s)}", f"{r.speedup:.1f}", bound, share,
            f"{r.flops_per_item / 1e9:.1f}", _join(r.precision), _join(r.batch), peak, f"{assumed} / {used}",
            _join(r.batch_on_80gb) or "-")


def _median(median: float | None, best: float) -> str:
    """' (median 1.23)' where the runs differed (--repeat > 1), else nothing."""
    return f" (median {median:.2f})" if median is not None and median != best else ""


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def _join(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) if len(values) > 1 else \
        ", ".join(str(v) for v in values.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-gpu"),
                        help="folder for gpu.json and gpu.md (default $OUT, else ./bench-gpu)")
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU with tiny shapes (< 1 min)")
    parser.add_argument("--device", default=None, help="cuda:N (default cuda:0; cpu with --smoke)")
    parser.add_argument("--passes", default="dinov3,t5,pose,sapiens", help="groups to measure, in this order")
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default 16, 2 with --smoke)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one; "
                        "needs ~20 GB free for the full run)")
    parser.add_argument("--precision", default="auto", help="ours, as `stratum process --precision` (default auto)")
    add_repeat(parser, 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars for every model would bury the table
    plan = SMOKE if args.smoke else FULL
    plan = replace(plan, workers=args.workers or plan.workers, precision=args.precision, repeat=args.repeat)
    device = args.device or ("cpu" if args.smoke else "cuda:0")
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --smoke (CPU, tiny shapes) or on a GPU host")
    if plan.smoke:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    wanted = [g.strip() for g in args.passes.split(",") if g.strip()]
    available = groups(plan.smoke, device)
    unknown = set(wanted) - set(available)
    if unknown:
        raise SystemExit(f"unknown pass group(s) {sorted(unknown)}; choose from {', '.join(available)}")
    started = time.perf_counter()
    info = device_info(device, plan.smoke)
    rows: list[Row] = []
    with workspace("gpu", parent=args.work) as work:
        images = make_images(work / "images", max(plan.images, plan.sapiens_images))
        host = host_rates(images, plan.workers, work, rounds=1 if plan.smoke else 2, writes=2 if plan.smoke else 128)
        for name in wanted:
            caption_work = make_captions(work / "captions", plan.captions, plan.workers) if name == "t5" else None
            rows.append(measure(available[name], device, plan, work, images, caption_work, info["peak_flops"]))
            log.warning("%s done after %.0f s", name, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    report = markdown(info, rows, host, elapsed)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"info": info, "plan": asdict(plan), "elapsed_s": elapsed, "host": host,
              "rows": [{**asdict(r), "speedup": r.speedup, "of_bound": r.of_bound} for r in rows]}
    (args.out / "gpu.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "gpu.md").write_text(report)
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
