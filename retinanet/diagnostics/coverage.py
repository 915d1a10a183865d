"""Anchor coverage: which ground-truth boxes the anchors can match (best-possible recall).

Works on the parsed records only (no image is decoded): every box is scaled to the training
size with the pipeline's own rule (`retinanet.data.pipeline.resize_scale_and_canvas`, as in
evaluation: no scale jitter or crop), the anchors are those of the padded canvas, and the IoU is
`retinanet.ops.box_iou`. A box is *covered* when some anchor has IoU >= ``positive_iou`` with it.
With low-quality matching every box also claims its best anchor (IoU > 0); whether a box then
gets a positive anchor is decided by `LabelEncoder.match` itself, per image, so that boxes that
compete for one anchor are counted as the matcher resolves them.

Size buckets are COCO's, by box area at the training size: small < 32², medium < 96², large.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2),
                ("large", 96.0**2, math.inf))
PERCENTILES = (5, 25, 50, 75, 95)
# Upper bound on B * N * A elements of one IoU batch (float32: 4 bytes each); the matcher
# holds a few tensors of this size at once.
MAX_BATCH_ELEMENTS = 2**23


def _records(data):
    """(records, class_names or None) from a DetectionDataset or a list of Records."""
    if hasattr(data, "records"):
        return list(data.records), list(data.class_names)
    return list(data), None


@dataclasses.dataclass
class ScaledBoxes:
    """Every box of a dataset at the training size (the evaluation-style resize).

    Attributes:
        boxes: float32 ``[N, 4]``, xyxy, absolute pixels of the resized image.
        classes: int32 ``[N]``.
        image_index: int ``[N]``, the index of each box's record.
        box_offsets: int ``[I + 1]``; the boxes of record ``i`` are
            ``boxes[box_offsets[i]:box_offsets[i + 1]]``.
        image_scale: float32 ``[I]``, the resize factor of each record.
        image_canvas: int ``[I, 2]``, the padded (height, width) the anchors cover.
    """

    boxes: np.ndarray
    classes: np.ndarray
    image_index: np.ndarray
    box_offsets: np.ndarray
    image_scale: np.ndarray
    image_canvas: np.ndarray

    @property
    def widths(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]).astype(np.float64)

    @property
    def heights(self) -> np.ndarray:
        return (self.boxes[:, 3] - self.boxes[:, 1]).astype(np.float64)

    @property
    def areas(self) -> np.ndarray:
        return self.widths * self.heights

    @property
    def canvas(self) -> np.ndarray:
        """int ``[N, 2]``, the canvas (height, width) of each box's image."""
        return self.image_canvas[self.image_index]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def training_sizes(records, image_size):
    """The resize factor and canvas of every record, by the pipeline's rule.

    Args:
        records: list of `retinanet.data.Record`.
        image_size: None, int S or (min_side, max_side), as the pipeline takes it.

    Returns:
        ``(scale float32 [I], canvas int [I, 2] as (height, width))``.
    """
    import tensorflow as tf

    from retinanet.data.pipeline import check_image_size, resize_scale_and_canvas

    image_size = check_image_size(image_size)
    cache = {}  # (height, width) -> (scale, canvas); datasets have few distinct sizes
    scales = np.zeros(len(records), np.float32)
    canvases = np.zeros((len(records), 2), np.int64)
    for index, record in enumerate(records):
        key = (int(record.height), int(record.width))
        if key not in cache:
            scale, canvas = resize_scale_and_canvas(
                tf.constant(key[0], tf.int32), tf.constant(key[1], tf.int32), image_size)
            cache[key] = (np.float32(scale.numpy()), canvas.numpy().astype(np.int64))
        scales[index], canvases[index] = cache[key]
    return scales, canvases


def scaled_boxes(records, image_size) -> ScaledBoxes:
    """The boxes of `records` at the training size; see `ScaledBoxes`.

    The boxes are multiplied by the image's scale in float32, as the pipeline does.
    """
    scales, canvases = training_sizes(records, image_size)
    counts = np.array([len(r) for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if offsets[-1]:
        boxes = np.concatenate([np.asarray(r.boxes, np.float32).reshape(-1, 4) * scales[i]
                                for i, r in enumerate(records)]).astype(np.float32)
        classes = np.concatenate([np.asarray(r.classes, np.int32).reshape(-1)
                                  for r in records])
    else:
        boxes, classes = np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
    return ScaledBoxes(boxes=boxes, classes=classes,
                       image_index=np.repeat(np.arange(len(records)), counts),
                       box_offsets=offsets, image_scale=scales, image_canvas=canvases)


@dataclasses.dataclass
class Coverage:
    """The result of `anchor_coverage`.

    Attributes:
        summary: the JSON-ready report (see `anchor_coverage`).
        scaled: the `ScaledBoxes` the numbers are about.
        best_iou: float32 ``[N]``, each box's highest IoU over all anchors.
        best_anchor: float32 ``[N, 4]``, xyxy at the training size, the anchor giving it.
        covered: bool ``[N]``, ``best_iou >= positive_iou``.
        matched_low_quality: bool ``[N]``, the box gets a positive anchor from
            `LabelEncoder.match` with low-quality matching on (None when not computed).
    """

    summary: dict
    scaled: ScaledBoxes
    best_iou: np.ndarray
    best_anchor: np.ndarray
    covered: np.ndarray
    matched_low_quality: np.ndarray

    def image(self, index: int) -> dict:
        """What `retinanet.visualization.draw_anchor_matches` needs for record ``index``.

        Returns:
            A dict: ``boxes`` ``[n, 4]`` and ``best_anchors`` ``[n, 4]``, xyxy at the training
            size (draw them on the image resized by ``scale``), ``covered`` and
            ``matched_low_quality`` bool ``[n]``, ``best_iou`` ``[n]``, ``scale`` and
            ``canvas`` (height, width).
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
        """Indices of up to ``count`` records with the most uncovered boxes (none: skipped)."""
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
        best_iou: float ``[N]``; covered, matched_low_quality: bool ``[N]``.
        areas: float ``[N]``, box areas at the training size; classes: int ``[N]``.
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
        image_size: the pipeline's ``image_size``: None, int S or (min_side, max_side).
        positive_iou, negative_iou: the matching thresholds (`LabelEncoder`).
        scaled: optional `ScaledBoxes` of ``data`` already computed for ``image_size``.
        progress: optional callable, called with the number of records done so far.
        low_quality: run `LabelEncoder.match` for ``recall_low_quality``; False skips it
            (about half the time) and reports ``recall_low_quality`` as None.

    Returns:
        A `Coverage`. Its ``summary`` dict holds ``num_images``, ``num_boxes``, ``recall``
        (share of boxes with an anchor at IoU >= positive_iou), ``recall_low_quality``
        (share with a positive anchor under `LabelEncoder.match` with low-quality matching),
        ``mean_best_iou``, ``best_iou_percentiles`` (p5 ... p95), ``by_size`` (small / medium
        / large) and ``by_class`` (each ``num_boxes``, ``recall``, ``recall_low_quality``,
        ``mean_best_iou``), ``positive_iou``, ``negative_iou``, ``image_size`` and
        ``anchors``. Shares over no boxes are None.
    """
    import tensorflow as tf

    from retinanet import ops
    from retinanet.matching import LabelEncoder

    records, class_names = _records(data)
    if scaled is None:
        scaled = scaled_boxes(records, image_size)
    # The matcher decides low-quality matches; the thresholds only set positive states here.
    encoder = LabelEncoder(anchor_generator, positive_iou=positive_iou,
                           negative_iou=negative_iou, allow_low_quality_matches=True)
    num_boxes = len(scaled)
    best_iou = np.zeros(num_boxes, np.float32)
    best_anchor = np.zeros((num_boxes, 4), np.float32)
    matched_low_quality = np.zeros(num_boxes, bool)
    counts = np.diff(scaled.box_offsets)

    groups = {}  # canvas -> record indices with boxes, fewest boxes first (less padding)
    for index in np.argsort(counts, kind="stable"):
        if counts[index]:
            groups.setdefault(tuple(scaled.image_canvas[index]), []).append(int(index))
    done = int((counts == 0).sum())
    if progress:
        progress(done)
    for (height, width), indices in groups.items():
        anchors = anchor_generator(int(height), int(width))
        num_anchors = int(anchors.shape[0])
        anchors_np = anchors.numpy()
        start = 0
        while start < len(indices):
            # Largest batch within the element budget; the last image has the most boxes.
            size = 1
            while (start + size < len(indices) and (size + 1) * num_anchors *
                   counts[indices[start + size]] <= MAX_BATCH_ELEMENTS):
                size += 1
            batch = indices[start:start + size]
            start += size
            most = int(counts[batch[-1]])
            boxes = np.full((len(batch), most, 4), -1.0, np.float32)
            classes = np.full((len(batch), most), -1, np.int32)
            for row, index in enumerate(batch):
                first, last = scaled.box_offsets[index], scaled.box_offsets[index + 1]
                boxes[row, :last - first] = scaled.boxes[first:last]
                classes[row, :last - first] = 0  # any valid class: matching ignores it
            iou = ops.box_iou(tf.constant(boxes), anchors)  # [B, N, A]
            batch_best = tf.reduce_max(iou, axis=-1).numpy()
            batch_argmax = tf.argmax(iou, axis=-1, output_type=tf.int32).numpy()
            if low_quality:
                matched_index, states = encoder.match(anchors, boxes, classes)
                matched_index, states = matched_index.numpy(), states.numpy()
            for row, index in enumerate(batch):
                first, last = scaled.box_offsets[index], scaled.box_offsets[index + 1]
                n = last - first
                best_iou[first:last] = batch_best[row, :n]
                best_anchor[first:last] = anchors_np[batch_argmax[row, :n]]
                if low_quality:
                    claimed = np.zeros(most + 1, bool)
                    claimed[matched_index[row][states[row] == 1]] = True
                    matched_low_quality[first:last] = claimed[:n]
            done += len(batch)
            if progress:
                progress(done)

    covered = best_iou >= np.float32(positive_iou)
    summary = {"num_images": len(records), "num_boxes": num_boxes}
    summary.update(summarize(best_iou, covered, matched_low_quality, scaled.areas,
                             scaled.classes, class_names))
    if not low_quality:
        _drop_low_quality(summary)
        matched_low_quality = None
    summary.update({"positive_iou": float(positive_iou), "negative_iou": float(negative_iou),
                    "image_size": _image_size_json(image_size),
                    "anchors": anchor_settings(anchor_generator)})
    return Coverage(summary=summary, scaled=scaled, best_iou=best_iou,
                    best_anchor=best_anchor, covered=covered,
                    matched_low_quality=matched_low_quality)


def _drop_low_quality(summary):
    for stats in [summary, *summary["by_size"].values(), *summary["by_class"].values()]:
        stats["recall_low_quality"] = None


def _image_size_json(image_size):
    if image_size is None or isinstance(image_size, (int, np.integer)):
        return None if image_size is None else int(image_size)
    return [int(v) for v in image_size]
