"""Readable reports of evaluation results: a per-class table, CSV / JSON files and PR curves."""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from retinanet import atomic
from retinanet.evaluation.coco import COCO_METRIC_NAMES

_COCO_COLUMNS = ("num_gt", "num_detections", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
_VOC_COLUMNS = ("num_gt_voc", "AP_voc", "tp", "fp", "precision", "recall")


def _split(results: dict) -> tuple[dict | None, dict | None]:
    """Accepts `evaluate`'s `{"coco", "voc"}` dict or a bare COCO or VOC result."""
    if "coco" in results or "voc" in results:
        return results.get("coco"), results.get("voc")
    if "AP50" in results:
        return results, None
    if "mAP" in results:
        return None, results
    raise ValueError(f"results is not an evaluation result; keys {sorted(results)}")


def per_class_rows(results: dict) -> list[dict]:
    """One dict per class, merging the COCO and VOC per-class entries.

    Args:
        results: `evaluate(...)` output, or a bare `COCOEvaluator`/`VOCEvaluator` result.

    Returns:
        Rows with "class" and, when COCO is present, `num_gt, num_detections, AP, AP50, AP75, APs,
        APm, APl, AR100`; when VOC is present, `num_gt_voc, AP_voc, tp, fp` and the final
        `precision`, `recall` (NaN without detections / ground truth).
    """
    coco, voc = _split(results)
    names = list((coco or {}).get("per_class", {}))
    names += [n for n in (voc or {}).get("per_class", {}) if n not in names]
    rows = []
    for name in names:
        row = {"class": name}
        if coco is not None:
            entry = coco["per_class"].get(name, {})
            row.update({key: entry.get(key, float("nan")) for key in _COCO_COLUMNS})
        if voc is not None and name in voc["per_class"]:
            entry = voc["per_class"][name]
            row.update({
                "num_gt_voc": entry["num_gt"],
                "AP_voc": entry["AP"],
                "tp": entry["tp"],
                "fp": entry["fp"],
                "precision": float(entry["precision"][-1]) if len(entry["precision"]) else math.nan,
                "recall": float(entry["recall"][-1]) if len(entry["recall"]) else math.nan,
            })
        elif voc is not None:
            row.update({key: math.nan for key in _VOC_COLUMNS})
        rows.append(row)
    return rows


def _not_available(value) -> bool:
    """-1.0 is pycocotools' "no ground truth here"; NaN is VOC's."""
    return isinstance(value, (float, np.floating)) and (math.isnan(value) or value == -1.0)


def _cell(value) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if _not_available(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def format_table(results: dict) -> str:
    """A markdown report: the summary metrics, then one row per class.

    `n/a` marks -1 (COCO: no ground truth in that class / area range) and NaN (VOC: no ground
    truth in that class, or no detections for the final precision/recall).
    """
    coco, voc = _split(results)
    lines = ["# Evaluation", ""]
    if coco is not None:
        lines += ["## COCO (pycocotools, IoU 0.50:0.95)", ""]
        lines += ["| " + " | ".join(COCO_METRIC_NAMES) + " |"]
        lines += ["|" + "---|" * len(COCO_METRIC_NAMES)]
        lines += ["| " + " | ".join(_cell(float(coco[n])) for n in COCO_METRIC_NAMES) + " |", ""]
    if voc is not None:
        lines += [f"## Pascal VOC: mAP = {_cell(float(voc['mAP']))}", ""]
    rows = per_class_rows(results)
    if rows:
        columns = list(rows[0])
        lines += ["## Per class", "",
                  "`precision` and `recall` count every detection the model keeps (score at "
                  "least its decoder's threshold, 0.05 by default, as COCO AP needs); the "
                  "operating point to deploy at is each class's best-F1 threshold "
                  "(analysis.md).", ""]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_pr_curves(voc_result: dict, path: str, title: str | None = None) -> str | None:
    """Saves the VOC precision/recall curve of every class with ground truth as one PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).

    Args:
        voc_result: `VOCEvaluator.result()`.
        path: the PNG file to write (its folder must exist).
        title: optional figure title.

    Returns:
        `path`, or None when no class has ground truth (nothing to plot, no file written).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [(name, e) for name, e in voc_result["per_class"].items() if e["num_gt"] > 0]
    if not curves:
        return None
    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, entry in curves:
        # Start at recall 0 so a class with one detection still shows a segment.
        recall = np.concatenate([[0.0], entry["recall"]])
        precision = np.concatenate([[entry["precision"][0] if len(entry["precision"]) else 0.0],
                                    entry["precision"]])
        axes.step(recall, precision, where="post", label=f"{name} (AP {entry['AP']:.3f})")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.grid(True, alpha=0.3)
    axes.set_title(title or f"Precision / recall (VOC mAP {voc_result['mAP']:.3f})")
    if len(curves) <= 30:
        axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_report(results: dict, output_dir: str, print_table: bool = True) -> dict:
    """Writes `report.md`, `per_class.csv`, `metrics.json` and `pr_curves.png` to `output_dir`,
    and with an "analysis" result the files of `analysis_report.write_analysis`.

    Args:
        results: `evaluate(...)` output, or a bare COCO or VOC result.
        output_dir: created when missing.
        print_table: also print the markdown report.

    Returns:
        {"markdown", "csv", "json", "pr_curves"} -> file paths (`pr_curves` is None without VOC
        results or without any ground truth). `metrics.json` holds the full results, arrays as lists
        and NaN as null.
    """
    os.makedirs(output_dir, exist_ok=True)
    coco, voc = _split(results)
    paths = {
        "markdown": os.path.join(output_dir, "report.md"),
        "csv": os.path.join(output_dir, "per_class.csv"),
        "json": os.path.join(output_dir, "metrics.json"),
        "pr_curves": None,
    }
    text = format_table(results)
    atomic.write_text(paths["markdown"], text)
    if print_table:
        print(text)

    rows = per_class_rows(results)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["class"])
    writer.writeheader()
    # One "not available" cell: empty, for pycocotools' -1 and VOC's NaN alike.
    writer.writerows({key: "" if _not_available(value) else value for key, value in row.items()}
                     for row in rows)
    atomic.write_text(paths["csv"], table.getvalue())

    full = {key: value for key, value in (("coco", coco), ("voc", voc)) if value is not None}
    atomic.write_json(paths["json"], full)

    if voc is not None:
        paths["pr_curves"] = plot_pr_curves(voc, os.path.join(output_dir, "pr_curves.png"))
    if "analysis" in results:
        from retinanet.evaluation.analysis_report import format_analysis, write_analysis

        paths.update(write_analysis(results["analysis"], output_dir))
        if print_table:
            print(format_analysis(results["analysis"]))
    return paths
