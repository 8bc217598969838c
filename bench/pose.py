"""Benchmark: the pose pass (batched, engine, device provider) vs the reference DWPose loop.

Both sides run the same two ONNX files with the real input/output shapes of `yolox_l.onnx`
((N, 3, 640, 640) → (N, 8400, 85)) and `dw-ll_ucoco_384.onnx` ((N, 3, 384, 288) →
simcc_x (N, 133, 576), simcc_y (N, 133, 768)). Their compute is a representative stand-in,
not the real networks: a stride-2 3×3 conv stack (stages at strides 2..32, ReLU) with a 1×1
YOLOX-style head per stride 8/16/32; the pose model is a stride-32 conv stack, a 1×1 conv to
133 channels and two SimCC linear heads (flattened 12·9 features → 576 / 768 bins), as in
RTMPose's SimCC head. The detector's head is scaled by 1e-6 and offset by a fixed row so every
image holds exactly one person (so both sides do one detector and one pose call per image).

- naive: the reference implementation's default flow: CPU provider, one image at a time,
  letterbox, batch-1 detector call, class-aware NMS over all 80 classes, one pose call per
  person with float64 normalisation.
- ours: `DWPosePass.run_batch` on in-memory items (batches of --batch-size), and the whole
  engine (`stratum process --passes pose`) from PNG files to written pose.npy, on --device.
  naive and pass figures are the best (and the median) of --repeat rounds; the engine figure is one run
  (it includes PNG decode and writing, which naive does not). All three are warmed up: the
  engine gets passes loaded and run once on in-memory copies of the images before the clock
  starts, so session creation, cuDNN algorithm choice and arena growth stay off it.

Default sizes (≈ 1.8 and 0.5 GMAC per image) run in under a minute on a 2-core CPU;
`--full-size` widens the stacks to about the real networks' cost (≈ 82 and 10 GMAC; YOLOX-L
is 155.6 GFLOPs ≈ 78 GMAC at 640², RTMPose/DWPose-L at 384×288 ≈ 9.4 G in mmpose's table).

    python bench/pose.py [--images 16] [--batch-size 16] [--device auto] [--repeat 3] [--full-size] [--fixed-batch]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import Samples, add_repeat, workspace
from stratum_core import pose_geometry as geo
from stratum_core.buckets import Bucket
from stratum_core.devices import claim_device
from stratum_core.discover import SourceImage, discover
from stratum_core.engine import Engine, RunConfig
from stratum_core.intake import Decoded
from stratum_core.passes import build_passes
from stratum_core.passes.base import Item, PassOptions
from stratum_core.passes.dwpose import DETECTOR_FILE, POSE_FILE, DWPosePass
from stratum_core.progress import Progress

BUCKET = Bucket(1024, 1024)
# Channels per stride-2 stage and extra 3×3 convs per stage.
QUICK = {"det": ((16, 32, 64, 128, 256), 1), "pose": ((16, 32, 64, 128, 256), 1)}
FULL = {"det": ((72, 144, 288, 576, 1152), 3), "pose": ((48, 96, 192, 384, 768), 3)}


# ---------------------------------------------------------------------------- models
class GraphBuilder:
    """Tiny helper over onnx.helper: conv/linear layers with random He-scaled weights."""

    def __init__(self, seed: int = 0):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []
        self.rng = np.random.default_rng(seed)
        self.macs = 0
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, hw_out: tuple[int, int], k: int = 3, stride: int = 1,
             relu: bool = True) -> str:
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        y = self.node("Conv", [x, self.const(w, "w"), self.const(np.zeros(cout, np.float32), "b")],
                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        self.macs += hw_out[0] * hw_out[1] * cin * cout * k * k
        return self.node("Relu", [y]) if relu else y

    def stages(self, x: str, size_hw: tuple[int, int], widths: tuple[int, ...], depth: int) -> list[tuple[str, int, tuple]]:
        """Stride-2 stages; returns (tensor, channels, (h, w)) after each stage."""
        feats, cin, (h, w) = [], 3, size_hw
        for cout in widths:
            h, w = h // 2, w // 2
            x = self.conv(x, cin, cout, (h, w), stride=2)
            for _ in range(depth):
                x = self.conv(x, cout, cout, (h, w))
            feats.append((x, cout, (h, w)))
            cin = cout
        return feats

    def save(self, path: Path, inputs, outputs) -> None:
        import onnx

        graph = self.helper.make_graph(self.nodes, "bench", inputs, outputs, self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(path))


def build_detector(path: Path, widths: tuple[int, ...], depth: int, batch: int | str) -> int:
    """YOLOX-shaped detector; returns its MACs per image."""
    from onnx import TensorProto, helper

    g = GraphBuilder(seed=1)
    feats = g.stages("images", (640, 640), widths, depth)[2:]  # strides 8, 16, 32
    heads = []
    for x, c, (h, w) in feats:
        y = g.conv(x, c, 85, (h, w), k=1, relu=False)
        heads.append(g.node("Transpose", [g.node("Reshape", [y, g.const(np.array([0, 85, -1], np.int64))])],
                            perm=[0, 2, 1]))
    raw = g.node("Concat", heads, axis=1)
    # One fixed person per image (see module docstring): tiny-scaled head + fixed rows.
    rows = np.zeros((1, geo.anchor_count(), 85), np.float32)
    index = 6400 + 1600 + 8 * 20 + 9  # stride 32, cell (9, 8)
    rows[0, index, :6] = (0.5, 0.5, np.log(6.0), np.log(12.0), 0.9, 1.0)
    g.nodes.append(helper.make_node("Add", [g.node("Mul", [raw, g.const(np.float32(1e-6))]), g.const(rows)],
                                    ["output"]))
    g.save(path, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 640, 640])],
           [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 8400, 85])])
    return g.macs


def build_pose(path: Path, widths: tuple[int, ...], depth: int, batch: int | str) -> int:
    """DWPose-shaped model (SimCC outputs); returns its MACs per image."""
    from onnx import TensorProto, helper

    g = GraphBuilder(seed=2)
    x, c, (h, w) = g.stages("input", (384, 288), widths, depth)[-1]  # (N, C, 12, 9)
    y = g.conv(x, c, 133, (h, w), k=1, relu=False)
    flat = g.node("Reshape", [y, g.const(np.array([0, 133, h * w], np.int64))])
    hidden = g.node("Relu", [g.node("MatMul", [flat, g.const(g.rng.standard_normal((h * w, 256)).astype(np.float32) * 0.1)])])
    g.macs += 133 * (h * w * 256 + 256 * (576 + 768))
    for name, bins in (("simcc_x", 576), ("simcc_y", 768)):
        weight = g.const(g.rng.standard_normal((256, bins)).astype(np.float32) * 0.06)
        g.nodes.append(helper.make_node("MatMul", [hidden, weight], [name]))
    g.save(path, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])],
           [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, 133, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, 133, 768])])
    return g.macs


# ---------------------------------------------------------------------------- naive (reference flow)
def reference_pose(det, pose, image: np.ndarray) -> np.ndarray:
    """One image the way the reference DWPose ONNX code does it (its default: CPU provider)."""
    import cv2

    letterboxed, ratio = geo.letterbox(image)
    raw = det.run(None, {det.get_inputs()[0].name: letterboxed[None]})[0][0]
    boxes, scores = geo.decode_yolox(raw)
    boxes = boxes / ratio
    people = []
    for cls in range(scores.shape[1]):  # class-aware NMS over every class, as the reference does
        mask = scores[:, cls] > geo.CANDIDATE_SCORE
        if mask.any():
            keep = geo.nms(boxes[mask], scores[mask, cls])
            if cls == geo.PERSON_CLASS:
                people = [b for b, s in zip(boxes[mask][keep], scores[mask, cls][keep]) if s > geo.PERSON_SCORE]
    h, w = pose.get_inputs()[0].shape[2:]
    results = []
    for box in people:  # one session call per person
        center, scale = geo.box_to_center_scale(box, w, h)
        crop = cv2.warpAffine(image, geo.crop_matrix(center, scale, w, h), (w, h), flags=cv2.INTER_LINEAR)
        crop = (crop - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])  # float64
        simcc_x, simcc_y = pose.run(None, {pose.get_inputs()[0].name: [crop.transpose(2, 0, 1)]})
        locs, score = geo.decode_simcc(simcc_x, simcc_y)
        results.append(np.concatenate((geo.crop_to_image(locs[0], center, scale, w, h), score[0][:, None]), 1))
    return np.asarray(results)


def rates(step, n_images: int, repeat: int) -> Samples:
    """Images/s of each of `repeat` timed calls of `step()` (others share this machine: the best counts)."""
    samples = Samples()
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        samples.add(n_images / (time.perf_counter() - start))
    return samples


def bench_naive(folder: Path, images: list[np.ndarray], repeat: int) -> Samples:
    import onnxruntime as ort

    det = ort.InferenceSession(str(folder / DETECTOR_FILE), providers=["CPUExecutionProvider"])
    pose = ort.InferenceSession(str(folder / POSE_FILE), providers=["CPUExecutionProvider"])
    reference_pose(det, pose, images[0])  # warm-up
    return rates(lambda: [reference_pose(det, pose, image) for image in images], len(images), repeat)


# ---------------------------------------------------------------------------- ours
def memory_items(images: list[np.ndarray]) -> list[Item]:
    """The images as decoded items of the one bucket, as the engine would hand them to the pass."""
    return [Item(SourceImage(f"{i}.png", Path(f"{i}.png")), Decoded(img, BUCKET.width, BUCKET.height, BUCKET))
            for i, img in enumerate(images)]


def bench_pass(folder: Path, images: list[np.ndarray], device: str, batch_size: int, repeat: int) -> Samples:
    p = DWPosePass(PassOptions(device=device, batch_size=batch_size, model_paths={"pose": folder}))
    p.load()
    items = memory_items(images)
    p.run_batch(items[:batch_size])  # warm-up (CUDA kernels, allocations)
    return rates(lambda: [p.run_batch(items[i:i + batch_size]) for i in range(0, len(items), batch_size)],
                 len(items), repeat)


def bench_engine(folder: Path, images: list[np.ndarray], device: str, batch_size: int, work: Path) -> float:
    source = work / "in"
    source.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(source / f"{i:04d}.png", compress_level=1)
    found = discover(source).images
    options = PassOptions(device=device, batch_size=batch_size, model_paths={"pose": folder})
    config = RunConfig(output_dir=work / "out", passes=("metadata", "pose"), options=options,
                       progress_every=1e9)
    passes = build_passes(config.passes, options)
    for p in passes:
        p.load()
    pose = next(p for p in passes if p.name == "pose")
    pose.run_batch(memory_items(images)[:batch_size])  # warm-up on in-memory copies: nothing is written
    engine = Engine(config, passes, preloaded=True)  # loaded above: keep load time off the clock
    start = time.perf_counter()  # onnxruntime returns host arrays: nothing is left queued on the GPU
    summary = engine.run(found, progress=Progress(len(found), every=1e9))
    seconds = time.perf_counter() - start
    assert summary.passes["pose"].done == len(found), summary.to_dict()
    return len(found) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda:N for ours (naive is always CPU)")
    parser.add_argument("--full-size", action="store_true", help="stacks at about the real networks' cost")
    add_repeat(parser, 3)
    parser.add_argument("--fixed-batch", action="store_true", help="export both files with batch dim fixed at 1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    claim = claim_device(args.device)
    try:
        with workspace("pose") as work:
            sizes = FULL if args.full_size else QUICK
            batch = 1 if args.fixed_batch else "N"
            det_macs = build_detector(work / DETECTOR_FILE, *sizes["det"], batch)
            pose_macs = build_pose(work / POSE_FILE, *sizes["pose"], batch)
            rng = np.random.default_rng(0)
            images = [rng.integers(0, 256, (BUCKET.height, BUCKET.width, 3), dtype=np.uint8)
                      for _ in range(args.images)]
            print(f"models: detector {det_macs / 1e9:.1f} GMAC, pose {pose_macs / 1e9:.2f} GMAC per image; "
                  f"batch dim {'1 (fixed)' if args.fixed_batch else 'dynamic'}; {args.images} images "
                  f"{BUCKET.label}; ours on {claim.device}, batch {args.batch_size}")
            naive = bench_naive(work, images, args.repeat)
            print(f"naive (reference flow, CPU provider, 1 image at a time): {naive.max:8.2f} images/s  "
                  f"(median {naive.median:.2f})")
            ours = bench_pass(work, images, claim.device, args.batch_size, args.repeat)
            print(f"ours, pass run_batch ({claim.device}):                     {ours.max:8.2f} images/s  "
                  f"= {ours.max / naive.max:.2f}x naive (medians {ours.median / naive.median:.2f}x)")
            engine = bench_engine(work, images, claim.device, args.batch_size, work)
            print(f"ours, engine from PNG to pose.npy ({claim.device}):        {engine:8.2f} images/s  "
                  f"= {engine / naive.max:.2f}x naive")
    finally:
        claim.release()

if __name__ == "__main__":
    main()
