"""Benchmark: the dinov3 and t5 passes through the engine vs a naive batch-1 fp32 loop.

Naive = what a first script does: for each image, decode and crop, normalise in numpy,
one fp32 forward of batch 1, copy back, np.save; for each caption, tokenize, one fp32
encoder forward, np.save. Ours = `Engine` with the passes (decode in worker threads,
same-bucket batches, bf16 on CUDA, background writer). Both load their model before the
clock starts and warm up on one batch, so the ratios are steady-state throughput.

    python bench/dinov3_t5.py [--repeat 1]        # small models (1024 wide, 2 layers), CPU, ~2 min
    python bench/dinov3_t5.py --full-size --device cuda --images 256 --captions 2048
        # DINOv3 ViT-L/16 and the T5-large encoder, real architectures with random weights

Printed: images/s (DINOv3, 1024x1024 crops) and captions/s (T5), naive vs ours, the ratio,
and the largest difference between the two outputs (they must compute the same thing).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from _common import CAPTION_WORDS, Samples, add_repeat, workspace
from stratum_core.artifacts import BY_NAME
from stratum_core.discover import SourceImage
from stratum_core.engine import Engine, RunConfig
from stratum_core.intake import decode
from stratum_core.passes import build_passes
from stratum_core.passes.base import Item, PassOptions
from stratum_core.passes.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from stratum_core.passes.torch_utils import synchronize
from stratum_core.store import Store
from stratum_testing.transformers_models import DINOV3_LAYERSCALE, T5_LARGE_VOCAB, build_dinov3, build_t5


def build_models(root: Path, full_size: bool) -> tuple[Path, Path]:
    """DINOv3 ViT-L/16 and T5-large encoder (random weights) or small 2-layer versions of both."""
    layers, ffn = (24, 4096) if full_size else (2, 1024)
    dinov3 = build_dinov3(root / "dinov3", layers=layers, intermediate_size=ffn, layerscale_value=DINOV3_LAYERSCALE)
    t5 = build_t5(root / "t5", layers=layers, d_ff=ffn, vocab_size=T5_LARGE_VOCAB if full_size else None)
    return dinov3, t5


def make_inputs(root: Path, images: int, captions: int) -> tuple[Path, Path]:
    """Photo-sized JPEGs (1536x1536 → the 1024x1024 bucket) and an output tree holding captions."""
    rng = np.random.default_rng(0)
    image_dir = root / "images"
    image_dir.mkdir()
    for i in range(images):
        small = rng.integers(30, 225, (8, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(small).resize((1536, 1536), Image.Resampling.BICUBIC))
        Image.fromarray(field).save(image_dir / f"{i:05d}.jpg", quality=90)
    caption_dir = root / "captions"
    (caption_dir / "in").mkdir(parents=True)
    store = Store(caption_dir / "out")
    for i in range(captions):
        Image.new("RGB", (8, 8)).save(caption_dir / "in" / f"{i:05d}.png")
        words = rng.choice(CAPTION_WORDS, size=int(rng.integers(60, 120)))
        store.write(f"{i:05d}", BY_NAME["caption"], " ".join(words) + ".")
    return image_dir, caption_dir


def sources(folder: Path) -> list[SourceImage]:
    return [SourceImage(p.name, p) for p in sorted(folder.iterdir())]


def timed_loops(one: Callable[[int], None], n: int, device: str, repeat: int) -> Samples:
    """Seconds of each of `repeat` loops of `one(i)` over range(n), after one warm-up call."""
    one(0)  # warm-up
    seconds = Samples()
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        for i in range(n):
            one(i)
        synchronize(device)
        seconds.add(time.perf_counter() - start)
    return seconds


def naive_dinov3(folder: Path, device: str, images: list[SourceImage], out: Path, repeat: int) -> Samples:
    """Seconds for the batch-1 fp32 loop, decoding in the loop."""
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)

    def one(source: SourceImage) -> None:
        crop = decode(source.path).crop
        pixels = ((crop.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None].copy()
        with torch.no_grad():
            result = model(pixel_values=torch.from_numpy(pixels).to(device))
        np.save(out / f"{source.image_id}_cls.npy", result.pooler_output[0].half().cpu().numpy())
        np.save(out / f"{source.image_id}_patches.npy", result.last_hidden_state[0, 5:].half().cpu().numpy())

    return timed_loops(lambda i: one(images[i]), len(images), device, repeat)


def naive_t5(folder: Path, device: str, captions: list[str], out: Path, repeat: int) -> Samples:
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = T5EncoderModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()

    def one(i: int, text: str) -> None:
        encoded = tokenizer(text, max_length=512, padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**{k: v.to(device) for k, v in encoded.items()}).last_hidden_state
        np.save(out / f"{i:05d}_hidden.npy", hidden[0].half().cpu().numpy())
        np.save(out / f"{i:05d}_mask.npy", encoded["attention_mask"][0].numpy().astype(np.uint8))

    return timed_loops(lambda i: one(i, captions[i]), len(captions), device, repeat)


def ours(name: str, options: PassOptions, images: list[SourceImage], outs: list[Path], batch: int,
         workers: int) -> Samples:
    """Seconds of the engine runs of `name`, one into each of `outs` (an engine run skips what is already
    written), the model loaded and warmed up before the clock starts."""
    passes = build_passes(("metadata", name), options)
    closers = [p.close for p in passes]
    for p in passes:
        p.load()
        p.close = lambda: None  # the engine closes its passes after each run: these stay open for the next
    warm = passes[1]
    warm_item = Item(images[0], decode(images[0].path))
    warm_item.inputs.update({"caption": "a warm-up caption."})
    warm.run_batch([warm_item] * min(batch, warm.max_batch))
    seconds = Samples()
    for out in outs:
        config = RunConfig(output_dir=out, passes=("metadata", name), options=options, workers=workers,
                           progress_every=1e9)
        engine = Engine(config, passes, preloaded=True)  # loaded above: keep load time off the clock
        synchronize(options.device)
        start = time.perf_counter()
        summary = engine.run(images)
        synchronize(options.device)
        seconds.add(time.perf_counter() - start)
        assert summary.passes[name].done == len(images), summary.to_dict()
    for close in closers:
        close()
    return seconds


def max_difference(naive_dir: Path, naive_suffix: str, ours_dir: Path, artifact: str, ids: list[str]) -> float:
    store = Store(ours_dir)
    return max(float(np.abs(np.load(naive_dir / f"{i}_{naive_suffix}.npy").astype(np.float32)
                            - store.read(i, BY_NAME[artifact]).astype(np.float32)).max()) for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="real ViT-L/16 and T5-large architectures")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", help="ours: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    parser.add_argument("--images", type=int, default=None, help="default 4 (CPU) or 256 (CUDA)")
    parser.add_argument("--captions", type=int, default=None, help="default 16 (CPU) or 2048 (CUDA)")
    parser.add_argument("--dinov3-batch", type=int, default=None, help="default 2 (CPU) or 32 (CUDA)")
    parser.add_argument("--t5-batch", type=int, default=None, help="default 8 (CPU) or 256 (CUDA)")
    parser.add_argument("--workers", type=int, default=4)
    add_repeat(parser, 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuda = args.device.startswith("cuda")
    device = "cuda:0" if args.device == "cuda" else args.device
    n_images = args.images or (256 if cuda else 4)
    n_captions = args.captions or (2048 if cuda else 16)
    dino_batch = args.dinov3_batch or (32 if cuda else 2)
    t5_batch = args.t5_batch or (256 if cuda else 8)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # the naive fp32 loop gets TF32 too: a fair baseline

    with workspace("dinov3-t5") as root:
        dino_folder, t5_folder = build_models(root, args.full_size)
        image_dir, caption_dir = make_inputs(root, n_images, n_captions)
        images, captions = sources(image_dir), sources(caption_dir / "in")
        store = Store(caption_dir / "out")
        texts = [store.read(s.image_id, BY_NAME["caption"]) for s in captions]
        label = "full-size" if args.full_size else "small (2 layers)"
        name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}; models: {label}; {n_images} images (1024x1024), {n_captions} captions")

        (root / "naive").mkdir()
        naive_s = naive_dinov3(dino_folder, device, images, root / "naive", args.repeat)
        options = PassOptions(device=device, precision=args.precision, batch_size=dino_batch,
                              model_paths={"dinov3": dino_folder, "t5": t5_folder})
        outs = [root / ("ours" if r == 0 else f"ours{r}") for r in range(args.repeat)]
        ours_s = ours("dinov3", options, images, outs, dino_batch, args.workers)
        diff = max_difference(root / "naive", "patches", root / "ours", "dinov3_patches",
                              [s.image_id for s in images])
        report("dinov3", "images", n_images, naive_s, ours_s, diff, options, dino_batch)

        naive_s = naive_t5(t5_folder, device, texts, root / "naive", args.repeat)
        Engine(RunConfig(output_dir=caption_dir / "out", passes=("metadata",), workers=args.workers)).run(captions)
        outs = [caption_dir / ("out" if r == 0 else f"out{r}") for r in range(args.repeat)]
        for out in outs[1:]:
            shutil.copytree(caption_dir / "out", out)  # each run starts from the captions alone
        options = PassOptions(device=device, precision=args.precision, batch_size=t5_batch,
                              model_paths={"t5": t5_folder})
        ours_s = ours("t5", options, captions, outs, t5_batch, args.workers)
        diff = max_difference(root / "naive", "hidden", caption_dir / "out", "t5_hidden",
                              [s.image_id for s in captions])
        report("t5", "captions", n_captions, naive_s, ours_s, diff, options, t5_batch)


def report(name: str, unit: str, n: int, naive_s: Samples, ours_s: Samples, diff: float, options: PassOptions,
           batch: int) -> None:
    """Best rates and their ratio; with --repeat > 1 the medians' ratio too."""
    medians = f" (medians ×{naive_s.median / ours_s.median:.2f})" if len(naive_s.values) > 1 else ""
    print(f"{name}: naive (batch 1, fp32) {n / naive_s.min:8.2f} {unit}/s | ours (batch {batch}, "
          f"{options.resolved_precision}) {n / ours_s.min:8.2f} {unit}/s | ×{naive_s.min / ours_s.min:.2f}{medians} | "
          f"max |ours − naive| {diff:.3g}")


if __name__ == "__main__":
    main()
