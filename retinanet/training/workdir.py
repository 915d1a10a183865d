"""The run folder (`--workdir`) of `retinanet train`: what it holds and how it is read.

    config.json, config.py        the full config (config.py loads with --config=)
    classes.json                  class names and dataset category ids
    run.json                      the precision used and why (--precision=auto resolves it:
                                  `retinanet.hardware.resolve_precision`)
    checkpoints/last.keras        after every epoch (written atomically)
    checkpoints/best.keras        the best epoch by val_AP, with checkpoints/best.json
    backup/                       the resumable backup: rerun the same command to resume
                                  (budget.json: the time budget spent, if any)
    logs/                         TensorBoard (train/ and validation/)
    training_log.csv              one row per epoch (loss, val_AP, ..., optimizer step)
    metrics.json, report.md,      the final evaluation (COCO metrics and VOC mAP), the
    per_class.csv, pr_curves.png  per-class table and PR curves
    analysis.md, analysis.json,   the error analysis: TIDE breakdown, best-F1 thresholds,
    confusion_matrix.csv/.png,    the confusion matrix and the worst false positives and
    errors.png                    missed objects
    .lock                         while a run trains here (`WorkdirLock`)

`retinanet evaluate`, `predict` and `export` read the config, the classes and a checkpoint
from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid

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


def best_f1_thresholds(workdir: str) -> list:
    """Each class's best-F1 score threshold from the run's last validation analysis.

    Classes without one (no ground truth or no true positive) get the analysis's threshold
    for the confusion matrix, which falls back to 0.5.
    """
    # The end of training writes WORKDIR/analysis.json, `retinanet evaluate` WORKDIR/eval/val/.
    candidates = [os.path.join(workdir, "analysis.json"),
                  os.path.join(workdir, "eval", "val", "analysis.json")]
    found = [path for path in candidates if os.path.isfile(path)]
    if not found:
        raise ValueError(f"--per_class_thresholds=best_f1: no validation analysis in {workdir} "
                         "(analysis.json); run `retinanet evaluate` on it first")
    analysis = atomic.read_json(max(found, key=os.path.getmtime))
    return [float(t) for t in analysis["confusion"]["score_thresholds"]]


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


LOCK_FILE = ".lock"


class WorkdirLock:
    """An exclusive lock on a run folder, held while `retinanet train` runs in it.

    The lock is the file ``WORKDIR/.lock``, holding the owner's pid, host, start time and a
    random token. A second run refuses to start, naming the holder. A lock whose process is
    gone (same host, pid no longer alive) or whose file is unreadable is stale and taken
    over; a lock of another host is always respected. The workers of one multi-worker
    cluster are one run: only the chief locks.

    Every look at the lock and every change to it happens under an `flock` of the workdir
    itself, and the file is written whole before it gets its name (`os.replace`), so no
    process ever reads a half-written lock, two processes never both decide that a lock is
    free, and `release` removes only a lock that holds its own token.

    Use as a context manager, or `acquire` / `release`.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.held = False
        self.created_workdir = False  # the folder did not exist before `acquire`
        self._token = None

    @contextlib.contextmanager
    def _mutex(self):
        descriptor = os.open(self.workdir, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the flock

    def _holder(self):
        """The live holder's lock content; None when there is no lock or it is stale."""
        info = atomic.read_json(self.path)
        if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
            return None
        if info.get("host") == socket.gethostname() and not _alive(info["pid"]):
            return None
        return info

    def acquire(self):
        if not os.path.isdir(self.workdir):
            os.makedirs(self.workdir, exist_ok=True)
            self.created_workdir = True
        token = uuid.uuid4().hex
        with self._mutex():
            holder = self._holder()
            if holder is not None:
                raise ValueError(
                    f"--workdir={self.workdir} is in use by another run "
                    f"(pid {holder['pid']} on {holder.get('host')}, since "
                    f"{holder.get('started')}); wait for it, use another --workdir, or "
                    f"delete {self.path} if that run is gone")
            atomic.write_text(self.path, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": token}))
        self._token, self.held = token, True
        return self

    def release(self):
        """Removes the lock if it is still this one's, and the workdir too when this lock
        created it and it is empty."""
        if self.held:
            with self._mutex():
                info = atomic.read_json(self.path)
                if isinstance(info, dict) and info.get("token") == self._token:
                    os.remove(self.path)
            self.held = False
        if self.created_workdir:
            with contextlib.suppress(OSError):
                os.rmdir(self.workdir)  # only succeeds when nothing was written

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
