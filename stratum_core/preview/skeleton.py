"""Draw a COCO-WholeBody pose (133 keypoints) on an image: body, feet, face and hands."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Keypoint index ranges of COCO-WholeBody.
BODY = range(0, 17)
FEET = range(17, 23)
FACE = range(23, 91)
LEFT_HAND = range(91, 112)
RIGHT_HAND = range(112, 133)

DEFAULT_THRESHOLD = 0.3

LEFT, RIGHT, CENTRE = (0, 220, 90), (255, 140, 0), (60, 160, 255)
FACE_COLOUR = (255, 255, 255)
HAND_COLOURS = ((255, 60, 60), (255, 200, 0), (60, 220, 60), (0, 200, 255), (200, 80, 255))  # thumb … little

# (a, b, colour): the mmpose COCO-WholeBody skeleton for body and feet, plus the wrist → hand-root links.
_BODY_LIMBS = (
    (15, 13, LEFT), (13, 11, LEFT), (16, 14, RIGHT), (14, 12, RIGHT), (11, 12, CENTRE),
    (5, 11, LEFT), (6, 12, RIGHT), (5, 6, CENTRE), (5, 7, LEFT), (6, 8, RIGHT), (7, 9, LEFT),
    (8, 10, RIGHT), (1, 2, CENTRE), (0, 1, LEFT), (0, 2, RIGHT), (1, 3, LEFT), (2, 4, RIGHT),
    (3, 5, LEFT), (4, 6, RIGHT),
    (15, 17, LEFT), (15, 18, LEFT), (15, 19, LEFT), (16, 20, RIGHT), (16, 21, RIGHT), (16, 22, RIGHT),
    (9, 91, LEFT), (10, 112, RIGHT),
)


def _chain(points: list[int], closed: bool = False) -> list[tuple[int, int]]:
    pairs = list(zip(points, points[1:]))
    return pairs + [(points[-1], points[0])] if closed else pairs


def _face_limbs() -> list[tuple[int, int, tuple[int, int, int]]]:
    """The 68-landmark face contours (jaw, brows, nose, eyes, lips), offset to keypoint 23."""
    open_chains = [range(0, 17), range(17, 22), range(22, 27), range(27, 31), range(31, 36)]
    closed_chains = [range(36, 42), range(42, 48), range(48, 60), range(60, 68)]
    pairs = [p for c in open_chains for p in _chain(list(c))]
    pairs += [p for c in closed_chains for p in _chain(list(c), closed=True)]
    return [(a + FACE.start, b + FACE.start, FACE_COLOUR) for a, b in pairs]


def _hand_limbs(root: int) -> list[tuple[int, int, tuple[int, int, int]]]:
    """Root → 4 joints per finger, thumb first (keypoints root+1 … root+20)."""
    limbs = []
    for finger, colour in enumerate(HAND_COLOURS):
        joints = [root] + [root + 1 + 4 * finger + j for j in range(4)]
        limbs += [(a, b, colour) for a, b in _chain(joints)]
    return limbs


LIMBS: tuple[tuple[int, int, tuple[int, int, int]], ...] = (
    _BODY_LIMBS + tuple(_face_limbs()) + tuple(_hand_limbs(LEFT_HAND.start)) + tuple(_hand_limbs(RIGHT_HAND.start))
)


def keypoint_colour(index: int) -> tuple[int, int, int]:
    """The dot colour of keypoint `index`."""
    if index in FACE:
        return FACE_COLOUR
    if index in LEFT_HAND or index in RIGHT_HAND:
        offset = index - (LEFT_HAND.start if index in LEFT_HAND else RIGHT_HAND.start)
        return (255, 255, 255) if offset == 0 else HAND_COLOURS[(offset - 1) // 4]
    if index == 0:
        return CENTRE
    # Odd body indices are left (1 left_eye, 3 left_ear, 5 left_shoulder, …); feet 17-19 left, 20-22 right.
    if index in FEET:
        return LEFT if index < 20 else RIGHT
    return LEFT if index % 2 == 1 else RIGHT


def to_pixels(pose: np.ndarray, width: int, height: int) -> np.ndarray:
    """(133, 3) pose with x, y in [-1, 1] of the bucket → (133, 2) float pixel coordinates in a width×height image."""
    xy = pose[:, :2].astype(np.float32)
    return np.stack([(xy[:, 0] + 1) * 0.5 * width, (xy[:, 1] + 1) * 0.5 * height], axis=-1)


def draw_pose(image: Image.Image, pose: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Image.Image:
    """A copy of `image` with the skeleton drawn; keypoints whose confidence is below `threshold` are hidden.

    The pose is in the bucket's normalised coordinates, so it lands right on an image of any size
    with the bucket's aspect (pixel x = (x + 1) / 2 · width).
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    points = to_pixels(pose, out.width, out.height)
    visible = np.nan_to_num(pose[:, 2].astype(np.float32)) >= threshold
    scale = max(out.width, out.height) / 1024
    limb_width = max(2, round(5 * scale))
    for a, b, colour in LIMBS:
        if visible[a] and visible[b]:
            fine = a in FACE or a >= LEFT_HAND.start
            width = max(1, limb_width // 2) if fine else limb_width
            draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=width)
    for index in np.flatnonzero(visible):
        fine = index in FACE or index >= LEFT_HAND.start
        radius = max(1.5, 3 * scale) if fine else max(3.0, 7 * scale)
        x, y = points[index]
        # A dark rim keeps light dots readable on light clothes; tiny dots would be all rim.
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=keypoint_colour(int(index)),
                     outline=(0, 0, 0) if radius >= 3 else None)
    return out
