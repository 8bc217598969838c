"""Colours of the preview: the 28-class segmentation palette, a turbo-like depth map, normals as RGB."""

from __future__ import annotations

import numpy as np

from stratum_core.artifacts import SEG_CLASSES

# One fixed colour per Sapiens class, in SEG_CLASSES order: left body parts in blues and greens,
# right body parts in reds and oranges, so a left/right swap is visible at a glance.
SEG_PALETTE = np.array([
    (0, 0, 0),        # Background
    (255, 218, 0),    # Apparel
    (255, 178, 132),  # Face_Neck
    (128, 72, 24),    # Hair
    (0, 128, 255),    # Left_Foot
    (0, 210, 255),    # Left_Hand
    (0, 90, 200),     # Left_Lower_Arm
    (70, 70, 255),    # Left_Lower_Leg
    (110, 0, 210),    # Left_Shoe
    (160, 130, 255),  # Left_Sock
    (0, 255, 200),    # Left_Upper_Arm
    (0, 150, 120),    # Left_Upper_Leg
    (140, 140, 0),    # Lower_Clothing
    (255, 128, 0),    # Right_Foot
    (255, 210, 110),  # Right_Hand
    (215, 80, 0),     # Right_Lower_Arm
    (255, 60, 60),    # Right_Lower_Leg
    (190, 0, 100),    # Right_Shoe
    (255, 140, 190),  # Right_Sock
    (255, 0, 210),    # Right_Upper_Arm
    (170, 0, 0),      # Right_Upper_Leg
    (0, 190, 0),      # Torso
    (170, 255, 70),   # Upper_Clothing
    (255, 0, 90),     # Lower_Lip
    (150, 0, 50),     # Upper_Lip
    (245, 245, 245),  # Lower_Teeth
    (190, 190, 190),  # Upper_Teeth
    (255, 105, 140),  # Tongue
], dtype=np.uint8)

# Drawn where an artifact says "no foreground" (depth and normals are 0 on the background).
BACKGROUND = (24, 24, 24)

# Polynomial fit of Google's Turbo colour map (Mikhailov 2019), coefficients lowest order first.
_TURBO_COEFFS = np.array([
    (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
    (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
    (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
])


def _turbo_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    powers = np.stack([x ** k for k in range(_TURBO_COEFFS.shape[1])])  # (6, 256)
    rgb = (_TURBO_COEFFS @ powers).T  # (256, 3)
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


TURBO_LUT = _turbo_lut()


def seg_to_rgb(seg: np.ndarray) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8 in SEG_PALETTE; ids above 27 show as class 0."""
    ids = np.where(seg < len(SEG_CLASSES), seg, 0)
    return SEG_PALETTE[ids]


def depth_to_rgb(depth: np.ndarray, foreground: np.ndarray | None = None) -> np.ndarray:
    """(H, W) depth in [0, 1] → (H, W, 3) uint8 through TURBO_LUT (0 blue … 1 red).

    `foreground` (bool, H×W) defaults to depth > 0, since the depth pass writes 0 on the background;
    background pixels get BACKGROUND.
    """
    values = np.nan_to_num(depth.astype(np.float32))
    index = (np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8)
    rgb = TURBO_LUT[index]
    mask = values > 0 if foreground is None else foreground
    rgb[~mask] = BACKGROUND
    return rgb


def normal_to_rgb(normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals → (H, W, 3) uint8 as (n + 1) / 2; zero vectors (background) get BACKGROUND."""
    values = np.nan_to_num(normal.astype(np.float32))
    rgb = (np.clip((values + 1.0) * 0.5, 0.0, 1.0) * 255).round().astype(np.uint8)
    rgb[~values.any(axis=-1)] = BACKGROUND
    return rgb
