"""Drawing detections and ground truth: annotated images and galleries.

Boxes are `xyxy` in absolute pixels of the image they are drawn on (docs/CONTRACTS.md).

Why not `keras.visualization.draw_bounding_boxes` / `plot_bounding_box_gallery`: both draw with
OpenCV (`cv2`), which is not a dependency of this package (and not installed by
`pip install retinanet`); they raise ImportError without it. Pillow, which matplotlib already
depends on, draws boxes and labels onto the pixels, and matplotlib lays out the gallery.
"""

from __future__ import annotations

import os

import numpy as np

# Distinct colours (tab10 without grey), RGB; class c uses PALETTE[c % len(PALETTE)].
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207),
)
GREEN = (0, 200, 0)
RED = (230, 0, 0)


def _to_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_boxes(image, boxes, labels=None, colors=None, line_width: int | None = None,
               font_size: int | None = None) -> np.ndarray:
    """Draws boxes (and a label above each) onto a copy of an image.

    Args:
        image: uint8 or float 0-255 `[H, W, 3]` RGB.
        boxes: `[N, 4]` xyxy absolute pixels.
        labels: optional list of N str drawn on a filled tag at each box's top-left.
        colors: one RGB tuple for all, or a list of N tuples; default the first palette colour.
        line_width, font_size: default scale with the image size.

    Returns:
        uint8 `[H, W, 3]`.
    """
    from PIL import Image, ImageDraw

    image = _to_uint8(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = image.shape[:2]
    line_width = line_width or max(1, round(max(height, width) / 250))
    font_size = font_size or max(9, round(max(height, width) / 45))
    if colors is None or (len(colors) == 3 and np.isscalar(colors[0])):
        colors = [tuple(colors or PALETTE[0])] * len(boxes)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size) if labels is not None else None
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        color = tuple(int(c) for c in colors[index])
        draw.rectangle([x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=color,
                       width=line_width)
        if labels is not None and labels[index]:
            left, top, right, bottom = draw.textbbox((0, 0), labels[index], font=font)
            text_w, text_h = right - left, bottom - top
            ty = y1 - text_h - 3 if y1 - text_h - 3 >= 0 else y1  # inside when no room above
            tx = min(max(x1, 0), max(width - text_w - 4, 0))
            draw.rectangle([tx, ty, tx + text_w + 3, ty + text_h + 3], fill=color)
            draw.text((tx + 2 - left, ty + 1 - top), labels[index], fill=(255, 255, 255),
                      font=font)
    return np.asarray(canvas)


def detection_labels(classes, scores=None, class_names=None) -> list:
    """"name 0.93" per detection (or "name" without scores)."""
    labels = []
    for index, cls in enumerate(np.asarray(classes).reshape(-1)):
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) \
            else str(int(cls))
        labels.append(name if scores is None else f"{name} {float(scores[index]):.2f}")
    return labels


def draw_detections(image, boxes, classes, scores=None, class_names=None,
                    score_threshold: float = 0.0) -> np.ndarray:
    """Draws one image's detections, coloured by class and labelled with name and score.

    Args:
        image: `[H, W, 3]` RGB 0-255.
        boxes: `[D, 4]` xyxy pixels of this image; classes `[D]` (negative = padding);
            scores `[D]` or None (ground truth).
        class_names: optional names indexed by class.
        score_threshold: detections below it are not drawn.

    Returns:
        uint8 `[H, W, 3]`.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    keep = classes >= 0
    if scores is not None:
        scores = np.asarray(scores).reshape(-1)
        keep &= scores >= score_threshold
        scores = scores[keep]
    boxes, classes = boxes[keep], classes[keep]
    colors = [PALETTE[c % len(PALETTE)] for c in classes]
    return draw_boxes(image, boxes, detection_labels(classes, scores, class_names), colors)


def save_image(image, path: str):
    """Writes an RGB image; the format follows the extension (.png, .jpg, ...)."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(_to_uint8(image)).save(path)


def plot_gallery(images, detections, path: str, class_names=None, ground_truth=None,
                 titles=None, columns: int = 4, score_threshold: float = 0.3,
                 tile_inches: float = 3.2):
    """Saves a grid of images with their detections (and optionally ground truth) as one PNG.

    Args:
        images: list of `[H, W, 3]` RGB 0-255.
        detections: list of dicts with "boxes" `[D, 4]`, "classes" `[D]`, "scores" `[D]`
            in each image's pixels (docs/CONTRACTS.md, one image each, padding allowed).
        path: the PNG to write.
        class_names: names for the labels.
        ground_truth: optional list of dicts with "boxes", "classes": drawn thin and white
            under the detections.
        titles: optional str per image.
        columns: tiles per row.
        score_threshold: detections below it are not drawn.
    """
    # A bare Figure draws off-screen without touching pyplot's global backend, so notebooks
    # keep their inline plots.
    from matplotlib.figure import Figure

    if len(images) != len(detections):
        raise ValueError(f"plot_gallery got {len(images)} images but {len(detections)} "
                         "detection dicts")
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(tile_inches * columns, tile_inches * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for index, (image, found) in enumerate(zip(images, detections)):
        tile = _to_uint8(image)
        # Small images are enlarged (nearest neighbour) before drawing, so that the labels
        # stay legible at the tile's resolution.
        zoom = max(1, int(round(tile_inches * 100 / max(tile.shape[:2]))))
        if zoom > 1:
            tile = np.repeat(np.repeat(tile, zoom, axis=0), zoom, axis=1)
        if ground_truth is not None:
            truth = ground_truth[index]
            valid = np.asarray(truth["classes"]).reshape(-1) >= 0
            tile = draw_boxes(tile, np.asarray(truth["boxes"]).reshape(-1, 4)[valid] * zoom,
                              colors=(255, 255, 255), line_width=1)
        tile = draw_detections(tile, np.asarray(found["boxes"]) * zoom, found["classes"],
                               found.get("scores"), class_names, score_threshold)
        axis = axes.ravel()[index]
        axis.imshow(tile)
        if titles is not None:
            axis.set_title(titles[index], fontsize=9)
    legend = f"detections with score >= {score_threshold:g}, coloured by class"
    if ground_truth is not None:
        legend += "; ground truth in white"
    figure.suptitle(legend, fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def draw_anchor_matches(image, boxes, matched, best_anchors=None) -> np.ndarray:
    """Ground-truth boxes in green where a positive anchor matches them, red where none does.

    Args:
        image: `[H, W, 3]` RGB 0-255.
        boxes: `[N, 4]` xyxy pixels.
        matched: bool `[N]`.
        best_anchors: optional `[N, 4]` xyxy: each box's highest-IoU anchor, drawn thin in
            yellow, which shows why a small box is missed.
    """
    matched = np.asarray(matched, bool).reshape(-1)
    image = _to_uint8(image)
    if best_anchors is not None and len(best_anchors):
        image = draw_boxes(image, best_anchors, colors=(240, 220, 0), line_width=1)
    return draw_boxes(image, boxes, colors=[GREEN if m else RED for m in matched])
