"""The built-in synthetic dataset: filled shapes on textured backgrounds.

Generated locally with numpy, deterministically from the seed (image i depends only on
(seed, i), so a larger set extends a smaller one). Each image has 0 to max_objects shapes,
from min_size px to max_size px across, some overlapping, each in a flat colour chosen to
differ from the background and from the shapes it overlaps.

Boxes are the tight boxes of each shape's drawn pixels: x1 = first covered column,
x2 = last covered column + 1 (continuous xyxy). A shape that a later shape partly covers keeps
the box of its whole shape; placement rejects any shape that would hide more than half of an
earlier one's box, so every object stays mostly visible.
"""

from __future__ import annotations

import math

import numpy as np

from retinanet.data.dataset import DetectionDataset
from retinanet.data.validation import Record

SHAPE_CLASSES = ("circle", "square", "triangle", "ellipse", "diamond", "cross")
BACKGROUNDS = ("textured", "flat")

_MAX_HIDDEN_FRACTION = 0.5  # of an earlier box that a new shape may cover
_MIN_COLOUR_DISTANCE = 80.0  # RGB distance from background and overlapped shapes


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, rx: float, ry: float,
                variant: float) -> np.ndarray:
    """Boolean mask of a shape centred at 0; dx [1, w], dy [h, 1] are pixel-centre offsets."""
    if kind in ("circle", "ellipse"):
        return (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0
    if kind == "square":
        return (np.abs(dx) <= rx) & (np.abs(dy) <= ry)
    if kind == "diamond":
        return np.abs(dx) / rx + np.abs(dy) / ry <= 1.0
    if kind == "cross":
        thickness = rx * variant  # half the bar width
        return ((np.abs(dx) <= rx) & (np.abs(dy) <= thickness)) | \
            ((np.abs(dx) <= thickness) & (np.abs(dy) <= ry))
    if kind == "triangle":
        # Apex at the top (variant < 0.5) or bottom; v runs 0 at the apex to 1 at the base.
        v = (dy + ry) / (2 * ry) if variant < 0.5 else (ry - dy) / (2 * ry)
        return (v >= 0) & (v <= 1) & (np.abs(dx) <= v * rx)
    raise ValueError(f"unknown shape {kind!r}")


def _aspect(kind: str, rng) -> float:
    """Height / width of the shape's box."""
    if kind == "ellipse":
        ratio = rng.uniform(0.4, 0.7)
        return ratio if rng.random() < 0.5 else 1.0 / ratio
    if kind == "triangle":
        return rng.uniform(0.7, 1.3)
    return 1.0


def _smooth_noise(rng, height: int, width: int, cell: float, sigma: float) -> np.ndarray:
    """Smooth noise [3, height, width]: a coarse random grid, bilinearly upsampled."""
    grid_h, grid_w = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.standard_normal((3, grid_h, grid_w), dtype=np.float32) * sigma
    rows = (np.arange(height, dtype=np.float32) + 0.5) / cell
    cols = (np.arange(width, dtype=np.float32) + 0.5) / cell
    r0, c0 = rows.astype(np.int32), cols.astype(np.int32)
    fr = (rows - r0.astype(np.float32))[:, None]
    fc = cols - c0.astype(np.float32)
    # Separable: along columns on the small grid first ([3, grid_h, width]), then rows.
    # (Plain gathers, not matmul: BLAS threads stall when the cores are shared.)
    across = np.take(grid, c0, axis=2) * (1 - fc) + np.take(grid, c0 + 1, axis=2) * fc
    return np.take(across, r0, axis=1) * (1 - fr) + np.take(across, r0 + 1, axis=1) * fr


def _add_pixel_noise(rng, image: np.ndarray, sigma: float) -> None:
    """Adds uniform pixel noise of standard deviation sigma to image [3, H, W], in place.

    Drawn as bytes, the cheapest random numbers numpy makes.
    """
    noise = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    scale = np.float32(sigma / 73.6)  # 73.6 = std of uniform 0..255
    image += noise * scale
    image -= np.float32(127.5) * scale


def _background(rng, height: int, width: int, kind: str) -> np.ndarray:
    """float32 [3, height, width] in 0-255 (channels first: numpy is slow on a last axis of 3)."""
    base = rng.uniform(0, 255, size=3).astype(np.float32)[:, None, None]
    if kind == "flat":
        return np.broadcast_to(base, (3, height, width)).copy()
    other = rng.uniform(0, 255, size=3).astype(np.float32)[:, None, None]
    angle = rng.uniform(0, 2 * math.pi)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    image = base + (other - base) * rng.uniform(0.2, 0.8) * ramp
    image += _smooth_noise(rng, height, width, cell=rng.uniform(8, 48),
                             sigma=rng.uniform(5, 25))
    if rng.random() < 0.5:
        period, phase = rng.uniform(6, 40), rng.uniform(0, 2 * math.pi)
        angle = rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period
                      + phase)
        image += rng.uniform(8, 35) * wave
    return image


def _pick_colour(rng, avoid) -> np.ndarray:
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if all(np.linalg.norm(colour - a) >= _MIN_COLOUR_DISTANCE for a in avoid):
            break
    return colour


def _intersection(box, other) -> float:
    width = min(box[2], other[2]) - max(box[0], other[0])
    height = min(box[3], other[3]) - max(box[1], other[1])
    return max(width, 0.0) * max(height, 0.0)


def render_shapes_image(rng, height: int, width: int, classes, max_objects: int,
                        min_size: float, max_size: float, background: str):
    """One image: (uint8 [height, width, 3], boxes float32 [N, 4] xyxy, classes int32 [N])."""
    image = _background(rng, height, width, background)
    boxes, labels, colours = [], [], []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(classes)))
            kind = classes[label]
            size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
            aspect = _aspect(kind, rng)
            box_w, box_h = (size, size * aspect) if aspect <= 1 else (size / aspect, size)
            grow = max(1.0, min_size / min(box_w, box_h))  # keep the short side >= min_size
            box_w, box_h = box_w * grow, box_h * grow
            if box_w + 2 > width or box_h + 2 > height:
                continue
            cx = rng.uniform(box_w / 2 + 1, width - box_w / 2 - 1)
            cy = rng.uniform(box_h / 2 + 1, height - box_h / 2 - 1)
            variant = rng.uniform(0.18, 0.32) if kind == "cross" else rng.random()
            x0, y0 = int(cx - box_w / 2) - 1, int(cy - box_h / 2) - 1
            x1, y1 = int(cx + box_w / 2) + 2, int(cy + box_h / 2) + 2
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
            dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
            mask = _shape_mask(kind, dx, dy, box_w / 2, box_h / 2, variant)
            rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
            if not rows.any():
                continue
            top, bottom = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
            left, right = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
            box = (x0 + left, y0 + top, x0 + right, y0 + bottom)
            overlapped = [i for i, other in enumerate(boxes) if _intersection(box, other) > 0]
            if any(_intersection(box, boxes[i]) > _MAX_HIDDEN_FRACTION *
                   (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
                   for i in overlapped):
                continue
            window = image[:, y0:y1, x0:x1]
            avoid = [window[:, mask].mean(axis=1)] + [colours[i] for i in overlapped]
            colour = _pick_colour(rng, avoid)
            window[:, mask] = colour[:, None]
            boxes.append(box)
            labels.append(label)
            colours.append(colour)
            break
    if background == "textured":
        _add_pixel_noise(rng, image, rng.uniform(2, 8))
    image += 0.5  # then truncating to uint8 rounds
    np.clip(image, 0, 255, out=image)
    image = image.astype(np.uint8).transpose(1, 2, 0)
    return (image, np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int32))


def shapes(num_images: int = 500, size=256, seed: int = 0, *, max_objects: int = 6,
           min_size: float = 12, max_size: float | None = None, classes=SHAPE_CLASSES,
           background: str = "textured") -> DetectionDataset:
    """The built-in synthetic detection dataset (nothing is downloaded).

    Args:
        num_images: int > 0.
        size: the images' side (int) or (height, width), at least 32 px.
        seed: int; the same seed gives the same images and boxes.
        max_objects: each image has a uniform 0..max_objects shapes (fewer where placement
            fails 20 times).
        min_size, max_size: shape size range in px (the longer side of its box), drawn
            log-uniformly; max_size defaults to half the shorter image side.
        classes: subset of SHAPE_CLASSES, in the order that defines the class ids.
        background: "textured" (gradient, smooth noise, sometimes stripes, pixel noise) or
            "flat" (one colour, no noise; for tests).

    Returns:
        DetectionDataset with class_names == list(classes), images held in memory
        (num_images * height * width * 3 bytes), image_id str(index), boxes the tight boxes of
        the drawn shapes (see the module docstring).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or \
            num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    height, width = (size, size) if np.isscalar(size) else size
    if int(height) < 32 or int(width) < 32:
        raise ValueError(f"size must be at least 32 px, got {size!r}")
    height, width = int(height), int(width)
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {SHAPE_CLASSES}, got {classes}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if max_objects < 0:
        raise ValueError(f"max_objects must be >= 0, got {max_objects}")
    max_size = min(height, width) / 2 if max_size is None else float(max_size)
    if not 2 <= min_size <= max_size <= min(height, width) - 2:
        raise ValueError(f"need 2 <= min_size <= max_size <= min(size) - 2, got "
                         f"min_size={min_size}, max_size={max_size}, size={size}")

    images = np.empty((num_images, height, width, 3), np.uint8)
    records = []
    for index in range(num_images):
        rng = np.random.default_rng([int(seed), index])
        images[index], boxes, labels = render_shapes_image(
            rng, height, width, classes, max_objects, min_size, max_size, background)
        records.append(Record(image_id=str(index), path=None, height=height, width=width,
                              boxes=boxes, classes=labels,
                              is_crowd=np.zeros(len(labels), bool),
                              difficult=np.zeros(len(labels), bool)))
    return DetectionDataset(list(classes), records, images=images,
                            name=f"shapes(seed={seed})")
