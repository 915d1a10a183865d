"""The run folder (`--workdir`) of `retinanet train`: what it holds and how it is read.

    config.json, config.py        the full config (config.py loads with --config=)
    classes.json                  class names and dataset category ids
    checkpoints/last.keras        after every epoch (written atomically)
    checkpoints/best.keras        the best epoch by val_AP, with checkpoints/best.json
    backup/                       the resumable backup: rerun the same command to resume
                                  (budget.json: the time budget spent, if any)
    logs/                         TensorBoard (train/ and validation/)
    training_log.csv              one row per epoch (loss, val_AP, ..., optimizer step)
    metrics.json, report.md,      the final evaluation (COCO metrics and VOC mAP), the
    per_class.csv, pr_curves.png  per-class table and PR curves

`retinanet evaluate`, `predict` and `export` read the config, the classes and a checkpoint
from it.
"""

from __future__ import annotations

import os

from retinanet import atomic

CLASSES_FILE = "classes.json"
CHECKPOINT_CHOICES = ("best", "last")


def write_classes(workdir: str, class_names, category_ids):
    atomic.write_json(os.path.join(workdir, CLASSES_FILE),
                      {"class_names": list(class_names), "category_ids": category_ids})


def read_classes(workdir: str):
    """(class_names, category_ids) of a run, or (None, None) when it has no classes.json."""
    info = atomic.read_json(os.path.join(workdir, CLASSES_FILE))
    if info is None:
        return None, None
    return info["class_names"], info.get("category_ids")


def checkpoint_path(workdir: str, choice: str = "best") -> str:
    """The `.keras` file for `choice`: "best" (or "last" before any evaluation), "last",
    or a path. Raises ValueError when it does not exist."""
    if choice in CHECKPOINT_CHOICES:
        path = os.path.join(workdir, "checkpoints", f"{choice}.keras")
        if choice == "best" and not os.path.isfile(path):
            path = os.path.join(workdir, "checkpoints", "last.keras")  # no evaluation ran yet
    else:
        path = choice
    if not os.path.isfile(path):
        raise ValueError(f"--checkpoint={choice}: checkpoint not found: {path}")
    return path
