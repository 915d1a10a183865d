"""`retinanet train` as a function: strategy, data, model, callbacks, fit, final evaluation.

`train(config, workdir)` is what the command line's `train` and `retinanet.apps.demo` run;
`retinanet.training.workdir` describes the files it leaves in the workdir.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

from retinanet import atomic
from retinanet import config as rconfig
from retinanet.training import builders, datasets, reporting, workdir as run_folder

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
# "auto": `retinanet.hardware.resolve_precision` (mixed_bfloat16 on a CPU with native bf16).
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# `retinanet train`'s default. mixed_bfloat16 took 25 % (scratch_cpu) to 55 % (ResNet50,
# 512 px) less CPU time per step on the project's AMX machine (benchmarks/precision_step.py)
# and kept the demo's AP, but the demo was no faster on an idle 2-core clock: "auto" is
# opt-in.
DEFAULT_PRECISION = "float32"
RUN_FILE = "run.json"


class UsageError(ValueError):
    """A flag, argument or environment setting is missing or wrong; the message names it."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM stopped training; the backup holds every finished epoch."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def _sigterm_interrupts():
    """Turns SIGTERM (preemption, `kill`, a scheduler's timeout) into `TrainingInterrupted`.

    Without it SIGTERM ends the process silently. Checkpoints and the backup are written
    atomically, so stopping between any two Python statements keeps them loadable.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def interrupt(signum, frame):
        raise TrainingInterrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_strategy(name: str = "default", tpu: str = ""):
    """The tf.distribute strategy; created before other TensorFlow work, as multi-worker needs."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        if not os.environ.get("TF_CONFIG"):
            raise UsageError("--strategy=multi_worker_mirrored needs the TF_CONFIG environment "
                             "variable (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _tensorboard(log_dir: str) -> list:
    """The TensorBoard callback, or none (with a note) where the package is missing."""
    import keras

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)",
              file=sys.stderr)
        return []
    return [keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0)]


def _truncate_csv(path: str, first_epoch: int):
    """Drops CSV rows of epochs >= first_epoch: a resumed run writes them again."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as file:
        lines = file.readlines()
    if not lines:
        return
    kept = [lines[0]] + [line for line in lines[1:]
                         if line.strip() and int(line.split(",", 1)[0]) < first_epoch]
    if len(kept) != len(lines):
        atomic.write_text(path, "".join(kept))


def train(config, workdir: str, *, strategy: str = "default", precision: str = "float32",
          verbose: int = 1, tpu: str = "", keep_worker_dirs: bool = False, clock=None):
    """`retinanet train` as a function (the demo calls it): fit, checkpoints, final evaluation.

    Args:
        config: a validated ConfigDict (see `retinanet.config`).
        workdir: the run folder (`retinanet.training.workdir` lists what it holds).
        strategy: one of `STRATEGIES`; precision: one of `PRECISIONS` ("auto": see
            `retinanet.hardware.resolve_precision`; the policy used and the reason are
            printed and written to WORKDIR/run.json).
        verbose: Keras verbosity (0 silent, 1 progress bars, 2 one line per epoch).
        tpu: the TPU for strategy "tpu".
        keep_worker_dirs: multi-worker: keep non-chief checkpoints in workdir/workers/.
        clock: a callable returning seconds, for `config.train.time_budget_minutes`
            (default `time.monotonic`; tests inject their own).

    Returns:
        `{"model", "results", "class_names", "val_dataset", "val_data"}` on the chief (the
        model evaluated and the evaluation results); None on other workers.

    Raises:
        ValueError: another run holds the workdir (`retinanet.training.workdir.WorkdirLock`),
            or `precision` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision={precision}: not one of {', '.join(PRECISIONS)}")
    clock = clock or time.monotonic
    started_at = clock()  # the time budget counts from here
    # The workers of one cluster are one run: only the chief takes the lock.
    lock = run_folder.WorkdirLock(workdir) if _task(strategy)[0] else \
        contextlib.nullcontext()
    with lock:
        try:
            return _train(config, workdir, strategy=strategy, precision=precision,
                          verbose=verbose, tpu=tpu, keep_worker_dirs=keep_worker_dirs,
                          clock=clock, started_at=started_at)
        except BaseException:
            if getattr(lock, "created_workdir", False):
                _remove_unfinished_run(workdir)
            raise


def _remove_unfinished_run(workdir: str):
    """Empties a workdir this run created when it failed before saving any epoch, so the
    lock's release removes the folder too (a failed first step leaves nothing behind)."""
    import shutil

    if any(os.path.exists(os.path.join(workdir, name)) for name in ("backup", "checkpoints")):
        return
    for name in os.listdir(workdir):
        if name != run_folder.LOCK_FILE:
            path = os.path.join(workdir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _task(strategy: str):
    """(is_chief, task id) of this process: from TF_CONFIG (what MultiWorkerMirroredStrategy's
    resolver reads) under multi-worker training, (True, 0) otherwise. The chief is the
    "chief" task, or worker 0 of a cluster without one."""
    if strategy != "multi_worker_mirrored":
        return True, 0
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        return True, 0  # make_strategy reports a bad TF_CONFIG
    task = tf_config.get("task", {})
    task_type, task_id = task.get("type"), int(task.get("index", 0))
    if task_type in (None, "chief"):
        return True, task_id
    return (task_type == "worker" and task_id == 0 and
            "chief" not in tf_config.get("cluster", {})), task_id


def _train(config, workdir: str, *, strategy: str, precision: str, verbose: int, tpu: str,
           keep_worker_dirs: bool, clock, started_at: float):
    """The body of `train`, under the workdir lock."""
    rconfig.validate(config)
    # Multi-worker and TPU strategies must exist before any other TensorFlow work; otherwise
    # read the data first, so a bad path fails before TensorFlow starts up its devices.
    early = strategy in ("multi_worker_mirrored", "tpu")
    distribution = make_strategy(strategy, tpu) if early else None
    splits = datasets.load_datasets(config)
    distribution = distribution or make_strategy(strategy, tpu)
    import shutil
    import tempfile

    import keras
    import tensorflow as tf

    from retinanet.training import budget as rbudget, callbacks as rcallbacks
    from retinanet import hardware
    from retinanet.evaluation import EvaluationCallback

    requested = precision
    precision, precision_reason = hardware.resolve_precision(precision, tpu=strategy == "tpu")
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()

    train_set, val_set = splits["train"], splits["val"]
    class_names, category_ids = train_set.class_names, train_set.category_ids
    is_chief, task_id = _task(strategy)
    multi_worker = strategy == "multi_worker_mirrored"
    if is_chief:
        write_dir = workdir
    elif keep_worker_dirs:
        write_dir = os.path.join(workdir, "workers", f"worker_{task_id}")
    else:
        write_dir = tempfile.mkdtemp(prefix=f"retinanet-worker{task_id}-")
    steps = datasets.steps_per_epoch(config, len(train_set))
    backup_dir = os.path.join(workdir, "backup")
    initial_epoch, restored, skipped = rcallbacks.ResumableBackup.restorable(backup_dir)
    for problem in skipped:
        print(f"warning: the backup {problem}; resuming from the backup of epoch "
              f"{initial_epoch} instead", file=sys.stderr, flush=True)
    budget = rbudget.for_run(config, steps, backup_dir, os.path.join(write_dir, "backup"),
                             clock=clock, started_at=started_at, multi_worker=multi_worker,
                             verbose=verbose)
    epochs = budget.epochs(initial_epoch) if budget else config.train.epochs
    # A run that finished cleanly kept its checkpoints, not its backup's weights.
    finished = bool(initial_epoch) and restored is None
    if finished and epochs > initial_epoch:
        raise UsageError(
            f"--workdir={workdir}: this run finished after {initial_epoch} epochs and "
            f"cleared its backup; to train further, start a new workdir from its weights "
            f"(--config.model.init_from={os.path.join(workdir, 'checkpoints', 'last.keras')})")
    csv_path = os.path.join(write_dir, "training_log.csv")
    if initial_epoch:
        print(f"Resuming from the backup in {backup_dir}: {initial_epoch} of {epochs} epochs "
              "done", flush=True)
        if is_chief:
            _truncate_csv(csv_path, initial_epoch)

    with distribution.scope():
        model = builders.build_model(config, len(class_names),
                                    num_replicas=distribution.num_replicas_in_sync)
        builders.compile_model(model, config, steps * epochs)
        if budget:
            model.optimizer.learning_rate = budget.schedule  # its length is set while training
        if multi_worker:
            from retinanet import _keras_compat

            _keras_compat.allow_multi_worker_fit(model)
    # Resized and padded as the model wants (a pretrained detector brings its own rules).
    train_data = datasets.train_pipeline(config, train_set, model=model)
    if config.train.deterministic and initial_epoch:
        # Same batches as an uninterrupted run: the repeated stream is seeded, so skipping the
        # finished epochs' batches continues it exactly.
        train_data = train_data.skip(min(initial_epoch, epochs) * steps)
    val_data = datasets.eval_pipeline(config, val_set, model=model)
    if multi_worker:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
        train_data = train_data.with_options(options)
    # Only now, with the model built (the step that downloads or reads backbone weights and
    # fails on a bad weights setting), does the run leave files in the workdir.
    os.makedirs(write_dir, exist_ok=True)
    if is_chief:
        _check_resumed_config(config, workdir)
        rconfig.save(config, workdir)
        run_folder.write_classes(workdir, class_names, category_ids)
        atomic.write_json(os.path.join(workdir, RUN_FILE), {"precision": {
            "requested": requested, "policy": precision, "reason": precision_reason,
            "cpu_bf16_flags": list(hardware.cpu_bf16_flags())}})
    print(f"Training {config.name}: {len(train_set)} training and {len(val_set)} validation "
          f"images, {len(class_names)} classes, {'as many' if budget else epochs} epochs of "
          f"{steps} steps{' as fit the time budget' if budget else ''}, global batch "
          f"{config.data.batch_size}, strategy {strategy} "
          f"({distribution.num_replicas_in_sync} replicas), precision {precision} "
          f"({precision_reason})"
          + reporting.clipped_note(config, train_set, val_set), flush=True)
    padding = reporting.padding_note(config)
    if padding:
        print(padding, flush=True)
    if budget:
        print(budget.describe(), flush=True)

    checkpoint_dir = os.path.join(write_dir, "checkpoints")
    checkpoints = rcallbacks.Checkpoints(checkpoint_dir, monitor="val_AP", mode="max")
    averaged = bool(config.train.ema_momentum)
    callbacks = [rcallbacks.SwapMovingAverage()] if averaged else []
    every = config.train.eval_every_n_epochs
    if every and not multi_worker:
        # Evaluation first: the callbacks after it read val_AP from the logs.
        callbacks.append(EvaluationCallback(
            val_data, every_n_epochs=every, class_names=class_names, prefix="val_",
            verbose=1 if verbose == 1 else 0, category_ids=category_ids,
            voc_iou_threshold=config.eval.voc_iou_threshold, voc_method=config.eval.voc_method))
    elif every:
        print("multi_worker_mirrored: no evaluation between epochs (the chief evaluates the "
              "last checkpoint at the end); best.keras is not written", flush=True)
    callbacks += [
        # Raises at the first non-finite loss, before any callback saves the broken weights.
        rcallbacks.NonFiniteLossGuard(),
        rcallbacks.StepLogger(),
        checkpoints,
        rcallbacks.TrainingLog(csv_path),
        *_tensorboard(os.path.join(write_dir, "logs")),
        *([budget] if budget else []),
        *([rcallbacks.SwapMovingAverage()] if averaged else []),  # the trained weights back
        # Last: a backup is written only once every other callback has finished the epoch.
        rcallbacks.ResumableBackup(backup_dir, write_dir=os.path.join(write_dir, "backup")),
    ]
    try:
        with _sigterm_interrupts():
            # The pipeline shuffles; shuffle=False only tells Keras not to warn that it cannot.
            # Under a time budget, the budget's own line per epoch replaces Keras's progress
            # ("Epoch 23/1000000" says nothing).
            if not finished:
                model.fit(train_data, epochs=epochs, steps_per_epoch=steps,
                          callbacks=callbacks, verbose=0 if budget else verbose, shuffle=False)
    except OSError as error:  # a full disk or a file size limit, while saving
        written = os.path.join(write_dir, "backup")
        saved = rcallbacks.ResumableBackup.saved_epoch(written)
        safe = (f"the backup of epoch {saved} in {written} is intact: free some space and run "
                "the same command again to resume" if saved else "no epoch was saved yet")
        raise OSError(error.errno, f"{error.strerror or error} while writing "
                                   f"{error.filename or 'a file'}; {safe}") from None
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM
        written = os.path.join(write_dir, "backup")
        saved = rcallbacks.ResumableBackup.saved_epoch(written)
        cause = str(interrupt) or "Ctrl-C"
        print(f"\nTraining interrupted ({cause}): {saved} of {epochs} epochs are saved in "
              f"{written}. Run the same command again to resume.",
              file=sys.stderr, flush=True)
        raise
    if not is_chief:
        if not keep_worker_dirs:
            shutil.rmtree(write_dir, ignore_errors=True)
        print(f"Worker {task_id} done.", flush=True)
        return None

    # The final evaluation runs on the chief alone, outside the strategy: under
    # multi-worker, predicting on the distributed model would wait for the other workers.
    last = os.path.join(checkpoint_dir, "last.keras")
    eval_model = keras.saving.load_model(last) if multi_worker or finished else model
    print(f"Evaluating on {len(val_set)} validation images", flush=True)
    evaluation_started = clock()
    results = reporting.evaluate_and_report(eval_model, config, val_data, workdir, class_names,
                                  category_ids, verbose)
    if budget:
        rbudget.report(budget, workdir, evaluation_s=clock() - evaluation_started)
    if not os.path.isfile(os.path.join(checkpoint_dir, "best.keras")):
        # No evaluation between epochs: the final one makes the last model the best known.
        checkpoints.keep_as_best(eval_model, results["coco"].get("AP"),
                                 rcallbacks.ResumableBackup.saved_epoch(backup_dir))
    rcallbacks.ResumableBackup.close(backup_dir)
    return {"model": eval_model, "results": results, "class_names": class_names,
            "val_dataset": val_set, "val_data": val_data}


def _check_resumed_config(config, workdir: str):
    """Warns when a run resumes with a config other than the one it started with."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(os.path.join(workdir, "backup", "training_metadata.json")) or \
            not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)
    current = rconfig.to_dict(config)
    changed = sorted(rconfig.changed_fields(saved, current))
    if changed:
        print(f"warning: resuming {workdir} with a changed config ({', '.join(changed)}); "
              "the backup restores the old run's weights and optimizer state", file=sys.stderr)
