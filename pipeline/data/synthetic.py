"""The embedded segmentation dataset: textured shapes whose class needs the whole object.

Every sample is rendered on the fly from ``(seed, split, index)`` with numpy alone, so nothing is
stored or downloaded and the same key always gives the same bytes.

Each image holds 1 to 3 large objects (side 28% to 70% of the image; the fewer objects, the
larger) on a smooth, muted background, placed apart from each other where they fit (some
overlap remains). The 9 object classes cross three coarse, high-contrast textures (stripes of
period 7-10 px at 64 px, dots 9-12 px apart, a checkerboard of 5-6 px cells; a dark and a light
colour of random hues, random orientation and phase) with three shapes (disc, square, triangle). The texture is a
local cue a small patch shows; the shape is not: a pixel
inside a striped disc looks exactly like one inside a striped square or triangle, and only the
object's outline, up to half the image away, tells them apart. So a small network that learns
the textures quickly still needs a large receptive field and capacity to get the shapes right;
that is the gap a teacher can close for a student.

Squares and triangles turn by a uniform random angle of at most ``max_rotation`` degrees from their
base orientation (squares axis-aligned, triangles pointing right). At 180, any orientation, the
samples are generator version 2's exactly; at 0 every square and triangle has one orientation, and
a ResNet18 learns the shapes in a few thousand images instead of about sixteen thousand (the
default pipeline's regime, docs/BENCHMARKS.md).

There is no clutter; a random illumination gain and per-channel gaussian noise (sigma 2-6) make
the pixels less clean. Every pixel is labelled (no ignore pixels in the raw samples; augmentation
padding uses :data:`IGNORE_INDEX`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.data.rendered import SPLITS, RenderedDataset, check_max_rotation
from pipeline.data.transforms import IGNORE_INDEX  # noqa: F401 - the masks' ignore label, named with the classes

# Bump whenever the rendering changes: it is part of the dataset fingerprint.
GENERATOR_VERSION = 2

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "striped_disc",
    "striped_square",
    "striped_triangle",
    "dotted_disc",
    "dotted_square",
    "dotted_triangle",
    "checkered_disc",
    "checkered_square",
    "checkered_triangle",
)
_STRIPES, _DOTS, _CHECKER = 0, 1, 2
_TAU = 2.0 * np.pi


def _key(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    entropy = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, SPLITS[split], int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


# ------------------------------------------------------------------------------- drawing
class _Canvas:
    """An RGB float image and its label map; objects are painted in z-order."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.n = size
        self.rng = rng
        yy = (np.arange(size, dtype=np.float32) + 0.5)[:, None]
        xx = (np.arange(size, dtype=np.float32) + 0.5)[None, :]
        # Background: a gentle gradient between two muted colours in a random direction.
        c0 = rng.uniform(70, 185, 3).astype(np.float32)
        c1 = np.clip(c0 + rng.uniform(-40, 40, 3), 0, 255).astype(np.float32)
        phi = rng.uniform(0, _TAU)
        t = (np.cos(phi) * xx + np.sin(phi) * yy) / size
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        self.image = c0 + (c1 - c0) * t[..., None]
        self.label = np.zeros((size, size), dtype=np.uint8)

    def region(self, cy: float, cx: float, extent: float):
        """Slices and centred coordinates of the box of half-side ``extent`` around (cy, cx)."""
        n = self.n
        y0, y1 = max(int(np.floor(cy - extent)), 0), min(int(np.ceil(cy + extent)) + 1, n)
        x0, x1 = max(int(np.floor(cx - extent)), 0), min(int(np.ceil(cx + extent)) + 1, n)
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        return (slice(y0, y1), slice(x0, x1)), dy, dx

    def paint(self, cy, cx, extent, shape: Callable, fill: Callable, label: int) -> None:
        reg = self.region(cy, cx, extent)
        if reg is None:
            return
        (sy, sx), dy, dx = reg
        inside = shape(dy, dx)
        if not inside.any():
            return
        colours = fill(dy, dx)
        patch = self.image[sy, sx]
        if colours.ndim == 1:
            patch[inside] = colours
        else:
            patch[inside] = colours[inside]
        self.label[sy, sx][inside] = label


def _rot(dy, dx, angle):
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


# Shapes: functions of centred coordinates (dy, dx) -> bool mask.
def _disc(r):
    return lambda dy, dx: dy * dy + dx * dx <= r * r


def _square(half, angle):
    def shape(dy, dx):
        u, v = _rot(dy, dx, angle)
        return np.maximum(np.abs(u), np.abs(v)) <= half

    return shape


def _triangle(circumradius, angle):
    normals = [(np.cos(angle + k * _TAU / 3), np.sin(angle + k * _TAU / 3)) for k in range(3)]
    inradius = circumradius / 2.0

    def shape(dy, dx):
        m = dx * normals[0][0] + dy * normals[0][1] <= inradius
        for nx, ny in normals[1:]:
            m &= dx * nx + dy * ny <= inradius
        return m

    return shape


# Fills: functions of centred coordinates -> (h, w, 3) colours.
def _contrast_pair(rng):
    """A dark and a light colour (random hues, in random order): the texture always shows."""
    dark = rng.uniform(0, _DARK_MAX, 3)
    light = rng.uniform(_LIGHT_MIN, 255, 3)
    pair = (dark, light) if rng.random() < 0.5 else (light, dark)
    return pair[0].astype(np.float32), pair[1].astype(np.float32)


def _texture(kind: int, rng: np.random.Generator, size: int):
    """A coarse two-colour texture with random orientation, scale, phase and colours."""
    ca, cb = _contrast_pair(rng)
    angle = rng.uniform(0, np.pi)
    ph1, ph2 = rng.uniform(0, 1, 2)
    if kind == _STRIPES:
        period = max(3.5, size * rng.uniform(*_STRIPE_PERIOD))

        def pattern(dy, dx):
            u, _ = _rot(dy, dx, angle)
            return (u / period + ph1) % 1.0 < 0.5

    elif kind == _DOTS:
        spacing = max(4.5, size * rng.uniform(*_DOT_SPACING))
        radius2 = rng.uniform(0.28, 0.36) ** 2

        def pattern(dy, dx):
            u, v = _rot(dy, dx, angle)
            fu = (u / spacing + ph1) % 1.0 - 0.5
            fv = (v / spacing + ph2) % 1.0 - 0.5
            return fu * fu + fv * fv < radius2

    else:
        cell = max(2.5, size * rng.uniform(*_CHECKER_CELL))

        def pattern(dy, dx):
            u, v = _rot(dy, dx, angle)
            return (np.floor(u / cell + ph1) + np.floor(v / cell + ph2)) % 2 == 0

    return lambda dy, dx: np.where(pattern(dy, dx)[..., None], ca, cb)


# Texture scales as fractions of the image side (7-10 px stripe period at 64 px, ...).
_STRIPE_PERIOD = (0.11, 0.16)
_DOT_SPACING = (0.14, 0.19)
_CHECKER_CELL = (0.075, 0.1)
_DARK_MAX, _LIGHT_MIN = 100.0, 155.0
# Object side as a fraction of the image side, by number of objects in the image.
_SIDES = {1: (0.45, 0.7), 2: (0.34, 0.52), 3: (0.28, 0.42)}


# ------------------------------------------------------------------------------- objects
def _reach(cls: int, half: float) -> float:
    """About how far the object reaches from its centre (for placement)."""
    return half if CLASS_NAMES[cls].endswith("disc") else half * 1.2


_TEXTURE_OF = {"striped": _STRIPES, "dotted": _DOTS, "checkered": _CHECKER}


def _draw_object(cv: _Canvas, cls: int, cy: float, cx: float, half: float, max_rotation: float = 180.0) -> None:
    rng, n = cv.rng, cv.n
    texture, shape = CLASS_NAMES[cls].split("_")
    fill = _texture(_TEXTURE_OF[texture], rng, n)
    # The same draws at every max_rotation, scaled towards the base orientation: at 180 (any
    # orientation) they are generator v2's angles exactly.
    if shape == "disc":
        cv.paint(cy, cx, half + 1, _disc(half), fill, cls)
    elif shape == "triangle":
        radius = half * 1.45
        turn = rng.uniform(0, _TAU)
        angle = turn if max_rotation >= 180 else np.pi + (turn - np.pi) * max_rotation / 180
        cv.paint(cy, cx, radius + 1, _triangle(radius, angle), fill, cls)
    else:
        angle = rng.uniform(-np.pi / 4, np.pi / 4) * min(1.0, max_rotation / 45)
        cv.paint(cy, cx, half * 1.42 + 1, _square(half, angle), fill, cls)


def _place(rng, n: int, reaches: list[float]) -> list[tuple[float, float]]:
    """Centres that keep every object inside the image and apart from the others if possible."""
    centres: list[tuple[float, float]] = []
    for r in reaches:
        lo, hi = min(r, n / 2), max(n - r, n / 2)
        best, best_score = None, -np.inf
        for _ in range(12):
            c = rng.uniform(lo, hi, 2)
            score = min((np.hypot(c[0] - p[0], c[1] - p[1]) - r - q for p, q in zip(centres, reaches)), default=0.0)
            if score > best_score:
                best, best_score = c, score
            if score >= 0:
                break
        centres.append((float(best[0]), float(best[1])))
    return centres


def render_sample(seed: int, split: str, index: int, image_size: int,
                  max_rotation: float = 180.0) -> tuple[np.ndarray, np.ndarray]:
    """Render one sample: (uint8 HxWx3 image, uint8 HxW class ids). Pure function of its arguments."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    check_max_rotation(max_rotation)
    rng = _key(seed, split, index)
    n = image_size
    cv = _Canvas(n, rng)
    n_objects = int(rng.choice((1, 2, 3), p=(0.3, 0.4, 0.3)))
    classes = [int(c) for c in rng.integers(1, len(CLASS_NAMES), size=n_objects)]
    halves = [n * rng.uniform(*_SIDES[n_objects]) / 2 for _ in classes]
    reaches = [_reach(c, h) for c, h in zip(classes, halves)]
    for cls, half, (cy, cx) in zip(classes, halves, _place(rng, n, reaches)):
        _draw_object(cv, cls, cy, cx, half, max_rotation)
    return finish_image(cv.image, rng, image_size), cv.label


def finish_image(image: np.ndarray, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Float canvas -> uint8 photo: illumination ramp, gaussian noise, clipping."""
    # Illumination: a random linear gain across the image, then per-channel gaussian noise.
    gain = rng.uniform(-0.15, 0.15)
    phi = rng.uniform(0, _TAU)
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    ramp = 1.0 + gain * (np.cos(phi) * coords[None, :] + np.sin(phi) * coords[:, None])
    image = image * ramp[..., None]
    sigma = rng.uniform(2.0, 6.0)
    image = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- dataset
class SyntheticSegmentation(RenderedDataset[tuple[np.ndarray, np.ndarray]]):
    """``size`` samples of one split, rendered on first access and cached in memory.

    ``transform`` is called as ``transform(image=uint8 HxWx3, mask=uint8 HxW)`` (albumentations
    style) and must return ``{"image": CHW tensor, "mask": HW tensor}``; ``None`` means the
    evaluation transform (normalise + to tensor). Masks come out int64. :meth:`raw` gives the
    untransformed (uint8 HxWx3 image, uint8 HxW mask).
    """

    classes = CLASS_NAMES

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render_sample(self.seed, self.split, index, self.image_size, self.max_rotation)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(i)
        out = self.transform(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.ascontiguousarray(img))
        if not isinstance(msk, torch.Tensor):
            msk = torch.from_numpy(np.ascontiguousarray(msk))
        return img.float(), msk.long()
