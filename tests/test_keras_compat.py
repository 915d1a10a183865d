"""The Keras internals of `retinanet._keras_compat` still exist in the installed Keras.

Each test names one internal; when a Keras release inside pyproject.toml's range moves it, the
test that fails says which workaround to update.
"""

import importlib.metadata
import inspect

import keras
import pytest
from packaging.requirements import Requirement

from retinanet import _keras_compat


def test_installed_keras_is_inside_the_range_the_package_allows():
    (keras_requirement,) = [Requirement(text) for text in importlib.metadata.requires("retinanet")
                            if Requirement(text).name == "keras"]
    assert keras_requirement.specifier.contains(keras.__version__)


def test_scale_loss_for_distribution_is_identity_without_a_strategy():
    assert float(_keras_compat.scale_loss_for_distribution(keras.ops.convert_to_tensor(3.0))) \
        == 3.0


def test_all_layers_reaches_nested_layers():
    inner = keras.Sequential([keras.layers.Dense(2), keras.layers.BatchNormalization()])
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
    found = list(_keras_compat.all_layers(outer))
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in found)


def test_jit_compile_off_restores_the_model_setting():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(jit_compile=True)
    assert model._jit_compile is True
    with _keras_compat.jit_compile_off(model):
        assert model._jit_compile is False
    assert model._jit_compile is True


def test_fit_reads_the_initial_epoch_that_set_initial_epoch_writes():
    # fit() re-reads `self._initial_epoch` after `on_train_begin`.
    source = inspect.getsource(type(keras.Model()).fit)
    assert "self._initial_epoch" in source


@pytest.mark.parametrize("name", _keras_compat.BACKUP_AND_RESTORE_HOOKS)
def test_backup_and_restore_still_has_the_overridden_hooks(name):
    assert callable(getattr(keras.callbacks.BackupAndRestore, name))


def test_backup_and_restore_still_tracks_epoch_and_batch(tmp_path):
    source = inspect.getsource(keras.callbacks.BackupAndRestore)
    for attribute in _keras_compat.BACKUP_AND_RESTORE_PROGRESS:
        assert f"self.{attribute}" in source


def test_the_multi_worker_hooks_exist_on_models():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert callable(model._maybe_symbolic_build)
    assert callable(model.train_step)


def test_moving_averages_pairs_each_trainable_variable_with_its_average():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(use_ema=True)
    optimizer.build(model.trainable_variables)
    pairs = _keras_compat.moving_averages(optimizer)
    assert [variable.path for variable, _ in pairs] == \
        [variable.path for variable in model.trainable_variables]
    for variable, average in pairs:
        assert tuple(average.shape) == tuple(variable.shape) and average is not variable
