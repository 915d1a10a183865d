"""A Keras callback that evaluates COCO / VOC mAP during `fit` and writes them into `logs`."""

from __future__ import annotations

import os

import keras

from retinanet.evaluation.runner import evaluate, flatten_metrics


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluates the model every `every_n_epochs` epochs and adds the metrics to `logs`.

    The keys are `flatten_metrics(results, prefix)`: `val_AP`, `val_AP50`, `val_AP75`, `val_APs`,
    `val_APm`, `val_APl`, `val_AR1`, `val_AR10`, `val_AR100`, `val_ARs`, `val_ARm`, `val_ARl` and
    `val_mAP_voc` with the default prefix (plus `val_AP/<class>` and `val_AP_voc/<class>` with
    `per_class_logs=True`). Keras hands the same `logs` dict to every callback in list order and
    appends History and the progress bar last, so History and the progress bar always see them,
    but **put this callback before `ModelCheckpoint(monitor="val_AP")`, `EarlyStopping`,
    `TensorBoard` or `CSVLogger`** in the `callbacks` list, or those run before the keys exist.

    On epochs that are not evaluated the keys are absent (History's lists for them are then
    shorter than the number of epochs, and ModelCheckpoint warns and skips that epoch).

    Args:
        dataset: finite evaluation dataset of `(images, targets)` batches (docs/CONTRACTS.md).
        every_n_epochs: evaluate after epochs n, 2n, ... (1-based).
        class_names: optional class names.
        prefix: prepended to every log key.
        per_class_logs: also log per-class AP.
        report_dir: when set, `write_report` goes to `report_dir/epoch_<NNN>/` after each
            evaluation.
        verbose: progress bar of the evaluation (0 silent, 1 bar, 2 one line).
        **evaluate_kwargs: more arguments for `evaluate` (`category_ids`, `coco`, `voc`,
            `voc_iou_threshold`, `voc_method`, `steps`).

    Attributes:
        last_results: the full `evaluate` result of the latest evaluation (None before).
    """

    def __init__(
        self,
        dataset,
        every_n_epochs: int = 1,
        class_names=None,
        prefix: str = "val_",
        per_class_logs: bool = False,
        report_dir: str | None = None,
        verbose: int = 0,
        **evaluate_kwargs,
    ):
        super().__init__()
        if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs}")
        unknown = set(evaluate_kwargs) - {
            "category_ids", "coco", "voc", "voc_iou_threshold", "voc_method", "steps"
        }
        if unknown:
            raise ValueError(f"EvaluationCallback got unknown arguments {sorted(unknown)}")
        self.dataset = dataset
        self.every_n_epochs = int(every_n_epochs)
        self.class_names = class_names
        self.prefix = prefix
        self.per_class_logs = per_class_logs
        self.report_dir = report_dir
        self.verbose = verbose
        self.evaluate_kwargs = evaluate_kwargs
        self.last_results = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        results = evaluate(
            self.model, self.dataset, class_names=self.class_names, verbose=self.verbose,
            **self.evaluate_kwargs,
        )
        self.last_results = results
        if logs is not None:
            logs.update(flatten_metrics(results, self.prefix, per_class=self.per_class_logs))
        if self.report_dir:
            from retinanet.evaluation.report import write_report

            write_report(
                results, os.path.join(self.report_dir, f"epoch_{epoch + 1:03d}"), print_table=False
            )
