"""`retinanet doctor`: one report on a dataset's health and how well the anchors fit it.

`run_doctor` runs `health.data_health`, `coverage.anchor_coverage`, optionally
`fitting.fit_anchors`, draws the histograms of `plots`, and writes `report.md`,
`report.json` (strict JSON: no NaN or Infinity) and the PNGs to one folder. `summary_text`
gives the one-paragraph console summary of the returned report.
"""

from __future__ import annotations

import json
import os

from retinanet import atomic
from retinanet.diagnostics import coverage as coverage_lib
from retinanet.diagnostics import fitting, health, plots, scaling

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
BOX_SIZES_PNG = "box_sizes.png"
ASPECT_RATIOS_PNG = "aspect_ratios.png"
# Below this best-possible recall the anchors are reported as a poor fit.
LOW_RECALL = 0.9
# A class with this many times fewer boxes than the largest one is reported as rare.
IMBALANCE_RATIO = 10


def _percent(value):
    return "n/a" if value is None else f"{value:.1%}"


def _number(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _errors(report) -> list:
    """The problems that stop training or corrupt what it learns: label errors, unreadable
    images, images over max_boxes, validation images that are training images."""
    found = []
    data = report["health"]
    if data["label_errors"]["count"]:
        count, named = data["label_errors"]["count"], data["label_errors"]["files"]
        found.append(f"{count} label errors: " + "; ".join(named[:5])
                     + (f"; and {count - 5} more (report.md)" if count > 5 else "") + ".")
    if data["unreadable_images"]["count"]:
        named = data["unreadable_images"]["files"]
        found.append(f"{data['unreadable_images']['count']} images cannot be read: "
                     + "; ".join(named[:5]) + ".")
    overlap = report.get("overlap") or []
    if overlap:
        found.append(f"{len(overlap)} validation images are also training images: "
                     + "; ".join(f"{a} = {b} ({how})" for a, b, how in overlap[:5])
                     + " (train refuses this; --config.data.allow_overlap=true allows it).")
    if data["too_many_boxes"]["count"]:
        found.append(f"{data['too_many_boxes']['count']} images have more boxes than "
                     f"max_boxes={data['too_many_boxes']['max_boxes']} (up to "
                     f"{data['too_many_boxes']['most_boxes']}): training fails on them; "
                     f"raise max_boxes to {data['too_many_boxes']['most_boxes']}.")
    return found


def _findings(report) -> list:
    """Plain-language warnings (training works, but look), most serious first."""
    found = []
    data, cover = report["health"], report["coverage"]
    if data["duplicate_images"]["count"]:
        found.append(f"{data['duplicate_images']['count']} images are byte-identical copies "
                     f"of others: " + "; ".join(data["duplicate_images"]["files"][:5]) + ".")
    # Boxes a reader skipped are label errors; these are boxes of records made in Python.
    for key, kinds, text in (
            ("degenerate_boxes", health.DEGENERATE_KINDS,
             "boxes are degenerate (x2 <= x1, y2 <= y1 or not finite)"),
            ("outside_boxes", health.OUTSIDE_KINDS, "boxes lie outside their image")):
        count = data[key]["count"] - sum(data["skipped"]["boxes"].get(k, 0) for k in kinds)
        if count:
            found.append(f"{count} {text}.")
    for key, text in (("tiny_boxes", f"boxes are under {data['tiny_boxes']['min_size']:g} px "
                                     "wide or high at the training size"),
                      ("empty_images", "images have no boxes")):
        if data[key]["count"]:
            found.append(f"{data[key]['count']} {text}.")
    recall = cover["recall"]
    if recall is not None and recall < LOW_RECALL:
        worst = min(((name, b["recall"]) for name, b in cover["by_size"].items()
                     if b["recall"] is not None), key=lambda item: item[1])
        found.append(f"Only {recall:.1%} of the boxes have an anchor at IoU >= "
                     f"{cover['positive_iou']:g} ({worst[0]} boxes {worst[1]:.1%}); "
                     "fit the anchors.")
    unmeasured = cover.get("unmeasured") or {"boxes": 0}
    if unmeasured["boxes"]:
        images = unmeasured["images"]
        found.append(f"{unmeasured['boxes']} boxes were not matched to anchors: "
                     f"{len(images)} images have more than "
                     f"{coverage_lib.MAX_MATCHED_BOXES_PER_IMAGE} boxes, and only that many of "
                     f"each were measured ({', '.join(images[:5])}).")
    if report.get("anchor_fit_skipped"):
        found.append(f"Anchors not fitted: {report['anchor_fit_skipped']}.")
    fit = report.get("anchor_fit")
    if fit and fit["improved"]:
        before, after = fit["before"], fit["after"]
        if after["recall"] > before["recall"]:
            gain = f"raise the recall from {before['recall']:.1%} to {after['recall']:.1%}"
        else:
            gain = (f"raise the mean best IoU from {before['mean_best_iou']:.3f} to "
                    f"{after['mean_best_iou']:.3f} (recall {after['recall']:.1%} either way)")
        found.append(f"Fitted anchors {gain}: {fit['command_line']}")
    boxes = {name: c["boxes"] for name, c in data["class_balance"].items()}
    absent = [name for name, n in boxes.items() if n == 0]
    if absent:
        found.append(f"{len(absent)} classes have no boxes: {', '.join(absent[:10])}.")
    if boxes and max(boxes.values()) > 0:
        most = max(boxes.values())
        rare = [name for name, n in boxes.items() if 0 < n * IMBALANCE_RATIO < most]
        if rare:
            found.append(f"{len(rare)} classes have over {IMBALANCE_RATIO}x fewer boxes than "
                         f"the largest ({most}): {', '.join(rare[:10])}.")
    return found


def summary_text(report) -> str:
    """The one-paragraph console summary of a `run_doctor` report."""
    data, cover = report["health"], report["coverage"]
    sizes = ", ".join(f"{name} {_percent(b['recall'])} of {b['num_boxes']}"
                      for name, b in cover["by_size"].items() if b["num_boxes"])
    text = (f"{report['dataset']['name']}: {data['num_images']} images, {data['num_boxes']} "
            f"boxes, {report['dataset']['num_classes']} classes. "
            f"{_percent(cover['recall'])} of the boxes have an anchor at IoU >= "
            f"{cover['positive_iou']:g} ({sizes}), {_percent(cover['recall_low_quality'])} "
            f"with low-quality matches; mean best IoU {_number(cover['mean_best_iou'])}.")
    errors, findings = report["errors"], report["findings"]
    if errors:
        text += f" {len(errors)} errors: " + " ".join(errors)
    if findings:
        text += f" {len(findings)} warnings: " + " ".join(findings)
    if not errors and not findings:
        text += " No problems found."
    return text + f" Report in {report['files']['report_md']}."


def _table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _stats_rows(groups):
    return [[name, s["num_boxes"], _percent(s["recall"]), _percent(s["recall_low_quality"]),
             _number(s["mean_best_iou"])]
            for name, s in groups.items()]


def report_markdown(report) -> str:
    """`report.md`: the summary, findings, health, coverage, anchor fit and histograms."""
    data, cover = report["health"], report["coverage"]
    lines = ["# retinanet doctor", "", summary_text(report), "", "## Errors", ""]
    lines += [f"- {item}" for item in report["errors"]] or ["- None."]
    lines += ["", "## Warnings", ""]
    lines += [f"- {item}" for item in report["findings"]] or ["- None."]
    lines += ["", "## Data health", ""]
    rows = []
    for key in ("label_errors", "unreadable_images", "duplicate_images", "empty_images",
                "degenerate_boxes", "outside_boxes", "tiny_boxes", "too_many_boxes"):
        names = ", ".join(f"`{name}`" for name in data[key]["files"])
        more = data[key]["count"] - len(data[key]["files"]) if key != "tiny_boxes" else 0
        rows.append([key.replace("_", " "), data[key]["count"],
                     names + (f" and {more} more" if more > 0 else "")])
    lines += _table(["problem", "count", "files"], rows)
    if data["skipped"]["images"] or data["skipped"]["boxes"]:
        lines += ["Skipped by the reader: " + json.dumps(data["skipped"]), ""]
    lines += ["### Class balance", ""]
    lines += _table(["class", "boxes", "images"],
                    [[name, c["boxes"], c["images"]] for name, c in
                     data["class_balance"].items()])
    lines += ["## Anchor coverage", "",
              f"Boxes at the training size (`image_size={cover['image_size']}`), anchors "
              f"`{json.dumps(cover['anchors'])}`; recall is the share of boxes with an anchor "
              f"at IoU >= {cover['positive_iou']:g}, low-quality the share that gets a "
              "positive anchor when every box also claims its best anchor.", ""]
    header = ["boxes", "count", "recall", "with low-quality", "mean best IoU"]
    lines += _table(header, _stats_rows({"all": cover}) + _stats_rows(cover["by_size"]))
    lines += _table(["class"] + header[1:], _stats_rows(cover["by_class"]))
    percentiles = ", ".join(f"{k} {_number(v)}"
                            for k, v in cover["best_iou_percentiles"].items())
    lines += [f"Best IoU percentiles: {percentiles}.", ""]
    fit = report.get("anchor_fit")
    if fit:
        lines += ["## Anchor fit", ""]
        lines += _table(["", "anchor_size", "scales", "aspect_ratios", "recall",
                         "mean best IoU"],
                        [[name, f"{s['anchor_size']:g}",
                          ", ".join(f"{v:.4g}" for v in s["scales"]),
                          ", ".join(f"{v:.4g}" for v in s["aspect_ratios"]),
                          _percent(s["recall"]), _number(s["mean_best_iou"])]
                         for name, s in (("before", fit["before"]), ("after", fit["after"]))])
        lines += (["Overrides:", "", "``", fit["command_line"], "``", ""] if fit["improved"]
                  else ["The current anchors are already the best found.", ""])
    lines += ["## Histograms", ""]
    lines += [f"![{os.path.splitext(name)[0]}]({name})" for name in report["files"]["plots"]]
    return "\n".join(lines) + "\n"


def run_doctor(dataset, anchor_generator, label_encoder, image_size, max_boxes, output_dir,
               fit_anchors=False, verbose=1, max_anchors_per_location=None,
               overlap=None) -> dict:
    """Checks a dataset and the anchors against it; writes the report files.

    Args:
        dataset: a `DetectionDataset`, best read with `skip_invalid=True`.
        anchor_generator: the `AnchorGenerator` training would use.
        label_encoder: the `LabelEncoder` training would use (its thresholds).
        image_size: the pipeline's `image_size`: None, int S or (min_side, max_side).
        max_boxes: the pipeline's `max_boxes`.
        output_dir: folder for `report.md`, `report.json`, `box_sizes.png` and
            `aspect_ratios.png` (created if needed).
        fit_anchors: also search better anchors (`fitting.fit_anchors`).
        verbose: 0 silent, 1 a progress bar per pass over the images.
        max_anchors_per_location: passed to `fitting.fit_anchors`.
        overlap: optional `retinanet.data.overlap.overlapping_images` of this dataset and
            the other split, reported as an error.

    Returns:
        The report dict (as written to `report.json`): `dataset` (name, num_images,
        num_classes, class_names), `settings` (image_size, max_boxes, anchors, matching),
        `health` (`health.data_health`), `coverage` (`anchor_coverage`'s summary),
        `anchor_fit` (`fitting.fit_anchors`'s dict, or None), `overlap`, `errors` (what
        stops training or corrupts it: label errors with file, line and cause, unreadable
        images, too many boxes, validation images that are training images) and
        `findings` (warnings), lists of str,
        and `files` (paths of report_md, report_json and plots, inside output_dir).
    """
    import keras

    os.makedirs(output_dir, exist_ok=True)
    records = dataset.records
    scaled = scaling.scaled_boxes(records, image_size, anchor_generator.stride_multiple)

    def progress_bar(title):
        if verbose:
            print(title, flush=True)
        bar = keras.utils.Progbar(len(records), verbose=1 if verbose else 0, unit_name="image")
        return bar.update

    data_health = health.data_health(dataset, image_size, max_boxes, scaled=scaled,
                                     progress=progress_bar("Checking the images"))
    matcher = label_encoder.matcher
    # Coverage measures anchors by IoU; ATSS adapts its threshold per object, so the
    # paper's 0.5 / 0.4 stand in for it.
    positive_iou = getattr(matcher, "positive_iou", 0.5)
    negative_iou = getattr(matcher, "negative_iou", 0.4)
    coverage = coverage_lib.anchor_coverage(
        dataset, anchor_generator, image_size, positive_iou, negative_iou, scaled=scaled,
        progress=progress_bar("Matching anchors to the boxes"))
    anchor_fit = fit_skipped = None
    if fit_anchors and len(scaled) < fitting.MIN_FIT_BOXES:
        fit_skipped = (f"{len(scaled)} boxes are too few to fit anchors to (at least "
                       f"{fitting.MIN_FIT_BOXES}); the current anchors are kept")
    elif fit_anchors:
        if verbose:
            print("Fitting anchors", flush=True)
        anchor_fit = fitting.fit_anchors(
            dataset, anchor_generator, image_size, positive_iou, negative_iou,
            max_anchors_per_location=max_anchors_per_location,
            before=coverage, scaled=scaled)

    plot_files = [
        plots.plot_box_sizes(scaled.widths, scaled.heights, anchor_generator,
                             os.path.join(output_dir, BOX_SIZES_PNG), covered=coverage.covered),
        plots.plot_aspect_ratios(scaled.widths, scaled.heights, anchor_generator,
                                 os.path.join(output_dir, ASPECT_RATIOS_PNG)),
    ]
    report = {
        "dataset": {"name": dataset.name, "num_images": len(records),
                    "num_classes": dataset.num_classes, "class_names": dataset.class_names},
        "settings": {"image_size": coverage.summary["image_size"], "max_boxes": int(max_boxes),
                     "anchors": coverage_lib.anchor_settings(anchor_generator),
                     "matching": {"matcher": type(matcher).__name__,
                                  **matcher.get_config()}},
        "health": data_health,
        "coverage": coverage.summary,
        "anchor_fit": anchor_fit,
        "anchor_fit_skipped": fit_skipped,
        "overlap": [list(pair) for pair in overlap or []],
        "files": {"report_md": os.path.join(output_dir, REPORT_MD),
                  "report_json": os.path.join(output_dir, REPORT_JSON),
                  "plots": plot_files},
    }
    report["errors"] = _errors(report)
    report["findings"] = _findings(report)
    report = atomic.json_ready(report)
    markdown = report_markdown({**report, "files": {
        **report["files"], "plots": [os.path.basename(p) for p in plot_files]}})
    atomic.write_text(report["files"]["report_md"], markdown)
    atomic.write_text(report["files"]["report_json"],
                      json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report
