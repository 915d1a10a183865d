"""Keras callbacks of `retinanet train`: atomic checkpoints, a resumable backup, a NaN guard,
the swap of the weights' moving average.

Checkpoints and backups are written to a temporary name first and then renamed (`os.replace`
is atomic on POSIX), so a run killed at any moment leaves each of them either at its previous
version or at its new one, never half written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile

import keras

from retinanet import _keras_compat
from retinanet.atomic import read_json, write_json, write_text


class StepLogger(keras.callbacks.Callback):
    """Adds the optimizer's step count and learning rate to the epoch logs (CSV, TensorBoard).

    A resumed run shows where it continues: the step keeps counting from the restored
    optimizer state instead of restarting at 0.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.model.optimizer is None:
            return
        optimizer = self.model.optimizer
        logs["step"] = int(optimizer.iterations.numpy())
        rate = optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class TrainingLog(keras.callbacks.Callback):
    """`training_log.csv`: one row per epoch, a column per value logged in any epoch.

    Unlike `keras.callbacks.CSVLogger`, whose columns are fixed at the first epoch (it then
    adds a `val_` twin of every column, all NA without validation, and never shows a
    `val_AP` that first appears at a later evaluation), the columns grow with what is
    logged and hold no column that is empty in every row; a value an epoch did not log is
    `NA`. The file is rewritten whole (atomically) at each epoch end, keeping the rows
    already in it (a resumed run's earlier epochs).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.rows = []

    def on_train_begin(self, logs=None):
        self.rows = []
        if os.path.isfile(self.path):
            with open(self.path, newline="", encoding="utf-8") as file:
                self.rows = [{key: value for key, value in row.items() if value != "NA"}
                             for row in csv.DictReader(file)]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        for key, value in (logs or {}).items():
            value = keras.ops.convert_to_numpy(value)
            row[key] = value.item() if getattr(value, "ndim", 1) == 0 else value
        self.rows.append(row)
        columns = ["epoch"] + sorted({key for r in self.rows for key in r} - {"epoch"})
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="NA", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, text.getvalue())


class SwapMovingAverage(keras.callbacks.Callback):
    """At each epoch end, swaps the model's weights with the optimizer's moving average.

    For an optimizer with `use_ema=True`, used twice: one first in the callback list, so the
    evaluation and the checkpoints see the average, and one just before the backup, so the
    backup (and the next epoch) has the trained weights again. Keras' `fit` then ends by
    copying the average into the model (`finalize_variable_values`). Keras' own
    `SwapEMAWeights` leaves the two swapped when a run stops before its last epoch (a time
    budget does), and backs up the swapped state.
    """

    def on_epoch_end(self, epoch, logs=None):
        for variable, average in _keras_compat.moving_averages(self.model.optimizer):
            trained = variable.numpy()
            variable.assign(average)
            average.assign(trained)


class Checkpoints(keras.callbacks.Callback):
    """Saves `last.keras` after every epoch and `best.keras` when `monitor` improves.

    The best value and its epoch live in `best.json` beside the checkpoints and are read
    back when training starts again, so a resumed run does not overwrite a better
    `best.keras` with its first epoch.

    Args:
        directory: folder of the checkpoints (created when missing).
        monitor: the log key to compare, e.g. "val_AP" (put the callback that writes it first).
        mode: "max" or "min".
    """

    def __init__(self, directory: str, monitor: str = "val_AP", mode: str = "max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        self.last_path = os.path.join(directory, "last.keras")
        self.best_path = os.path.join(directory, "best.keras")
        self.state_path = os.path.join(directory, "best.json")
        state = read_json(self.state_path) or {}
        self.best = state.get(monitor)
        self.best_epoch = state.get("epoch")

    def _improved(self, value) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def keep_as_best(self, model, value, epoch: int):
        """Saves `model` as `best.keras` with its `monitor` value (a run that evaluated only
        at its end: its final model is the best known)."""
        os.makedirs(self.directory, exist_ok=True)
        self._save(self.best_path, model)
        self.best, self.best_epoch = value, int(epoch)
        write_json(self.state_path, {self.monitor: value, "epoch": int(epoch)})

    def _save(self, path: str, model=None):
        # A unique temporary name (save() wants the .keras suffix), renamed over the target.
        descriptor, tmp = tempfile.mkstemp(prefix=os.path.basename(path)[:-6] + ".",
                                           suffix=".tmp.keras", dir=self.directory)
        os.close(descriptor)
        try:
            (model or self.model).save(tmp, overwrite=True)
            os.replace(tmp, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(error, OSError):
                raise _naming(error, path) from None
            raise

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self._save(self.last_path)
        value = (logs or {}).get(self.monitor)
        value = None if value is None else float(value)
        if self._improved(value):
            self._save(self.best_path)
            self.best, self.best_epoch = value, epoch + 1
            write_json(self.state_path, {self.monitor: value, "epoch": epoch + 1})


class ResumableBackup(_keras_compat.BackupAndRestoreHooks):
    """`keras.callbacks.BackupAndRestore` with atomic saves and a separate write folder.

    Keras' own callback overwrites `latest.weights.h5` in place and then the metadata, so a
    kill during the save can leave a file that fails to load or metadata that disagrees with
    the weights. Here each backup goes to a new file `epoch_<N>_batch_<M>.weights.h5` (model
    weights and optimizer state: step count, moments, so the learning-rate schedule
    continues), and `training_metadata.json` is replaced afterwards to point at it; the
    previous file is kept as a fallback and older ones are deleted.

    Args:
        backup_dir: where the state is read from when training starts.
        write_dir: where it is written (default `backup_dir`). Non-chief workers of
            multi-worker training write elsewhere but restore from the chief's folder.
        save_freq: as in `BackupAndRestore` ("epoch" or a number of batches).
    """

    METADATA = "training_metadata.json"

    def __init__(self, backup_dir: str, write_dir: str | None = None, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.write_dir = write_dir or backup_dir

    @classmethod
    def saved_epoch(cls, backup_dir: str) -> int:
        """Number of finished epochs the newest backup in a folder claims (0: none)."""
        metadata = read_json(os.path.join(backup_dir, cls.METADATA)) or {}
        return int(metadata.get("epoch", 0))

    @classmethod
    def restorable(cls, backup_dir: str):
        """The backup a resume loads: `(epoch, file name or None, skipped)`.

        The newest weights file that reads whole wins; `skipped` names each newer one that
        does not (truncated or corrupt: a disk that filled up, a copy cut short) with its
        epoch and the reason, so the caller can say what it falls back to.

        Raises:
            ValueError: the folder has backups and none of them reads.
        """
        metadata = read_json(os.path.join(backup_dir, cls.METADATA)) or {}
        if metadata.get("finished"):  # `close`d: nothing to load, the epochs are done
            return int(metadata.get("epoch", 0)), None, []
        skipped = []
        for name, epoch in ((metadata.get("weights"), metadata.get("epoch", 0)),
                            (metadata.get("previous_weights"), metadata.get("previous_epoch", 0))):
            if not name:
                continue
            problem = _unreadable_weights(os.path.join(backup_dir, name))
            if problem is None:
                return int(epoch), name, skipped
            skipped.append(f"{os.path.join(backup_dir, name)} (epoch {epoch}): {problem}")
        if skipped:
            raise ValueError(f"{backup_dir}: no backup loads ({'; '.join(skipped)}); delete "
                             "the folder to start over")
        return 0, None, skipped

    @classmethod
    def close(cls, backup_dir: str):
        """After a run finished cleanly: deletes the weights files (the checkpoints hold the
        model) and marks the metadata finished, so that a rerun of the same command knows
        the epochs are done."""
        path = os.path.join(backup_dir, cls.METADATA)
        metadata = read_json(path)
        if not metadata:
            return
        write_json(path, {"epoch": metadata.get("epoch", 0), "finished": True})
        for name in os.listdir(backup_dir):
            if name.endswith(".weights.h5"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(backup_dir, name))

    def restore(self):
        """Loads the backup `restorable` names; its epoch becomes fit's initial epoch."""
        epoch, name, _ = self.restorable(self.backup_dir)
        if name is None:
            return
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model before fit()")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        path = os.path.join(self.backup_dir, name)
        try:
            self.model.load_weights(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: the backup of epoch {epoch} does not load ({error}); "
                             "delete the backup folder to start over") from None
        _keras_compat.set_initial_epoch(self.model, epoch)

    def save(self):
        os.makedirs(self.write_dir, exist_ok=True)
        metadata_path = os.path.join(self.write_dir, self.METADATA)
        previous = read_json(metadata_path) or {}
        epoch, batch = self.progress()
        name = f"epoch_{epoch:05d}_batch_{batch:06d}.weights.h5"
        tmp = os.path.join(self.write_dir, f"tmp_{os.getpid()}_{name}")
        try:
            self.model.save_weights(tmp, overwrite=True)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise _naming(error, os.path.join(self.write_dir, name)) from None
        os.replace(tmp, os.path.join(self.write_dir, name))
        metadata = {"epoch": epoch, "batch": batch, "weights": name}
        if previous.get("weights") and previous["weights"] != name:
            metadata["previous_weights"] = previous["weights"]
            metadata["previous_epoch"] = previous.get("epoch", 0)
        write_json(metadata_path, metadata)
        keep = {name, metadata.get("previous_weights")}
        for old in os.listdir(self.write_dir):
            if old.endswith(".weights.h5") and old not in keep:
                try:
                    os.remove(os.path.join(self.write_dir, old))
                except OSError:
                    pass


def _naming(error: OSError, path: str) -> OSError:
    """`error` naming the file being written (Keras and h5py leave it out), e.g. when the
    disk is full: `[Errno 28] No space left on device: 'run/checkpoints/last.keras'`."""
    return OSError(error.errno, error.strerror or str(error), path)


def _unreadable_weights(path: str):
    """None when the `.weights.h5` file at `path` reads whole, else why it does not."""
    import h5py

    def read(name, item):
        if isinstance(item, h5py.Dataset):
            item[()]  # every array, to its last byte

    try:
        with h5py.File(path, "r") as file:
            file.visititems(read)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        return " ".join(str(error).split()) or type(error).__name__
    return None


class NonFiniteLossError(FloatingPointError):
    """Raised by `NonFiniteLossGuard` when the training loss stops being finite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the step and the likely cause.

    Unlike `keras.callbacks.TerminateOnNaN`, it raises `NonFiniteLossError`, so `fit` ends
    before `on_epoch_end`: no checkpoint callback gets to save the broken weights, and the
    last good checkpoint stays as it was.
    """

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        raise NonFiniteLossError(
            f"The training loss became {float(loss)} at step {step} (batch {batch} of this "
            f"epoch). {self._likely_cause(logs)}"
        )

    def _likely_cause(self, logs):
        box_loss, cls_loss = logs.get("box_loss"), logs.get("cls_loss")
        if (
            box_loss is not None
            and cls_loss is not None
            and not math.isfinite(float(box_loss))
            and math.isfinite(float(cls_loss))
        ):
            return (
                "Only the box loss is non-finite, so bad boxes are the likely cause (NaN or "
                "infinite coordinates, or boxes far outside the image); load the data with "
                "the readers, which reject such boxes."
            )
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        return (
            f"The likely cause is a learning rate too high for this batch size (now "
            f"{learning_rate:.3g}): lower it, add warm-up, or clip gradients with `clipnorm`. "
            "Bad boxes in the data can also cause it."
        )
