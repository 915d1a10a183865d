"""Running a detector over an evaluation dataset and feeding both evaluators."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np

from retinanet.evaluation.analysis import ErrorAnalyzer
from retinanet.evaluation.coco import COCO_METRIC_NAMES, COCOEvaluator
from retinanet.evaluation.voc import VOCEvaluator
from retinanet.model.postprocess import unpad_detections


def _numpy(value) -> np.ndarray:
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _dataset_length(dataset) -> int | None:
    """Number of batches when tf.data knows it; None when unknown; raises when infinite."""
    if not hasattr(dataset, "cardinality"):
        try:
            return len(dataset)
        except TypeError:
            return None
    cardinality = int(dataset.cardinality())
    if cardinality == -1:  # tf.data.INFINITE_CARDINALITY
        return math.inf
    return cardinality if cardinality >= 0 else None


def split_batch(
    targets: dict, detections: dict, image_size=None, first_index: int = 0
) -> list[dict]:
    """Turns one evaluation batch and the model's detections into per-image `update` arguments.

    Boxes are divided by `targets["scale"]` and clipped to `targets["original_size"]`, so both gt
    and detections are in original-image pixels. Gt padding (class -1) and detections past
    `num_detections` are dropped.

    Args:
        targets: the batch's targets (docs/CONTRACTS.md): "boxes" [B, M, 4] xyxy in input pixels,
            "classes" [B, M] padded with -1, and optionally "image_id" [B] (default: running image
            number as str), "scale" [B] or [B, 2] as (y, x) (default 1), "original_size" [B, 2]
            as (height, width)
            (default: `image_size / scale`), "is_crowd" / "difficult" bool [B, M].
        detections: the model's output: "boxes" [B, D, 4] xyxy in input pixels, "scores" [B, D],
            "classes" [B, D], optionally "num_detections" [B] (default: count of classes >= 0).
        image_size: (height, width) of the input images, used when "original_size" is absent.
        first_index: number of images before this batch, for default image ids.

    Returns:
        A list of B dicts with the keyword arguments of `update`.
    """
    if not isinstance(targets, dict) or not isinstance(detections, dict):
        raise ValueError(
            "evaluation expects targets and detections as dicts (docs/CONTRACTS.md), got "
            f"{type(targets).__name__} and {type(detections).__name__}"
        )
    for key in ("boxes", "classes"):
        if key not in targets:
            raise ValueError(f"targets is missing {key!r}; got keys {sorted(targets)}")
    for key in ("boxes", "scores", "classes"):
        if key not in detections:
            raise ValueError(f"detections is missing {key!r}; got keys {sorted(detections)}")
    gt_boxes = _numpy(targets["boxes"]).astype(np.float64)
    gt_classes = _numpy(targets["classes"])
    batch_size = gt_boxes.shape[0]
    found = unpad_detections({key: _numpy(value) for key, value in detections.items()})
    if len(found) != batch_size:
        raise ValueError(
            f"detections['boxes'] has batch size {len(found)} but targets has {batch_size}"
        )
    scales = np.ones((batch_size, 2))  # (y, x)
    if "scale" in targets:
        scales[:] = _numpy(targets["scale"]).reshape(batch_size, -1).astype(np.float64)
    if np.any(~np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError(f"targets['scale'] must be positive, got {scales.tolist()}")
    if "original_size" in targets:
        sizes = _numpy(targets["original_size"]).reshape(batch_size, 2).astype(np.float64)
    elif image_size is not None:
        sizes = np.asarray(image_size, np.float64)[None, :] / scales
    else:
        sizes = np.full((batch_size, 2), np.inf)
    image_ids = _numpy(targets["image_id"]).reshape(-1) if "image_id" in targets else None
    is_crowd = _numpy(targets["is_crowd"]).astype(bool) if "is_crowd" in targets else None
    difficult = _numpy(targets["difficult"]).astype(bool) if "difficult" in targets else None

    def to_original(boxes, index):
        height, width = sizes[index]
        boxes = boxes / scales[index][[1, 0, 1, 0]]
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, height)
        return boxes

    images = []
    for index in range(batch_size):
        keep_gt = gt_classes[index] >= 0
        image_id = image_ids[index] if image_ids is not None else str(first_index + index)
        images.append({
            "image_id": image_id,
            "gt_boxes": to_original(gt_boxes[index][keep_gt], index),
            "gt_classes": gt_classes[index][keep_gt],
            "gt_iscrowd": is_crowd[index][keep_gt] if is_crowd is not None else None,
            "gt_difficult": difficult[index][keep_gt] if difficult is not None else None,
            "det_boxes": to_original(found[index]["boxes"].astype(np.float64), index),
            "det_scores": found[index]["scores"],
            "det_classes": found[index]["classes"],
        })
    return images


def detect_batch(model, images, targets) -> dict:
    """`model.predict_on_batch` of an evaluation batch; a Keras model clips each image's
    boxes to its resized image (`targets["image_size"]`) rather than the batch's canvas,
    before NMS, as torchvision does."""
    if isinstance(model, keras.Model) and "image_size" in targets:
        return model.predict_on_batch({"images": images, "image_sizes": targets["image_size"]})
    return model.predict_on_batch(images)


def evaluate(
    model,
    dataset,
    class_names=None,
    *,
    category_ids=None,
    coco: bool = True,
    voc: bool = True,
    voc_iou_threshold: float = 0.5,
    voc_method: str = "all_points",
    analysis: bool = False,
    steps: int | None = None,
    verbose: int = 1,
) -> dict:
    """Runs `model.predict_on_batch` over an evaluation dataset and scores the detections.

    Args:
        model: anything with `predict_on_batch(images)` returning the detection dict of
            docs/CONTRACTS.md ("boxes" [B, D, 4] xyxy input pixels, "scores", "classes",
            "num_detections").
        dataset: iterable of `(images, targets)` evaluation batches (docs/CONTRACTS.md), e.g. a
            finite `tf.data.Dataset`. See `split_batch` for the target keys used.
        class_names: optional class names (index = 0-based class).
        category_ids: optional dataset category ids for COCO (see `COCOEvaluator`).
        coco, voc: which evaluators to run.
        voc_iou_threshold, voc_method: passed to `VOCEvaluator`.
        analysis: also run the `ErrorAnalyzer` (TIDE errors, confusion matrix, best-F1
            thresholds, worst errors) into the result's "analysis".
        steps: evaluate at most this many batches (required for an infinite dataset).
        verbose: 0 silent, 1 progress bar, 2 one line at the end (as `keras.utils.Progbar`).

    Returns:
        `{"coco": COCOEvaluator.result(), "voc": VOCEvaluator.result(),
        "analysis": ErrorAnalyzer.result()}`, each key only when asked for. `flatten_metrics`
        turns it into scalar logs.
    """
    if not (coco or voc or analysis):
        raise ValueError("evaluate needs at least one of coco, voc or analysis")
    evaluators = {}
    if coco:
        evaluators["coco"] = COCOEvaluator(class_names=class_names, category_ids=category_ids)
    if voc:
        evaluators["voc"] = VOCEvaluator(
            iou_threshold=voc_iou_threshold, method=voc_method, class_names=class_names
        )
    if analysis:
        evaluators["analysis"] = ErrorAnalyzer(class_names=class_names)
    length = _dataset_length(dataset)
    if steps is not None:
        length = steps if length is None else min(steps, length)
    if length == math.inf:
        raise ValueError("dataset is infinite (repeated?); pass steps or a finite dataset")
    progbar = keras.utils.Progbar(length, verbose=verbose, unit_name="batch")
    num_images, done = 0, 0
    for done, batch in enumerate(itertools.islice(dataset, steps), start=1):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("dataset must yield (images, targets) batches (docs/CONTRACTS.md)")
        images, targets = batch[0], batch[1]
        detections = detect_batch(model, images, targets)
        image_size = tuple(np.shape(images)[1:3])
        for kwargs in split_batch(targets, detections, image_size, first_index=num_images):
            for evaluator in evaluators.values():
                evaluator.update(**kwargs)
            num_images += 1
        progbar.update(done)
    if length is None or done < length:
        progbar.update(done, finalize=True)
    return {name: evaluator.result() for name, evaluator in evaluators.items()}


def flatten_metrics(results: dict, prefix: str = "", per_class: bool = False) -> dict:
    """Scalar metrics from `evaluate`'s result, for Keras logs, TensorBoard or a CSV row.

    Args:
        results: `{"coco": ..., "voc": ...}` as returned by `evaluate` (either key optional).
        prefix: prepended to every key, e.g. "val_".
        per_class: also add `{prefix}AP/{class}` (COCO) and `{prefix}AP_voc/{class}` (VOC).

    Returns:
        `{prefix + "AP": ..., "AP50", ..., "ARl"}` (the 12 COCO metrics) and `{prefix}mAP_voc`,
        as Python floats.
    """
    flat = {}
    if "coco" in results:
        for name in COCO_METRIC_NAMES:
            flat[prefix + name] = float(results["coco"][name])
        if per_class:
            for name, entry in results["coco"]["per_class"].items():
                flat[f"{prefix}AP/{name}"] = float(entry["AP"])
    if "voc" in results:
        flat[prefix + "mAP_voc"] = float(results["voc"]["mAP"])
        if per_class:
            for name, entry in results["voc"]["per_class"].items():
                flat[f"{prefix}AP_voc/{name}"] = float(entry["AP"])
    return flat
