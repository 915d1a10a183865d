"""Files of an error analysis: analysis.md / .json, the confusion matrix (CSV, PNG), a gallery."""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from retinanet import atomic
from retinanet.evaluation.inputs import class_name
from retinanet.evaluation.tide import ERROR_TYPES, SPECIAL_ERROR_TYPES


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "n/a"
    return str(value).replace("|", "\\|")


def _labels(result: dict, class_names) -> list:
    labels = list(result["confusion"]["labels"])
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != len(labels) - 1:
            raise ValueError(f"class_names has {len(class_names)} names but the confusion matrix "
                             f"has {len(labels) - 1} classes")
        labels = class_names + [labels[-1]]
    return labels


def format_analysis(result: dict, class_names=None) -> str:
    """A markdown report: TIDE errors, per-class best-F1 points and the confusion matrix.

    Args:
        result: `ErrorAnalyzer.result()`.
        class_names: optional names replacing the result's class labels (same number).
    """
    labels = _labels(result, class_names)
    tide = result["tide"]
    lines = [
        "# Error analysis",
        "",
        f"## TIDE errors (IoU {tide['iou_threshold']:g}, background IoU "
        f"{tide['background_threshold']:g}): AP50 = {_cell(tide['ap50'])}",
        "",
        "dAP: AP50 gained by fixing that error type alone, 0-1 scale (TIDE prints 100x).",
        "",
        "| error | count | dAP |",
        "|---|---|---|",
    ]
    for name in ERROR_TYPES:
        lines.append(f"| {name} | {tide['counts'][name]} | {_cell(tide['main'][name])} |")
    for name in SPECIAL_ERROR_TYPES:
        lines.append(f"| all {name.replace('_', ' ')} | | {_cell(tide['special'][name])} |")
    lines += ["", f"Detections ignored in crowd/difficult regions: {tide['num_ignored']}", ""]

    lines += ["## Per class at the best-F1 score threshold", "",
              "| class | num_gt | threshold | precision | recall | F1 | tp | fp |",
              "|---|---|---|---|---|---|---|---|"]
    for label, entry in zip(labels, result["per_class"].values()):
        lines.append("| " + " | ".join(_cell(v) for v in (
            label, entry["num_gt"], entry["threshold"], entry["precision"], entry["recall"],
            entry["f1"], entry["tp"], entry["fp"])) + " |")

    confusion = result["confusion"]
    lines += ["", f"## Confusion matrix (IoU {confusion['iou_threshold']:g}; rows ground truth, "
              "columns predicted)", "",
              "| gt \\ predicted | " + " | ".join(_cell(x) for x in labels) + " |",
              "|---|" + "---|" * len(labels)]
    for label, row in zip(labels, confusion["matrix"]):
        lines.append(f"| {_cell(label)} | " + " | ".join(str(v) for v in row) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_confusion_matrix(result: dict, path: str, class_names=None) -> str:
    """Saves the confusion matrix as a PNG (counts in each cell, colour by row share).

    Uses matplotlib's `Figure` directly (no pyplot, no global backend change).

    Args:
        result: `ErrorAnalyzer.result()`.
        path: the PNG to write (its folder must exist).
        class_names: optional names replacing the result's class labels.

    Returns:
        `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = _labels(result, class_names)
    matrix = np.asarray(result["confusion"]["matrix"], np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = min(4 + 0.45 * len(labels), 30)
    figure = Figure(figsize=(size + 1.5, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the row")
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    if len(labels) <= 25:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    axes.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                              fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    thresholds = result["confusion"]["score_thresholds"]
    scope = f"score >= {thresholds[0]:.2f}" if len(set(thresholds)) == 1 \
        else "per-class best-F1 score thresholds"
    axes.set_title(f"Confusion at IoU {result['confusion']['iou_threshold']:g}, {scope}")
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_analysis(result: dict, output_dir: str, class_names=None) -> dict:
    """Writes `analysis.md`, `analysis.json`, `confusion_matrix.csv` and `confusion_matrix.png`.

    Args:
        result: `ErrorAnalyzer.result()`.
        output_dir: created when missing.
        class_names: optional names replacing the result's class labels (same number).

    Returns:
        {"markdown", "json", "csv", "png"} -> file paths. The JSON is strict (None for undefined
        values, never NaN).
    """
    labels = _labels(result, class_names)
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "markdown": os.path.join(output_dir, "analysis.md"),
        "json": os.path.join(output_dir, "analysis.json"),
        "csv": os.path.join(output_dir, "confusion_matrix.csv"),
        "png": os.path.join(output_dir, "confusion_matrix.png"),
    }
    atomic.write_text(paths["markdown"], format_analysis(result, class_names))
    atomic.write_json(paths["json"], result)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["gt \\ predicted"] + labels)
    for label, row in zip(labels, result["confusion"]["matrix"]):
        writer.writerow([label] + [int(v) for v in row])
    atomic.write_text(paths["csv"], table.getvalue())
    plot_confusion_matrix(result, paths["png"], class_names)
    return paths


_MISSED_COLOR = (255, 190, 0)
_GT_COLOR = (0, 150, 255)  # white tags would hide their white text


def plot_error_gallery(images_by_id: dict, worst: dict, path: str, class_names=None,
                       columns: int = 4, tile_inches: float = 3.2) -> str | None:
    """Saves one tile per worst false positive and missed ground truth as a PNG grid.

    False positives are red, labelled with their error type, class and score, over the ground
    truth their error refers to (blue); missed ground truths are amber.

    Args:
        images_by_id: {image_id: uint8 [H, W, 3] RGB}, in the pixels the boxes are in.
        worst: `result()["worst"]`.
        path: the PNG to write.
        class_names: optional names for the labels (default: the entries' `class_name`).
        columns: tiles per row.

    Returns:
        `path`, or None when none of the entries' images is in `images_by_id` (no file written).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from retinanet.visualization import RED, _to_uint8, draw_boxes

    def name(entry, key="class"):
        if class_names is not None:
            return class_name(entry[key], class_names)
        return entry.get(f"{key}_name") or str(entry[key])

    tiles = []
    for entry in worst.get("false_positives", []):
        if entry["image_id"] not in images_by_id:
            continue
        tile = _to_uint8(images_by_id[entry["image_id"]])
        if entry.get("gt_box") is not None:
            tile = draw_boxes(tile, [entry["gt_box"]], [name(entry, "gt_class")],
                              colors=_GT_COLOR)
        tile = draw_boxes(tile, [entry["box"]], [f"{name(entry)} {entry['score']:.2f}"],
                          colors=RED)
        tiles.append((tile, f"{entry['error']} FP, image {entry['image_id']}"))
    for entry in worst.get("missed", []):
        if entry["image_id"] not in images_by_id:
            continue
        tile = draw_boxes(images_by_id[entry["image_id"]], [entry["box"]], [name(entry)],
                          colors=_MISSED_COLOR)
        tiles.append((tile, f"missed, image {entry['image_id']}"))
    if not tiles:
        return None

    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    figure = Figure(figsize=(tile_inches * columns, tile_inches * rows + 0.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (tile, title) in zip(axes.ravel(), tiles):
        axis.imshow(tile)
        axis.set_title(title, fontsize=9)
    figure.suptitle("worst false positives (red; blue: the ground truth they refer to) and "
                    "missed objects (amber)", fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def original_images(batches, image_ids) -> dict:
    """{image_id: uint8 [H, W, 3]} at the original size for the wanted ids of evaluation batches.

    Evaluation batches hold resized, padded images; each wanted one is cropped to its resized
    size and resized back to its `original_size`, so boxes in original pixels fit it.
    """
    import tensorflow as tf

    wanted, found = set(image_ids), {}
    for images, targets in batches:
        for index, image_id in enumerate(targets["image_id"].numpy()):
            image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
            if image_id not in wanted or image_id in found:
                continue
            height, width = (int(v) for v in targets["original_size"][index])
            resized_height, resized_width = (int(v) for v in targets["image_size"][index])
            resized = images[index, :resized_height, :resized_width]
            found[image_id] = tf.cast(tf.clip_by_value(tf.round(
                tf.image.resize(resized, (height, width))), 0, 255), tf.uint8).numpy()
        if len(found) == len(wanted):
            break
    return found


def write_error_gallery(result: dict, batches, path: str, class_names=None):
    """`plot_error_gallery` of an analysis `result` with the images of evaluation `batches`."""
    worst = result["worst"]
    ids = {entry["image_id"] for entry in worst["false_positives"] + worst["missed"]}
    return plot_error_gallery(original_images(batches, ids), worst, path, class_names)
