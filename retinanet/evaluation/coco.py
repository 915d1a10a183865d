"""COCO box mAP, computed by pycocotools (the reference implementation) from our inputs.

The work here is feeding pycocotools exactly right:

- boxes go in as `[x, y, w, h]` floats (xyxy minus corner, in float64);
- `area` of a ground truth is `w * h` of its box (we have no masks, so no segment area); it decides
  the small / medium / large bucket (< 32², < 96², larger);
- `iscrowd` flags go through, so crowd regions are ignored and matched the COCO way;
- category ids are `class + 1`, or the dataset's own `category_ids[class]`;
- image ids are the integers 1, 2, ... in the order images were added (arbitrary string ids are
  mapped; pycocotools breaks score ties across images in image-id order, so the order is kept);
- annotation ids start at 1 (pycocotools reads id 0 as "unmatched");
- maxDets are pycocotools' defaults, 1 / 10 / 100 (applied per image and category);
- the dataset has `info` and `licenses` keys, which some pycocotools versions require.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from retinanet.evaluation.inputs import ImageAccumulator

#: The 12 standard metrics, in `COCOeval.stats` order.
COCO_METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def _mean_valid(values: np.ndarray) -> float:
    """pycocotools' `_summarize` reduction: mean over entries > -1, or -1 when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


class COCOEvaluator(ImageAccumulator):
    """Accumulates images, then evaluates them with pycocotools' `COCOeval` (bbox).

    Args:
        class_names: optional list of class names, index = 0-based class. Fixes the number of
            classes (out-of-range classes in `update` raise) and names the `per_class` entries.
        category_ids: optional list, `category_ids[class]` = the dataset's category id (e.g. the 80
            COCO classes map to ids 1..90 with gaps). Default: `class + 1`.
        verbose: let pycocotools print its progress and summary table.

    `update(...)`: see `ImageAccumulator.update`; `gt_difficult` is accepted and ignored (COCO has
    no such notion), `gt_iscrowd` marks crowd regions.

    `result()` returns a dict:

        {"AP": float, "AP50": ..., "AP75", "APs", "APm", "APl",
         "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",          # COCOeval.stats, same order
         "per_class": {name: {the same 12 keys, "num_gt": int, "num_detections": int}}}

    Metrics are -1.0 where pycocotools gives -1 (no ground truth in that class / area range).
    `name` is `class_names[c]`, or `str(c)` without names. Without `class_names` (or
    `category_ids`), the classes are those seen in any ground truth or detection. A class's `num_gt`
    counts its non-crowd ground truths. After `result()`, `self.coco_eval` holds the `COCOeval`
    object (precision/recall arrays in `coco_eval.eval`).
    """

    def __init__(self, class_names=None, category_ids=None, verbose: bool = False):
        num_classes = None
        if category_ids is not None:
            category_ids = list(category_ids)
            integers = (int, np.integer)
            if not all(isinstance(c, integers) and not isinstance(c, bool) for c in category_ids):
                raise ValueError(f"category_ids must be integers, got {category_ids}")
            category_ids = [int(c) for c in category_ids]
            if len(set(category_ids)) != len(category_ids):
                raise ValueError(f"category_ids has duplicates: {category_ids}")
            num_classes = len(category_ids)
        self.category_ids = category_ids
        self.verbose = verbose
        self.coco_eval = None
        super().__init__(class_names=class_names, num_classes=num_classes)

    def _category_id(self, class_index: int) -> int:
        if self.category_ids is not None:
            return self.category_ids[class_index]
        return class_index + 1

    def coco_json(self) -> tuple[dict, list]:
        """The ground truth as a COCO dataset dict and the detections as a COCO results list.

        Returns:
            (dataset, results): `dataset` has `info`, `licenses`, `images` ({"id",
            "file_name"}; the file name is `str(image_id)`), `categories`, `annotations`
            ({"id", "image_id", "category_id", "bbox": [x, y, w, h], "area": w*h,
            "iscrowd": 0/1}); `results` is a list of {"image_id", "category_id", "bbox",
            "score"} as `COCO.loadRes` takes.
        """
        images, annotations, results = [], [], []
        for number, record in enumerate(self._records, start=1):
            images.append({"id": number, "file_name": str(record.image_id)})
            for box, cls, crowd in zip(record.gt_boxes, record.gt_classes, record.gt_iscrowd):
                x1, y1, x2, y2 = (float(v) for v in box)
                width, height = x2 - x1, y2 - y1
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": self._category_id(int(cls)),
                    "bbox": [x1, y1, width, height],
                    "area": width * height,
                    "iscrowd": int(crowd),
                })
            for box, score, cls in zip(record.det_boxes, record.det_scores, record.det_classes):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append({
                    "image_id": number,
                    "category_id": self._category_id(int(cls)),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                })
        categories = [
            {"id": self._category_id(c), "name": self._name(c), "supercategory": "none"}
            for c in self._class_indices()
        ]
        dataset = {
            "info": {"description": "retinanet.evaluation"},
            "licenses": [],
            "images": images,
            "categories": categories,
            "annotations": annotations,
        }
        return dataset, results

    def result(self) -> dict:
        """Runs COCOeval on everything added so far; see the class docstring for the layout."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        dataset, results = self.coco_json()
        quiet = contextlib.redirect_stdout(io.StringIO())
        with contextlib.nullcontext() if self.verbose else quiet:
            coco_gt = COCO()
            coco_gt.dataset = dataset
            coco_gt.createIndex()
            if results:
                coco_dt = coco_gt.loadRes(results)
            else:
                # loadRes([]) fails on anns[0]; an empty results set is what it would have built.
                coco_dt = COCO()
                coco_dt.dataset = {
                    "info": dict(dataset["info"]),
                    "images": list(dataset["images"]),
                    "categories": list(dataset["categories"]),
                    "annotations": [],
                }
                coco_dt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.coco_eval = coco_eval

        metrics = {name: float(value) for name, value in zip(COCO_METRIC_NAMES, coco_eval.stats)}
        metrics["per_class"] = self._per_class(coco_eval, dataset, results)
        return metrics

    def _per_class(self, coco_eval, dataset, results) -> dict:
        params = coco_eval.params
        precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
        recall = coco_eval.eval["recall"]  # [T, K, A, M]
        thresholds = list(np.round(params.iouThrs, 2))
        iou50, iou75 = thresholds.index(0.5), thresholds.index(0.75)
        area = {label: i for i, label in enumerate(params.areaRngLbl)}
        max_dets = list(params.maxDets)
        top = max_dets.index(100)
        catalogue = [int(c) for c in params.catIds]

        num_gt, num_det = {}, {}
        for ann in dataset["annotations"]:
            if not ann["iscrowd"]:
                num_gt[ann["category_id"]] = num_gt.get(ann["category_id"], 0) + 1
        for det in results:
            num_det[det["category_id"]] = num_det.get(det["category_id"], 0) + 1

        per_class = {}
        for class_index in self._class_indices():
            category = self._category_id(class_index)
            k = catalogue.index(category)
            p = precision[:, :, k]  # [T, R, A, M]
            r = recall[:, k]  # [T, A, M]
            per_class[self._name(class_index)] = {
                "AP": _mean_valid(p[:, :, area["all"], top]),
                "AP50": _mean_valid(p[iou50, :, area["all"], top]),
                "AP75": _mean_valid(p[iou75, :, area["all"], top]),
                "APs": _mean_valid(p[:, :, area["small"], top]),
                "APm": _mean_valid(p[:, :, area["medium"], top]),
                "APl": _mean_valid(p[:, :, area["large"], top]),
                "AR1": _mean_valid(r[:, area["all"], max_dets.index(1)]),
                "AR10": _mean_valid(r[:, area["all"], max_dets.index(10)]),
                "AR100": _mean_valid(r[:, area["all"], top]),
                "ARs": _mean_valid(r[:, area["small"], top]),
                "ARm": _mean_valid(r[:, area["medium"], top]),
                "ARl": _mean_valid(r[:, area["large"], top]),
                "num_gt": num_gt.get(category, 0),
                "num_detections": num_det.get(category, 0),
            }
        return per_class
