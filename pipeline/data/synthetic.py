"""The embedded segmentation dataset: textured shapes whose class needs context.

Every sample is rendered on the fly from ``(seed, split, index)`` with numpy alone, so nothing is
stored or downloaded and the same key always gives the same bytes. The classes are built so that
a small patch cannot tell a pixel's class:

* the same texture on different shapes (striped disc / striped square / striped triangle),
* the same shape with different textures (striped / dotted / checkered disc),
* classes defined by surroundings (a disc inside a ring, a square inside a frame: the interior
  looks exactly like an ordinary disc or square of any texture),
* classes defined by the arrangement of parts (a square with a small marker above it versus one
  with the marker below it),
* background clutter that shares every local cue with the objects (dotted or checkered squares
  and triangles without a marker or frame, hollow rings, marker-like blobs, textured bands,
  plain shapes), occlusion (z-ordered objects and clutter), scale variation (objects 30% to 70%
  of the image side, ring/frame/marker on top), random colours for every image and object (so
  colour alone never gives the class), an illumination gradient and per-channel gaussian noise.

Every pixel is labelled (no ignore pixels in the raw samples; augmentation padding uses
:data:`IGNORE_INDEX`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

# Bump whenever the rendering changes: it is part of the dataset fingerprint.
GENERATOR_VERSION = 1

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "striped_disc",  # same texture, different shapes: 1 / 2 / 3
    "striped_square",
    "striped_triangle",
    "dotted_disc",  # same shape, different textures: 1 / 4 / 5
    "checkered_disc",
    "ringed_disc",  # a disc of any texture inside a ring (surroundings)
    "framed_square",  # a square of any texture inside a square frame (surroundings)
    "square_marker_top",  # a square of any texture with a small marker above it (arrangement)
    "square_marker_bottom",  # ... with the marker below it
)
IGNORE_INDEX = 255
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_STRIPES, _DOTS, _CHECKER = 0, 1, 2
_TEXTURES = (_STRIPES, _DOTS, _CHECKER)
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
        # Background: a gradient between two random colours in a random direction.
        c0 = rng.uniform(0, 255, 3).astype(np.float32)
        c1 = rng.uniform(0, 255, 3).astype(np.float32)
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


def _annulus(r0, r1, arc=None):
    def shape(dy, dx):
        d2 = dy * dy + dx * dx
        m = (d2 >= r0 * r0) & (d2 <= r1 * r1)
        if arc is not None:
            start, length = arc
            m &= (np.arctan2(dy, dx) - start) % _TAU <= length
        return m

    return shape


def _square(half, angle, inner=None):
    def shape(dy, dx):
        u, v = _rot(dy, dx, angle)
        d = np.maximum(np.abs(u), np.abs(v))
        return (d <= half) if inner is None else ((d >= inner) & (d <= half))

    return shape


def _rect(half_u, half_v, angle):
    def shape(dy, dx):
        u, v = _rot(dy, dx, angle)
        return (np.abs(u) <= half_u) & (np.abs(v) <= half_v)

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


# Fills: functions of centred coordinates -> (h, w, 3) colours, or one colour.
def _colour_pair(rng):
    a = rng.uniform(0, 255, 3)
    # Every channel differs by at least 60 levels, so the pattern is always visible.
    b = (a + rng.uniform(60, 196, 3)) % 256
    return a.astype(np.float32), b.astype(np.float32)


def _solid(rng):
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    return lambda dy, dx: colour


def _texture(kind: int, rng: np.random.Generator, size: int):
    """A two-colour texture with random orientation, scale, phase and colours."""
    ca, cb = _colour_pair(rng)
    angle = rng.uniform(0, np.pi)
    ph1, ph2 = rng.uniform(0, 1, 2)
    if kind == _STRIPES:
        period = max(4.0, size * rng.uniform(0.09, 0.14))

        def pattern(dy, dx):
            u, _ = _rot(dy, dx, angle)
            return (u / period + ph1) % 1.0 < 0.5

    elif kind == _DOTS:
        spacing = max(5.0, size * rng.uniform(0.11, 0.16))
        radius2 = rng.uniform(0.28, 0.38) ** 2

        def pattern(dy, dx):
            u, v = _rot(dy, dx, angle)
            fu = (u / spacing + ph1) % 1.0 - 0.5
            fv = (v / spacing + ph2) % 1.0 - 0.5
            return fu * fu + fv * fv < radius2

    else:
        cell = max(3.0, size * rng.uniform(0.055, 0.085))

        def pattern(dy, dx):
            u, v = _rot(dy, dx, angle)
            return (np.floor(u / cell + ph1) + np.floor(v / cell + ph2)) % 2 == 0

    return lambda dy, dx: np.where(pattern(dy, dx)[..., None], ca, cb)


# ------------------------------------------------------------------------------- objects
def _draw_object(
    cv: _Canvas, cls: int, size_range: tuple[float, float] = (0.3, 0.7), centre_range: tuple[float, float] = (0.2, 0.8)
) -> None:
    rng, n = cv.rng, cv.n
    side = n * rng.uniform(*size_range)  # disc diameter / square side / triangle extent, over image side
    half = side / 2.0
    cy, cx = rng.uniform(centre_range[0] * n, centre_range[1] * n, 2)
    gap = max(1.0, 0.12 * half)
    width = max(1.5, 0.15 * half)
    name = CLASS_NAMES[cls]
    if name in ("striped_disc", "dotted_disc", "checkered_disc", "ringed_disc"):
        kind = {"striped_disc": _STRIPES, "dotted_disc": _DOTS, "checkered_disc": _CHECKER}.get(name)
        if kind is None:  # ringed disc: any texture, the ring makes the class
            kind = int(rng.integers(3))
            outer = half + gap + width
            cv.paint(cy, cx, outer + 1, _annulus(half + gap, outer), _solid(rng), cls)
        cv.paint(cy, cx, half + 1, _disc(half), _texture(kind, rng, n), cls)
    elif name == "striped_triangle":
        radius = side / 1.6
        cv.paint(cy, cx, radius + 1, _triangle(radius, rng.uniform(0, _TAU)), _texture(_STRIPES, rng, n), cls)
    else:  # squares
        angle = rng.uniform(-np.pi / 4, np.pi / 4)
        kind = _STRIPES if name == "striped_square" else int(rng.integers(3))
        reach = half * (abs(np.cos(angle)) + abs(np.sin(angle)))  # vertical half-extent
        if name == "framed_square":
            outer = half + gap + width
            cv.paint(cy, cx, outer * 1.42 + 1, _square(outer, angle, inner=half + gap), _solid(rng), cls)
        elif name in ("square_marker_top", "square_marker_bottom"):
            mr = max(1.6, 0.25 * half)
            sign = -1.0 if name == "square_marker_top" else 1.0
            my = cy + sign * (reach + gap + mr)
            mx = cx + rng.uniform(-0.3, 0.3) * half
            cv.paint(my, mx, mr + 1, _disc(mr), _solid(rng), cls)
        cv.paint(cy, cx, reach + 1, _square(half, angle), _texture(kind, rng, n), cls)


def _draw_clutter(cv: _Canvas) -> None:
    """A background-class distractor that shares local cues with the object classes."""
    rng, n = cv.rng, cv.n
    side = n * rng.uniform(0.1, 0.35)
    half = side / 2.0
    cy, cx = rng.uniform(0, n, 2)
    # Plain distractors (rings, blobs, untextured shapes) are twice as common as textured ones.
    kind = int(rng.choice(6, p=(0.0, 0.0, 0.3, 0.3, 0.0, 0.4)))
    if kind == 0:  # dotted / checkered square without marker or frame
        angle = rng.uniform(-np.pi / 4, np.pi / 4)
        tex = _texture(int(rng.choice((_DOTS, _CHECKER))), rng, n)
        cv.paint(cy, cx, half * 1.42 + 1, _square(half, angle), tex, 0)
    elif kind == 1:  # dotted / checkered triangle
        radius = side / 1.6
        tex = _texture(int(rng.choice((_DOTS, _CHECKER))), rng, n)
        cv.paint(cy, cx, radius + 1, _triangle(radius, rng.uniform(0, _TAU)), tex, 0)
    elif kind == 2:  # hollow ring or arc with nothing inside
        width = max(1.5, 0.15 * half)
        arc = None if rng.random() < 0.5 else (rng.uniform(0, _TAU), rng.uniform(0.5 * np.pi, 1.5 * np.pi))
        cv.paint(cy, cx, half + width + 1, _annulus(half, half + width, arc), _solid(rng), 0)
    elif kind == 3:  # a few marker-like blobs
        for _ in range(int(rng.integers(1, 4))):
            r = max(1.6, n * rng.uniform(0.02, 0.05))
            by, bx = rng.uniform(0, n, 2)
            cv.paint(by, bx, r + 1, _disc(r), _solid(rng), 0)
    elif kind == 4:  # an elongated textured band (any texture)
        angle = rng.uniform(0, np.pi)
        hu, hv = half * rng.uniform(1.2, 2.0), half * rng.uniform(0.2, 0.4)
        tex = _texture(int(rng.integers(3)), rng, n)
        cv.paint(cy, cx, hu + hv + 1, _rect(hu, hv, angle), tex, 0)
    else:  # an untextured disc, square or triangle
        shape_kind = int(rng.integers(3))
        if shape_kind == 0:
            shape, extent = _disc(half), half
        elif shape_kind == 1:
            shape, extent = _square(half, rng.uniform(-np.pi / 4, np.pi / 4)), half * 1.42
        else:
            shape, extent = _triangle(side / 1.6, rng.uniform(0, _TAU)), side / 1.6
        cv.paint(cy, cx, extent + 1, shape, _solid(rng), 0)


def render_sample(seed: int, split: str, index: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one sample: (uint8 HxWx3 image, uint8 HxW class ids). Pure function of its arguments."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = _key(seed, split, index)
    cv = _Canvas(image_size, rng)
    n_objects = int(rng.integers(1, 4))
    n_clutter = int(rng.integers(0, 4))
    n_behind = int(rng.binomial(n_clutter, 0.75))  # most clutter is behind the objects
    for _ in range(n_behind):
        _draw_clutter(cv)
    for cls in rng.integers(1, len(CLASS_NAMES), size=n_objects):
        _draw_object(cv, int(cls))
    for _ in range(n_clutter - n_behind):
        _draw_clutter(cv)
    return finish_image(cv.image, rng, image_size), cv.label


def finish_image(image: np.ndarray, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Float canvas -> uint8 photo: illumination ramp, gaussian noise, clipping."""
    # Illumination: a random linear gain across the image, then per-channel gaussian noise.
    gain = rng.uniform(-0.25, 0.25)
    phi = rng.uniform(0, _TAU)
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    ramp = 1.0 + gain * (np.cos(phi) * coords[None, :] + np.sin(phi) * coords[:, None])
    image = image * ramp[..., None]
    sigma = rng.uniform(2.0, 8.0)
    image = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- dataset
class SyntheticSegmentation(Dataset):
    """``size`` samples of one split, rendered on first access and cached in memory.

    ``transform`` is called as ``transform(image=uint8 HxWx3, mask=uint8 HxW)`` (albumentations
    style) and must return ``{"image": CHW tensor, "mask": HW tensor}``; ``None`` means the
    evaluation transform (normalise + to tensor). Masks come out int64.
    """

    def __init__(
        self,
        split: Literal["train", "val"],
        size: int,
        image_size: int,
        seed: int,
        transform: Callable | None = None,
        cache: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are {sorted(SPLITS)}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if transform is None:
            from pipeline.data.transforms import eval_transform

            transform = eval_transform()
        self.split = split
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.transform = transform
        self.classes = CLASS_NAMES
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = [None] * size if cache else None

    def __len__(self) -> int:
        return self.size

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed sample: (uint8 HxWx3 image, uint8 HxW mask)."""
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} samples")
        i %= self.size
        if self._cache is None:
            return render_sample(self.seed, self.split, i, self.image_size)
        sample = self._cache[i]
        if sample is None:
            sample = self._cache[i] = render_sample(self.seed, self.split, i, self.image_size)
        return sample

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(i)
        out = self.transform(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.ascontiguousarray(img))
        if not isinstance(msk, torch.Tensor):
            msk = torch.from_numpy(np.ascontiguousarray(msk))
        return img.float(), msk.long()

    def __repr__(self) -> str:
        return (
            f"SyntheticSegmentation(split={self.split!r}, size={self.size}, "
            f"image_size={self.image_size}, seed={self.seed}, classes={len(CLASS_NAMES)})"
        )
