"""Model-free DWPose geometry: YOLOX letterbox and decode, NMS, top-down affine crop, SimCC decode.

Coordinate conventions (all float, pixels unless said otherwise):
- "image" coordinates are pixels of the bucket crop, origin at the top-left pixel, x right, y down;
  this is the frame the detector boxes and the final keypoints live in.
- boxes are (x1, y1, x2, y2) in image coordinates.
- a top-down crop is described by `center` (cx, cy) and `scale` (w, h): the image region of size
  scale centred on center, mapped uniformly onto the model input (input_w × input_h).

Follows the reference DWPose ONNX pipeline (IDEA-Research DWPose `onnxdet.py` / `onnxpose.py`),
re-implemented here without mmpose; only OpenCV is used, for the resize and the affine warp.
"""

from __future__ import annotations

import numpy as np

DETECTOR_SIZE = 640  # YOLOX input, square
LETTERBOX_PAD = 114
YOLOX_STRIDES = (8, 16, 32)
NMS_IOU = 0.45
CANDIDATE_SCORE = 0.1  # the reference's pre-NMS threshold
PERSON_SCORE = 0.3  # persons kept after NMS
PERSON_CLASS = 0
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB → BGR, the detector's channel order.

    mmdet's YOLOX-L (the checkpoint DWPose's yolox_l.onnx was exported from) trains on images as
    OpenCV loads them, BGR, with `bgr_to_rgb=False`, mean 0, std 1. The pose model's mmpose config
    has `bgr_to_rgb=True`: it sees RGB, with the RGB mean/std below.
    """
    return np.ascontiguousarray(image[..., ::-1])


def letterbox(image: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio, paste top-left on a `size`² canvas of 114s.

    image: (H, W, 3) uint8, in the channel order the detector takes (BGR: see `rgb_to_bgr`).
    Returns (3, size, size) float32 with raw 0–255 values (no normalisation) and the
    ratio r such that detector pixels = image pixels × r.
    """
    import cv2

    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = int(width * ratio), int(height * ratio)
    canvas = np.full((size, size, 3), LETTERBOX_PAD, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def yolox_grid(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor grid of a YOLOX head: (A, 2) cell (x, y) indices and (A, 1) strides.

    Anchors run stride by stride, each row-major over its (size/stride)² cells;
    A = 8400 for size 640 and strides 8/16/32.
    """
    grids, expanded = [], []
    for stride in strides:
        cells = size // stride
        xs, ys = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        expanded.append(np.full((cells * cells, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def anchor_count(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = YOLOX_STRIDES) -> int:
    return sum((size // s) ** 2 for s in strides)


def decode_yolox(raw: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One image's YOLOX output (A, 5 + classes) → boxes (A, 4) xyxy in detector pixels, scores (A, classes).

    raw columns: cx, cy offsets in cells, log w, log h in strides, objectness, class scores
    (already sigmoid-ed in the exported model). score = objectness × class score.
    """
    grid, strides = yolox_grid(size)
    centers = (raw[:, :2] + grid) * strides
    sizes = np.exp(raw[:, 2:4]) * strides
    boxes = np.concatenate((centers - sizes / 2, centers + sizes / 2), axis=1)
    return boxes, raw[:, 4:5] * raw[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> list[int]:
    """Greedy single-class NMS; boxes (N, 4) xyxy, scores (N,). Returns kept indices, best first.

    Areas use the reference's inclusive-pixel convention (w = x2 - x1 + 1).
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def person_boxes(raw: np.ndarray, ratio: float, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One image's YOLOX output (A, 85) → person boxes (P, 4) xyxy in image pixels and scores (P,).

    Class-aware like the reference: only the person column is considered, so other classes never
    suppress or replace a person; candidates > 0.1, NMS at IoU 0.45, kept if > 0.3.
    """
    boxes, scores = decode_yolox(raw, size)
    person = scores[:, PERSON_CLASS]
    candidates = person > CANDIDATE_SCORE
    boxes, person = boxes[candidates] / ratio, person[candidates]
    keep = nms(boxes, person) if len(person) else []
    boxes, person = boxes[keep], person[keep]
    strong = person > PERSON_SCORE
    return boxes[strong].reshape(-1, 4), person[strong]


def largest_box(boxes: np.ndarray) -> np.ndarray | None:
    """The (4,) box of largest area among (P, 4) xyxy boxes, or None when P = 0."""
    if len(boxes) == 0:
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(areas))]


def box_to_center_scale(box: np.ndarray, input_w: int, input_h: int,
                        padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """(4,) xyxy → center (2,) and scale (2,): the box grown by `padding`, then widened or
    heightened (never shrunk) to the input aspect input_w / input_h (0.75 for 288×384)."""
    # float32 throughout, as the reference computes it from the detector's float32 boxes: the crop
    # matrix is built from these values, and the crop must match the reference's bit for bit.
    box = np.asarray(box, dtype=np.float32)
    center = (box[:2] + box[2:]) * np.float32(0.5)
    w, h = (box[2:] - box[:2]) * np.float32(padding)
    aspect = input_w / input_h
    scale = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], dtype=np.float32)
    return center, scale


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point a quarter turn from `a` around `b`, in the inputs' dtype."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=a.dtype)


def crop_points(center: np.ndarray, scale: np.ndarray, input_w: int,
                input_h: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, 2) float32 source (image) and destination (crop) points that define the crop, built as the
    reference builds them with rot = 0: the centre, the point half a box width above it, and the
    point a quarter turn from that, each row rounded to float32 before the next is derived."""
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = np.asarray(center, dtype=np.float64)
    src[1] = np.asarray(center, dtype=np.float64) + np.array([0.0, float(scale[0]) * -0.5])
    src[2] = _third_point(src[0], src[1])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = [input_w * 0.5, input_h * 0.5]
    dst[1] = np.array([input_w * 0.5, input_h * 0.5]) + np.array([0.0, input_w * -0.5])
    dst[2] = _third_point(dst[0], dst[1])
    return src, dst


def crop_matrix(center: np.ndarray, scale: np.ndarray, input_w: int, input_h: int) -> np.ndarray:
    """(2, 3) float64 affine matrix mapping image pixels to crop pixels (no rotation).

    The image region `scale` centred on `center` lands on the input_w × input_h crop. Solved by
    cv2.getAffineTransform from float32 points, as the reference does: the analytic float64 matrix
    differs in the last bits, enough to change ~0.1% of crop pixels by one grey level.
    """
    import cv2

    src, dst = crop_points(center, scale, input_w, input_h)
    return cv2.getAffineTransform(src, dst)


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray, input_w: int,
                input_h: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB → normalised (3, input_h, input_w) float32 pose-model input.

    cv2.warpAffine, bilinear, black outside the image (as the reference);
    then (x − mean) / std per RGB channel.
    """
    import cv2

    matrix = crop_matrix(center, scale, input_w, input_h)
    crop = cv2.warpAffine(image, matrix, (input_w, input_h), flags=cv2.INTER_LINEAR)
    normalised = (crop.astype(np.float32) - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split_ratio: float = SIMCC_SPLIT_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """SimCC logits (N, K, Wx), (N, K, Wy) → keypoints (N, K, 2) in crop pixels, scores (N, K).

    Location = argmax bin / split_ratio; score = min of the two maxima. As in the reference,
    a keypoint whose score is ≤ 0 gets bin −1 (it is unusable either way).
    """
    locs = np.stack((simcc_x.argmax(-1), simcc_y.argmax(-1)), axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float32)
    locs[scores <= 0] = -1
    return locs / split_ratio, scores


def crop_to_image(keypoints: np.ndarray, center: np.ndarray, scale: np.ndarray, input_w: int,
                  input_h: int) -> np.ndarray:
    """Keypoints (K, 2) in crop pixels → (K, 2) image pixels (inverse of `crop_matrix`)."""
    size = np.array([input_w, input_h], dtype=np.float64)
    return keypoints / size * scale + center - scale / 2


def to_unit_square(keypoints: np.ndarray, bucket_w: int, bucket_h: int) -> np.ndarray:
    """(K, 2) image pixels → (K, 2) with x ↦ 2x/bw − 1, y ↦ 2y/bh − 1 ([−1, 1] inside the crop)."""
    return keypoints * np.array([2.0 / bucket_w, 2.0 / bucket_h]) - 1.0
