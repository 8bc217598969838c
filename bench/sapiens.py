"""Benchmark: seg + depth + normal the naive way vs the stratum engine, on Sapiens-shaped TorchScript models.

Naive = the reference way: one model at a time (three runs), batch 1, fp32, depth and normal
re-reading seg.npy from disk, every crop preprocessed once per model. Ours = one engine run:
batched (auto batch size on CUDA), shared preprocessing, seg mask from memory, bf16 on CUDA
(`--precision auto`). Both use the same checkpoints, images and decode workers; model loading
and the first (TorchScript profiling) calls are kept out of the timings.

The models are ViTs with random weights saved with torch.jit.save under the real file names.
`--full-size` builds the real Sapiens-1B shape (width 1536, 40 layers, 24 heads, patch 16,
3072 tokens at 1024×768, the real decoder heads: ~3 × 4 GB of fp32 files; meant for a GPU).
The default is a reduced config (width 192, 2 layers, slim heads with the real upsampling)
that runs in a few minutes on a 2-core CPU.

    python bench/sapiens.py [--images 8] [--device auto|cpu|cuda] [--full-size] [--repeat 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from _common import add_repeat, rounds, workspace
from stratum_core.discover import discover
from stratum_core.engine import Engine, RunConfig
from stratum_core.passes import build_passes, parse_passes
from stratum_core.passes.base import PassOptions
from stratum_core.passes.sapiens import DEPTH_MODEL, NORMAL_MODEL, SEG_MODEL
from stratum_core.passes.torch_utils import synchronize
from stratum_core.progress import Progress


@dataclass(frozen=True)
class Shape:
    """A Sapiens-like architecture: ViT backbone + a deconvolution head per task."""

    width: int
    layers: int
    heads: int
    seg_head: int  # channels of the seg and normal heads (768 in Sapiens-1B)
    depth_head: int  # channels of the depth head (384 in Sapiens-1B)


FULL = Shape(width=1536, layers=40, heads=24, seg_head=768, depth_head=384)
REDUCED = Shape(width=192, layers=2, heads=3, seg_head=32, depth_head=16)

# (spec, output channels, head channels attribute, deconvolutions, 1×1 convolutions) per pass, as the
# Sapiens-1B configs: seg/normal upsample 8× (512×384 out), depth 16× (1024×768 out).
TASKS = {
    "seg": (SEG_MODEL, 28, "seg_head", 3, 3),
    "depth": (DEPTH_MODEL, 1, "depth_head", 4, 2),
    "normal": (NORMAL_MODEL, 3, "seg_head", 3, 3),
}
BUCKET_SIZES = ((1024, 1024), (832, 1216), (1216, 832))  # (width, height): the crops of the images


class Block(torch.nn.Module):
    """Pre-norm transformer block: self-attention (SDPA) and a 4× MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.fc1 = torch.nn.Linear(width, 4 * width)
        self.fc2 = torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(attended.transpose(1, 2).reshape(n, t, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SapiensLike(torch.nn.Module):
    """(N, 3, 1024, 768) → (N, classes, 64·2^deconvs, 48·2^deconvs)."""

    def __init__(self, shape: Shape, classes: int, head: int, deconvs: int, convs: int):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, shape.width, 16, 16)
        self.pos = torch.nn.Parameter(torch.randn(1, 64 * 48, shape.width) * 0.02)
        self.blocks = torch.nn.Sequential(*[Block(shape.width, shape.heads) for _ in range(shape.layers)])
        self.norm = torch.nn.LayerNorm(shape.width)
        layers: list[torch.nn.Module] = []
        channels = shape.width
        for _ in range(deconvs):
            layers += [torch.nn.ConvTranspose2d(channels, head, 4, 2, 1, bias=False),
                       torch.nn.BatchNorm2d(head), torch.nn.SiLU()]
            channels = head
        for _ in range(convs):
            layers += [torch.nn.Conv2d(head, head, 1), torch.nn.BatchNorm2d(head), torch.nn.SiLU()]
        layers.append(torch.nn.Conv2d(head, classes, 1))
        self.head = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, rows, cols = x.shape[0], x.shape[2] // 16, x.shape[3] // 16
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens.transpose(1, 2).reshape(n, -1, rows, cols))


def build_models(model_dir: Path, shape: Shape, device: str) -> None:
    """Script and save the three models under $STRATUM_MODEL_DIR/<hub id>/<real file name>."""
    for name, (spec, classes, head_attr, deconvs, convs) in TASKS.items():
        torch.manual_seed(len(name))
        with torch.device(device):
            module = SapiensLike(shape, classes, getattr(shape, head_attr), deconvs, convs).eval()
        path = model_dir / spec.hub_id / spec.files[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(module), str(path))
        logging.info("built %s (%.0f M parameters)", path.name, sum(p.numel() for p in module.parameters()) / 1e6)
        del module


def make_images(folder: Path, n: int) -> None:
    """`n` smooth colour images at the bucket sizes (JPEG), so every crop is a real bucket."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = BUCKET_SIZES[i % len(BUCKET_SIZES)]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([np.sin(x / (w / 3) + phase[0]), np.cos(y / (h / 4) + phase[1]),
                         np.sin((x + y) / (w / 5) + phase[2])], axis=-1)
        Image.fromarray((127 + 120 * base).clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)


def preloaded(names: str, options: PassOptions) -> list:
    """Passes with weights loaded once, reused across engine runs (keeps loading out of the timings)."""
    passes = build_passes(parse_passes(names), options)
    for p in passes:
        p.load()
        p.load = lambda: None  # the engine calls load() per run
        p.close = lambda: None  # ... and close() at its end
    return passes


def timed_run(input_dir: Path, output_dir: Path, passes: list, options: PassOptions) -> float:
    """Seconds of one engine run; `options.batch_size` None lets RunConfig choose the group size (8 on CPU,
    32 on CUDA), as `stratum process`."""
    config = RunConfig(output_dir=output_dir, passes=tuple(p.name for p in passes), options=options,
                       workers=2, progress_every=1e9)
    images = discover(input_dir, None, None).images
    start = time.perf_counter()
    summary = Engine(config, passes).run(images, progress=Progress(len(images), every=1e9))
    synchronize(options.device)
    elapsed = time.perf_counter() - start
    failed = {name: dict(stats.failed) for name, stats in summary.passes.items() if stats.failed}
    if failed:
        raise SystemExit(f"failures in the benchmark run: {failed}")
    return elapsed


def naive_passes(model_dir: Path, device: str) -> tuple[PassOptions, dict[str, list]]:
    """The reference way: one model per run, batch 1, fp32."""
    options = PassOptions(device=device, precision="fp32", batch_size=1, model_dir=model_dir)
    return options, {name: preloaded(name, options) for name in ("seg", "depth", "normal")}


def naive(input_dir: Path, output_dir: Path, setup: tuple[PassOptions, dict[str, list]]) -> float:
    """Three runs, one model each; depth and normal read seg.npy back from disk."""
    options, passes = setup
    return sum(timed_run(input_dir, output_dir, passes[name], options) for name in passes)


def ours_passes(model_dir: Path, device: str, batch: int | None) -> tuple[PassOptions, list]:
    """One engine run of seg,depth,normal: batched, shared preprocessing, bf16 on CUDA (precision auto)."""
    options = PassOptions(device=device, precision="auto", batch_size=batch, model_dir=model_dir)
    return options, preloaded("seg,depth,normal", options)


def ours(input_dir: Path, output_dir: Path, setup: tuple[PassOptions, list]) -> float:
    options, passes = setup
    return timed_run(input_dir, output_dir, passes, options)


def agreement(work: Path) -> float:
    """Share of seg pixels equal between the two runs (fp32 vs fp32 on the CPU, fp32 vs bf16 on CUDA)."""
    same = total = 0
    for path in (work / "naive0").rglob("seg.npy"):
        a, b = np.load(path), np.load(work / "ours0" / path.relative_to(work / "naive0"))
        same, total = same + int((a == b).sum()), total + a.size
    return same / max(1, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="timed images (default 8)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="our model batch (default: auto)")
    parser.add_argument("--full-size", action="store_true", help="the real Sapiens-1B shape (GPU)")
    add_repeat(parser, 2)
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("stratum").setLevel(logging.WARNING)
    device = ("cuda:0" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = "cuda:0" if device == "cuda" else device
    shape = FULL if args.full_size else REDUCED
    with workspace("sapiens", args.keep) as work:
        build_models(work / "models", shape, device)
        make_images(work / "in", args.images)
        make_images(work / "warm", 6)
        naive_setup = naive_passes(work / "models", device)
        ours_setup = ours_passes(work / "models", device, args.batch_size)
        naive(work / "warm", work / "naive-warm", naive_setup)  # TorchScript profiles its first calls
        ours(work / "warm", work / "ours-warm", ours_setup)
        times = rounds({"naive": lambda r: naive(work / "in", work / f"naive{r}", naive_setup),
                        "ours": lambda r: ours(work / "in", work / f"ours{r}", ours_setup)},
                       args.repeat)
        naive_s, ours_s = times["naive"].min, times["ours"].min
        n = args.images
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
        sys.stdout.write(
            f"sapiens bench: {'full Sapiens-1B shape' if args.full_size else 'reduced shape'} {shape}, "
            f"{n} images, best of {args.repeat} rounds, device {name}\n"
            f"  naive (3 runs, batch 1, fp32, seg from disk): {times['naive'].seconds()}  {n / naive_s:7.2f} img/s\n"
            f"  ours  (1 run, batched, shared input, auto precision): {times['ours'].seconds()}  "
            f"{n / ours_s:7.2f} img/s\n"
            f"  speed-up: {naive_s / ours_s:.2f}x (medians {times['naive'].median / times['ours'].median:.2f}x)   "
            f"seg agreement naive vs ours: {agreement(work):.4f}\n")


if __name__ == "__main__":
    main()
