"""Anchor coverage: which ground-truth boxes the anchors can match (best-possible recall).

Works on the parsed records only (no image is decoded): every box is scaled to the training
size with the pipeline's own rule (`retinanet.preprocess.resize_scale_and_canvas`, as in
evaluation: no scale jitter or crop), the anchors are those of the padded canvas, and the IoU is
`retinanet.ops.box_iou`. A box is *covered* when some anchor has IoU >= `positive_iou` with it.
With low-quality matching every box also claims its best anchor (IoU > 0); whether a box then
gets a positive anchor is decided by `LabelEncoder.match` itself, per image, so that boxes that
compete for one anchor are counted as the matcher resolves them.

Size buckets are COCO's, by box area at the training size: small < 32², medium < 96², large.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from retinanet.diagnostics.scaling import ScaledBoxes, records_and_names, scaled_boxes

SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2),
                ("large", 96.0**2, math.inf))
PERCENTILES = (5, 25, 50, 75, 95)


# Memory bounds, whatever a label file holds: the boxes of one image matched at most (the rest
# are counted, not measured), the elements of one box x anchor IoU matrix (an image's boxes
# are matched in chunks under it), and the boxes of one closed-form pass.
MAX_MATCHED_BOXES_PER_IMAGE = 10_000
MAX_IOU_ELEMENTS = 2**23
ANALYTIC_CHUNK = 2**15


def analytic_best_iou(boxes, canvas, min_level, max_level, anchor_sizes, scales,
                      aspect_ratios) -> np.ndarray:
    """Each box's best IoU against the anchors of every candidate anchor size, in closed form.

    The best anchor of one shape (level, scale, ratio) for a box is the one whose centre is
    nearest the box centre on each axis: the overlap of two intervals only shrinks as their
    centres move apart, and the IoU grows with the overlap. So no anchor tensor is needed.
    The reported IoUs come from `ops.box_iou`; this formula serves the anchor search
    (`fitting`) and bounds which anchors `anchor_coverage` must look at.

    Args:
        boxes: float `[N, 4]`, xyxy, absolute pixels at the training size.
        canvas: int `[N, 2]`, the (height, width) of each box's padded canvas.
        min_level, max_level: the pyramid levels (stride `2**level`).
        anchor_sizes: float `[G]`, candidate `anchor_size` values.
        scales, aspect_ratios: float sequences, as `AnchorGenerator` takes them.

    Returns:
        float64 `[N, G]`: the highest IoU of each box over all anchors of each generator
        `AnchorGenerator(min_level, max_level, anchor_sizes[g], scales, aspect_ratios)`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    canvas = np.asarray(canvas, np.int64).reshape(-1, 2)
    if boxes.shape[0] > ANALYTIC_CHUNK:  # bounded temporaries, whatever the box count
        return np.concatenate([
            analytic_best_iou(boxes[i:i + ANALYTIC_CHUNK], canvas[i:i + ANALYTIC_CHUNK],
                              min_level, max_level, anchor_sizes, scales, aspect_ratios)
            for i in range(0, boxes.shape[0], ANALYTIC_CHUNK)])
    anchor_sizes = np.asarray(anchor_sizes, np.float64).reshape(-1)
    scales = np.asarray(scales, np.float64)
    ratios = np.asarray(aspect_ratios, np.float64)
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))  # [N, 1, 1]
    area = (x2 - x1) * (y2 - y1)
    # [G, S] anchor widths and heights before the level's stride.
    sides = anchor_sizes[:, None] * np.outer(scales, np.ones_like(ratios)).reshape(1, -1)
    root = np.sqrt(np.outer(np.ones_like(scales), ratios)).reshape(1, -1)
    unit_w, unit_h = sides / root, sides * root
    best = np.zeros((boxes.shape[0], anchor_sizes.size))
    for level in range(min_level, max_level + 1):
        stride = float(2**level)
        cols = (canvas[:, 1] + 2**level - 1) // 2**level
        rows = (canvas[:, 0] + 2**level - 1) // 2**level
        # The nearest anchor centre on each axis, clamped to the grid.
        cx = (np.clip(np.floor((x1 + x2)[:, 0, 0] / 2 / stride), 0, cols - 1) + 0.5) * stride
        cy = (np.clip(np.floor((y1 + y2)[:, 0, 0] / 2 / stride), 0, rows - 1) + 0.5) * stride
        half_w, half_h = unit_w * stride / 2, unit_h * stride / 2  # [G, S]
        cx, cy = cx[:, None, None], cy[:, None, None]
        overlap_w = np.minimum(x2, cx + half_w) - np.maximum(x1, cx - half_w)
        overlap_h = np.minimum(y2, cy + half_h) - np.maximum(y1, cy - half_h)
        inter = np.maximum(overlap_w, 0.0) * np.maximum(overlap_h, 0.0)
        iou = inter / np.maximum(area + 4 * half_w * half_h - inter, 1e-12)
        best = np.maximum(best, iou.max(axis=-1))
    return best


@dataclasses.dataclass
class Coverage:
    """The result of `anchor_coverage`.

    Attributes:
        summary: the JSON-ready report (see `anchor_coverage`).
        scaled: the `ScaledBoxes` the numbers are about.
        best_iou: float32 `[N]`, each box's highest IoU over all anchors.
        best_anchor: float32 `[N, 4]`, xyxy at the training size, the anchor giving it.
        covered: bool `[N]`, `best_iou >= positive_iou`.
        matched_low_quality: bool `[N]`, the box gets a positive anchor from
            `LabelEncoder.match` with low-quality matching on (None when not computed).
    """

    summary: dict
    scaled: ScaledBoxes
    best_iou: np.ndarray
    best_anchor: np.ndarray
    covered: np.ndarray
    matched_low_quality: np.ndarray

    def image(self, index: int) -> dict:
        """What `retinanet.visualization.draw_anchor_matches` needs for record `index`.

        Returns:
            A dict: `boxes` `[n, 4]` and `best_anchors` `[n, 4]`, xyxy at the training
            size (draw them on the image resized by `scale`), `covered` and
            `matched_low_quality` bool `[n]`, `best_iou` `[n]`, `scale` and
            `canvas` (height, width).
        """
        start, end = self.scaled.box_offsets[index], self.scaled.box_offsets[index + 1]
        return {
            "boxes": self.scaled.boxes[start:end], "best_anchors": self.best_anchor[start:end],
            "covered": self.covered[start:end],
            "matched_low_quality": self.matched_low_quality[start:end],
            "best_iou": self.best_iou[start:end],
            "scale": float(self.scaled.image_scale[index]),
            "canvas": tuple(int(v) for v in self.scaled.image_canvas[index]),
        }

    def worst_images(self, count: int) -> list:
        """Indices of up to `count` records with the most uncovered boxes (none: skipped)."""
        missed = np.bincount(self.scaled.image_index[~self.covered],
                             minlength=len(self.scaled.image_scale))
        order = np.argsort(-missed, kind="stable")
        return [int(i) for i in order[:count] if missed[i] > 0]


def share(values) -> float | None:
    """The mean of a bool or float array as a float, or None when it is empty (never NaN)."""
    values = np.asarray(values)
    return float(values.mean()) if values.size else None


def iou_stats(best_iou, covered, matched_low_quality) -> dict:
    """num_boxes, recall, recall_low_quality, mean_best_iou of a subset of boxes."""
    return {"num_boxes": int(np.asarray(best_iou).size), "recall": share(covered),
            "recall_low_quality": share(matched_low_quality), "mean_best_iou": share(best_iou)}


def summarize(best_iou, covered, matched_low_quality, areas, classes, class_names=None) -> dict:
    """Overall, per-size-bucket and per-class statistics; empty subsets give None, not NaN.

    Args:
        best_iou: float `[N]`; covered, matched_low_quality: bool `[N]`.
        areas: float `[N]`, box areas at the training size; classes: int `[N]`.
        class_names: names of the class ids (default the ids as str).
    """
    best_iou = np.asarray(best_iou, np.float64)
    summary = iou_stats(best_iou, covered, matched_low_quality)
    percentiles = (np.percentile(best_iou, PERCENTILES) if best_iou.size
                   else [None] * len(PERCENTILES))
    summary["best_iou_percentiles"] = {
        f"p{p}": None if v is None else float(v) for p, v in zip(PERCENTILES, percentiles)}
    summary["by_size"] = {}
    for name, low, high in SIZE_BUCKETS:
        mask = (areas >= low) & (areas < high)
        summary["by_size"][name] = iou_stats(best_iou[mask], covered[mask],
                                             matched_low_quality[mask])
    if class_names is None:
        class_names = [str(c) for c in range(int(classes.max()) + 1)] if classes.size else []
    summary["by_class"] = {}
    for class_id, name in enumerate(class_names):
        mask = classes == class_id
        summary["by_class"][name] = iou_stats(best_iou[mask], covered[mask],
                                              matched_low_quality[mask])
    return summary


def anchor_settings(anchor_generator) -> dict:
    """The anchor generator's settings as a JSON-ready dict."""
    return {"min_level": anchor_generator.min_level, "max_level": anchor_generator.max_level,
            "anchor_size": anchor_generator.anchor_size,
            "scales": list(anchor_generator.scales),
            "aspect_ratios": list(anchor_generator.aspect_ratios),
            "num_anchors_per_location": anchor_generator.num_anchors_per_location}


def anchor_coverage(data, anchor_generator, image_size, positive_iou=0.5, negative_iou=0.4,
                    *, scaled=None, progress=None, low_quality=True) -> Coverage:
    """Best-possible recall of the anchors over a dataset's ground-truth boxes.

    Args:
        data: a `DetectionDataset`, or a list of `Record` (then classes are named by id).
        anchor_generator: the `AnchorGenerator` to measure.
        image_size: the pipeline's `image_size`: None, int S or (min_side, max_side).
        positive_iou, negative_iou: the matching thresholds (`LabelEncoder`).
        scaled: optional `ScaledBoxes` of `data` already computed for `image_size`.
        progress: optional callable, called with the number of records done so far.
        low_quality: run `LabelEncoder.match` for `recall_low_quality`; False skips it
            (about half the time) and reports `recall_low_quality` as None.

    Returns:
        A `Coverage`. Its `summary` dict holds `num_images`, `num_boxes`, `recall`
        (share of boxes with an anchor at IoU >= positive_iou), `recall_low_quality`
        (share with a positive anchor under `LabelEncoder.match` with low-quality matching),
        `mean_best_iou`, `best_iou_percentiles` (p5 ... p95), `by_size` (small / medium
        / large) and `by_class` (each `num_boxes`, `recall`, `recall_low_quality`,
        `mean_best_iou`), `positive_iou`, `negative_iou`, `image_size` and
        `anchors`. Shares over no boxes are None. An image with more than
        `MAX_MATCHED_BOXES_PER_IMAGE` boxes has only that many measured: `unmeasured`
        holds `boxes` (the count left out of every figure) and `images` (their ids).
        An image whose boxes x anchors exceed `MAX_IOU_ELEMENTS` is matched in chunks of
        boxes: best IoUs stay exact; for `recall_low_quality` boxes of different chunks do
        not compete for anchors.
    """
    import tensorflow as tf

    from retinanet import ops
    from retinanet.matching import IoUMatcher

    records, class_names = records_and_names(data)
    if scaled is None:
        scaled = scaled_boxes(records, image_size, anchor_generator.stride_multiple)
    # The matcher decides low-quality matches; the thresholds only set positive states here.
    matcher = IoUMatcher(positive_iou, negative_iou, allow_low_quality_matches=True)
    num_boxes = len(scaled)
    best_iou = np.zeros(num_boxes, np.float32)
    best_anchor = np.zeros((num_boxes, 4), np.float32)
    matched_low_quality = np.zeros(num_boxes, bool)

    if low_quality:
        match = matcher
    else:  # no matcher: the states are not needed
        def match(anchors, boxes, classes):
            return tf.zeros([1, tf.shape(anchors)[0]], tf.int32), tf.zeros(
                [1, tf.shape(anchors)[0]], tf.int32)

    @tf.function(autograph=False,  # plain tensor ops: no conversion needed
                 input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None, 4], tf.float32)])
    def match_image(anchors, boxes):
        iou = ops.box_iou(boxes, anchors)  # [N, A]
        matched_index, states = match(anchors, boxes[None],
                                      tf.zeros(tf.shape(boxes)[:1], tf.int32)[None])
        return (tf.reduce_max(iou, axis=1), tf.argmax(iou, axis=1, output_type=tf.int32),
                matched_index[0], states[0])

    # Lower bounds of what each box needs (see `_relevant_anchors`); the margin covers the
    # float32 rounding of `ops.box_iou`.
    if getattr(anchor_generator, "convention", "centered") == "centered":
        thresholds = np.minimum(analytic_best_iou(
            scaled.boxes, scaled.canvas, anchor_generator.min_level, anchor_generator.max_level,
            [anchor_generator.anchor_size], anchor_generator.scales,
            anchor_generator.aspect_ratios)[:, 0], positive_iou) - 1e-3
    else:  # the closed form assumes centred anchors: keep every anchor near each box
        thresholds = np.full(len(scaled.boxes), -1.0)
    measured = np.ones(num_boxes, bool)
    capped_images = []
    layouts = {}  # canvas -> (anchors [A, 4] numpy, per-level grid layout)
    for index in range(len(records)):
        first, end = scaled.box_offsets[index], scaled.box_offsets[index + 1]
        last = min(end, first + MAX_MATCHED_BOXES_PER_IMAGE)
        if end > last:
            measured[last:end] = False
            capped_images.append(records[index].image_id)
        if last > first:
            canvas = tuple(int(v) for v in scaled.image_canvas[index])
            if canvas not in layouts:
                layouts[canvas] = _anchor_layout(anchor_generator, *canvas)
            anchors, layout = layouts[canvas]
            subset = _relevant_anchors(scaled.boxes[first:last], thresholds[first:last],
                                       layout, len(anchors))
            chunk = max(1, MAX_IOU_ELEMENTS // subset.size)
            for start in range(first, last, chunk):
                stop = min(start + chunk, last)
                best, argmax, matched_index, states = (t.numpy() for t in match_image(
                    tf.constant(anchors[subset]), tf.constant(scaled.boxes[start:stop])))
                best_iou[start:stop] = best
                best_anchor[start:stop] = anchors[subset[argmax]]
                if low_quality:
                    claimed = np.zeros(stop - start + 1, bool)
                    claimed[matched_index[states == 1]] = True
                    matched_low_quality[start:stop] = claimed[:-1]
        if progress and (index % 16 == 15 or index == len(records) - 1):
            progress(index + 1)

    covered = best_iou >= np.float32(positive_iou)
    summary = {"num_images": len(records), "num_boxes": num_boxes}
    summary.update(summarize(best_iou[measured], covered[measured],
                             matched_low_quality[measured], scaled.areas[measured],
                             scaled.classes[measured], class_names))
    summary["num_boxes"] = num_boxes  # every box; the figures are over the measured ones
    summary["unmeasured"] = {"boxes": int(num_boxes - measured.sum()), "images": capped_images}
    if not low_quality:
        _drop_low_quality(summary)
        matched_low_quality = None
    summary.update({"positive_iou": float(positive_iou), "negative_iou": float(negative_iou),
                    "image_size": _image_size_json(image_size),
                    "anchors": anchor_settings(anchor_generator)})
    return Coverage(summary=summary, scaled=scaled, best_iou=best_iou,
                    best_anchor=best_anchor, covered=covered,
                    matched_low_quality=matched_low_quality)


def _anchor_layout(anchor_generator, height, width):
    """The anchors of a canvas as numpy `[A, 4]` and, per level, (first index, rows, cols,
    stride, half widths [S], half heights [S], areas [S]) of its S anchors per location."""
    anchors = anchor_generator(height, width).numpy()
    layout, first = [], 0
    per_location = anchor_generator.num_anchors_per_location
    for level in anchor_generator.levels:
        rows = anchor_generator.feature_size(height, level)
        cols = anchor_generator.feature_size(width, level)
        shapes = anchors[first:first + per_location].astype(np.float64)  # location (0, 0)
        widths, heights = shapes[:, 2] - shapes[:, 0], shapes[:, 3] - shapes[:, 1]
        layout.append((first, rows, cols, 2.0**level, widths / 2, heights / 2,
                       widths * heights))
        first += rows * cols * per_location
    return anchors, layout


def _relevant_anchors(boxes, thresholds, layout, num_anchors):
    """Sorted indices of a superset of the anchors with IoU >= `thresholds[j]` with some box.

    Args:
        boxes: float `[N, 4]`, xyxy at the training size.
        thresholds: float `[N]`, a little under `min(positive_iou, best IoU of box j)`.

    Why this is exact: an anchor whose IoU with every box j is under both positive_iou and
    j's best IoU is negative or ignored and is no box's best anchor, so `LabelEncoder.match`
    gives every other anchor the same state and box on this subset as on all anchors (argmax
    ties keep their order: the subset is sorted). An anchor can only reach IoU t with a box
    if their areas are within a factor t of each other and they overlap, which bounds the
    shapes and the grid window per level. The IoU tensors shrink by orders of magnitude.
    """
    mask = np.zeros(num_anchors, bool)
    boxes = np.asarray(boxes, np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for first, rows, cols, stride, half_w, half_h, shape_areas in layout:
        grid = mask[first:first + rows * cols * half_w.size].reshape(rows, cols, -1)
        ratio = (np.minimum(areas[:, None], shape_areas[None]) /
                 np.maximum(np.maximum(areas[:, None], shape_areas[None]), 1e-12))
        usable = ratio >= thresholds[:, None]  # [N, S]
        for (x1, y1, x2, y2), shapes in zip(boxes, usable):
            if not shapes.any():
                continue
            reach_w, reach_h = half_w[shapes].max(), half_h[shapes].max()
            # Centres (k + 0.5) * stride that overlap the box, one cell to spare.
            c0 = int(np.floor((x1 - reach_w) / stride - 0.5)) - 1
            c1 = int(np.ceil((x2 + reach_w) / stride - 0.5)) + 2
            r0 = int(np.floor((y1 - reach_h) / stride - 0.5)) - 1
            r1 = int(np.ceil((y2 + reach_h) / stride - 0.5)) + 2
            window = grid[max(r0, 0):min(r1, rows), max(c0, 0):min(c1, cols)]
            window[..., shapes] = True
    mask[0] = True  # never an empty set
    return np.flatnonzero(mask)


def _drop_low_quality(summary):
    for stats in [summary, *summary["by_size"].values(), *summary["by_class"].values()]:
        stats["recall_low_quality"] = None


def _image_size_json(image_size):
    if image_size is None or isinstance(image_size, (int, np.integer)):
        return None if image_size is None else int(image_size)
    return [int(v) for v in image_size]
