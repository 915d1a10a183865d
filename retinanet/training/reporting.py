"""The final evaluation of a run: metrics, error analysis, reports, and its summary lines."""

from __future__ import annotations

import os


def evaluate_and_report(model, config, batches, output_dir: str, class_names, category_ids=None,
                        verbose: int = 1) -> dict:
    """The evaluation of a finished run: metrics, error analysis, reports and the gallery.

    Writes metrics.json, report.md, per_class.csv, pr_curves.png, the analysis files and
    errors.png (the worst false positives and missed objects) into `output_dir`.
    """
    from retinanet.evaluation import evaluate, write_report
    from retinanet.evaluation.analysis_report import write_error_gallery

    results = evaluate(model, batches, class_names=class_names, category_ids=category_ids,
                       verbose=verbose, voc_iou_threshold=config.eval.voc_iou_threshold,
                       voc_method=config.eval.voc_method, analysis=True)
    write_report(results, output_dir, print_table=verbose > 0)
    write_error_gallery(results["analysis"], batches, os.path.join(output_dir, "errors.png"),
                        class_names)
    summary(results, output_dir)
    return results


def summary(results, output_dir):
    """Prints the operating point, then the headline metrics, one line each."""
    point = operating_point(results.get("analysis"))
    if point:
        print(point, flush=True)
    coco, voc = results.get("coco", {}), results.get("voc", {})
    print(f"AP {coco.get('AP', float('nan')):.3f}  AP50 {coco.get('AP50', float('nan')):.3f}  "
          f"AP75 {coco.get('AP75', float('nan')):.3f}  VOC mAP {voc.get('mAP', float('nan')):.3f}"
          " (over every detection with a score of at least the decoder's threshold)"
          f"  -> {os.path.join(output_dir, 'metrics.json')}", flush=True)


def operating_point(analysis) -> str:
    """"Operating point: ..." from the error analysis's best-F1 thresholds ("" without)."""
    per_class = {name: entry for name, entry in ((analysis or {}).get("per_class") or {}).items()
                 if entry.get("threshold") is not None}
    if not per_class:
        return ""
    hint = ("deploy at it: `retinanet export --per_class_thresholds=best_f1`; per class in "
            "analysis.md")
    if len(per_class) == 1:
        ((name, entry),) = per_class.items()
        return (f"Operating point (best F1 at IoU 0.5): score >= {entry['threshold']:.3f} gives "
                f"precision {entry['precision']:.3f}, recall {entry['recall']:.3f} ({name}); "
                + hint)
    mean = {key: sum(e[key] for e in per_class.values()) / len(per_class)
            for key in ("precision", "recall")}
    return (f"Operating point (each class at its best-F1 threshold, IoU 0.5): mean precision "
            f"{mean['precision']:.3f}, mean recall {mean['recall']:.3f} over "
            f"{len(per_class)} classes; " + hint)


def padding_note(config) -> str:
    """A line when a fixed image_size is padded to a larger canvas ("" otherwise).

    Canvases are multiples of the top level's stride, so such a size pays for pixels of
    padding: the canvas size itself costs the same step time and holds more of the photo.
    """
    from retinanet.preprocess import round_up
    from retinanet.training.builders import build_anchor_generator

    size = config.data.image_size
    multiple = build_anchor_generator(config).stride_multiple
    if not size or size % multiple == 0:
        return ""
    canvas = round_up(size, multiple)
    return (f"note: config.data.image_size {size} is padded to a {canvas} x {canvas} canvas "
            f"(a multiple of {multiple}, the stride of the top level), which costs the step "
            f"time of --config.data.image_size={canvas}")


def clipped_note(config, train_set, val_set) -> str:
    """The header's ", boxes clipped to their image: train T, val V" (`dataset.clipped`)."""
    # A val split held out of (or equal to) train carries train's count: say it once.
    separate = bool(config.data.val) and config.data.format != "shapes"
    counts = [("train", train_set.clipped)] + ([("val", val_set.clipped)] if separate else [])
    if not any(count for _, count in counts):
        return ""
    return ", boxes clipped to their image: " + ", ".join(f"{name} {count}"
                                                          for name, count in counts)
