"""Every use of Keras internals in the package, in one place.

Each function here relies on something Keras does not document as public. They are tested
against the Keras versions pyproject.toml allows (tests/test_keras_compat.py), so an internal that
moves fails one named test rather than training somewhere deep.
"""

from __future__ import annotations

import contextlib

import keras
from keras.src.losses.loss import scale_loss_for_distribution  # noqa: F401  (re-exported)

# The hooks of `keras.callbacks.BackupAndRestore` that `BackupAndRestoreHooks` overrides, and
# the attributes it reads: the epoch and batch of the state being saved.
BACKUP_AND_RESTORE_HOOKS = ("_load_model", "_save_model")
BACKUP_AND_RESTORE_PROGRESS = ("_current_epoch", "_last_batch_seen")


class BackupAndRestoreHooks(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with its private load and save hooks as `restore()` and `save()`.

    Keras keeps its own schedule of saves (every epoch or `save_freq` batches) and calls
    `_save_model` then; a subclass implements `save` (and `restore`, which `on_train_begin`
    calls) without naming Keras internals. `progress()` is the (epoch, batch) being saved.
    """

    def on_train_begin(self, logs=None):
        self.restore()

    def _load_model(self):
        self.restore()

    def _save_model(self):
        self.save()

    def progress(self):
        return self._current_epoch, self._last_batch_seen

    def restore(self):
        raise NotImplementedError

    def save(self):
        raise NotImplementedError


def all_layers(model):
    """Every layer inside `model`, nested ones included (`Model._flatten_layers`)."""
    return model._flatten_layers()


@contextlib.contextmanager
def jit_compile_off(model):
    """Builds functions with `jit_compile` off inside the block, then restores it."""
    jit_compile, model._jit_compile = model._jit_compile, False
    try:
        yield
    finally:
        model._jit_compile = jit_compile


def set_initial_epoch(model, epoch: int):
    """Makes a running `fit` start at `epoch`; it reads this after `on_train_begin`."""
    model._initial_epoch = int(epoch)


def moving_averages(optimizer):
    """(variable, its moving average) pairs of an optimizer built with `use_ema=True`."""
    return [(variable, average) for variable, average in
            zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)
            if average is not None]


def allow_multi_worker_fit(model):
    """Lets Keras 3's `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Two steps of `fit` fail there, both in Keras, not in the model:

    - Before training, `fit` averages one distributed batch across workers with
      `strategy.reduce` only to build the model symbolically, and that reduce fails ("Attempt
      to convert a value (PerReplica...) to a Tensor"). RetinaNet creates its weights in its
      constructor (only the weightless postprocessor waits for `predict`), so the optimizer
      is built here and that step becomes a no-op on this model instance.
    - After each step the logs are averaged with `strategy.reduce("MEAN", v, axis=0)`, which
      fails on scalars ("Invalid reduction dimension 0"). The train step here returns them
      as `[1]` vectors, which that reduce averages back to scalars.
    """
    import tensorflow as tf

    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step = model.train_step

    def train_step_with_vector_logs(data):
        logs = train_step(data)
        return {key: tf.reshape(value, [1]) if value.shape.rank == 0 else value
                for key, value in logs.items()}

    model.train_step = train_step_with_vector_logs
