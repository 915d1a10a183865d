"""FusedAdam (tf.raw_ops.ResourceApplyAdam) against keras.optimizers.Adam."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_on_two_cpus
from retinanet.fused_adam import FusedAdam

ATOL = 1e-6


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2)(x)
    return keras.Model(inputs, outputs)


def _data(seed=1, n=16):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6, 6, 3)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


def _assert_close(actual, expected, atol=ATOL):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=0, atol=atol)


def _optimizer_state(optimizer):
    return [v.numpy() for v in optimizer.variables]


def _fit(optimizer_class, epochs=3, **kwargs):
    model = _model()
    model.compile(optimizer=optimizer_class(**kwargs), loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)  # 2 steps/epoch
    return model


def _train_step(model, optimizer):
    """A compiled MSE training step of `model` with `optimizer`."""

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    return step


def _manual(optimizer_class, steps=6, **kwargs):
    model = _model()
    optimizer = optimizer_class(**kwargs)
    x, y = _data()
    step = _train_step(model, optimizer)
    for _ in range(steps):
        step(x, y)
    return model, optimizer


OPTIONS = {
    "plain": {},
    "clipnorm": {"clipnorm": 0.05},
    "global_clipnorm": {"global_clipnorm": 0.05},
    "ema": {"use_ema": True, "ema_momentum": 0.5},
    "weight_decay": {"weight_decay": 0.1},
    "schedule": {"learning_rate": "schedule"},
}


def _kwargs(name):
    kwargs = {"learning_rate": 0.01, **OPTIONS[name]}
    if kwargs["learning_rate"] == "schedule":
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
            0.02, decay_steps=2, decay_rate=0.5)
    return kwargs


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_fit_matches_keras_adam(option):
    expected = _fit(keras.optimizers.Adam, **_kwargs(option))
    actual = _fit(FusedAdam, **_kwargs(option))
    assert int(actual.optimizer.iterations.numpy()) == 6
    _assert_close(actual.get_weights(), expected.get_weights())
    _assert_close(_optimizer_state(actual.optimizer), _optimizer_state(expected.optimizer))
    # The weights moved: the comparison is not of two untouched models.
    assert not np.allclose(actual.get_weights()[0], _model().get_weights()[0])


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_apply_gradients_matches_keras_adam(option):
    expected, expected_optimizer = _manual(keras.optimizers.Adam, **_kwargs(option))
    actual, actual_optimizer = _manual(FusedAdam, **_kwargs(option))
    _assert_close(actual.get_weights(), expected.get_weights())
    _assert_close(_optimizer_state(actual_optimizer), _optimizer_state(expected_optimizer))


def _traced_op_types(optimizer):
    model = _model()
    x, y = _data()
    step = _train_step(model, optimizer)
    step(x, y)  # builds the optimizer's variables outside the traced graph

    def op_types(graph):
        types = {op.type for op in graph.get_operations()}
        for function in graph._functions.values():  # conds, e.g. gradient accumulation
            types |= {node.op for node in function.definition.node_def}
        return types

    return op_types(step.get_concrete_function(x, y).graph)


def test_fused_kernel_is_in_the_graph():
    assert "ResourceApplyAdam" in _traced_op_types(FusedAdam(0.01, clipnorm=1.0))
    assert "ResourceApplyAdam" not in _traced_op_types(keras.optimizers.Adam(0.01))


def test_bitwise_keras_adam_when_one_minus_beta_is_exact():
    """The only difference is the kernel's float32 `1 - beta`: with betas whose
    `1 - beta` is exact in float32, the results are Keras's to the bit."""
    kwargs = {"learning_rate": 0.01, "beta_1": 0.5, "beta_2": 0.75, "clipnorm": 0.05}
    expected, expected_optimizer = _manual(keras.optimizers.Adam, **kwargs)
    actual, actual_optimizer = _manual(FusedAdam, **kwargs)
    _assert_close(actual.get_weights(), expected.get_weights(), 0)
    _assert_close(_optimizer_state(actual_optimizer), _optimizer_state(expected_optimizer), 0)


def test_amsgrad_falls_back_and_matches_keras():
    assert "ResourceApplyAdam" not in _traced_op_types(FusedAdam(0.01, amsgrad=True))
    expected, expected_optimizer = _manual(keras.optimizers.Adam, learning_rate=0.01,
                                           amsgrad=True)
    actual, actual_optimizer = _manual(FusedAdam, learning_rate=0.01, amsgrad=True)
    _assert_close(actual.get_weights(), expected.get_weights())
    _assert_close(_optimizer_state(actual_optimizer), _optimizer_state(expected_optimizer))


def test_sparse_gradients_fall_back_and_match_keras():
    def run(optimizer_class):
        variable = keras.Variable(np.arange(12, dtype="float32").reshape(4, 3))
        optimizer = optimizer_class(0.1)
        for step in range(3):
            gradient = tf.IndexedSlices(tf.fill((2, 3), float(step + 1)),
                                        tf.constant([0, 2 + step % 2]), tf.constant([4, 3]))
            optimizer.apply_gradients([(gradient, variable)])
        return [variable.numpy()] + _optimizer_state(optimizer)

    _assert_close(run(FusedAdam), run(keras.optimizers.Adam))


def test_config_matches_keras_adam():
    kwargs = {"learning_rate": 0.003, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-5,
              "clipnorm": 2.0, "weight_decay": 0.01}
    config = FusedAdam(**kwargs).get_config()
    # The same keys and values; only the default name differs (fused_adam, adam).
    assert config["name"].startswith("fused_adam")
    assert FusedAdam(name="opt", **kwargs).get_config() == \
        keras.optimizers.Adam(name="opt", **kwargs).get_config()
    assert isinstance(FusedAdam.from_config(config), FusedAdam)
    assert keras.saving.get_registered_name(FusedAdam) == "retinanet>FusedAdam"


def test_keras_file_round_trip_continues_training_identically(tmp_path):
    x, y = _data()
    model = _model()
    model.compile(optimizer=FusedAdam(0.01, clipnorm=1.0), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is FusedAdam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert [v.path for v in loaded.optimizer.variables] == \
        [v.path for v in model.optimizer.variables]
    _assert_close(_optimizer_state(loaded.optimizer), _optimizer_state(model.optimizer), 0)
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _assert_close(loaded.get_weights(), model.get_weights(), 0)
    _assert_close(_optimizer_state(loaded.optimizer), _optimizer_state(model.optimizer), 0)


def test_importing_retinanet_registers_fused_adam_for_load_model(tmp_path):
    """`import keras, retinanet` then `load_model`, in a fresh process, as the package's
    docstring promises for its other classes."""
    model = _model()
    model.compile(optimizer=FusedAdam(0.01, clipnorm=1.0), loss="mse")
    model.fit(*_data(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    script = ("import sys, keras, retinanet\n"
              "model = keras.saving.load_model(sys.argv[1])\n"
              "print(type(model.optimizer).__module__, type(model.optimizer).__name__)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["retinanet.fused_adam", "FusedAdam"]


def test_default_and_configured_adam_are_fused():
    from retinanet.config import default_config
    from retinanet.schedules import default_optimizer
    from retinanet.training.builders import build_optimizer

    optimizer = default_optimizer()
    assert type(optimizer) is FusedAdam and optimizer.clipnorm == 10.0
    config = default_config()
    config.train.optimizer = "adam"
    config.train.weight_decay = 1e-4
    optimizer = build_optimizer(config, 100)
    assert type(optimizer) is FusedAdam and optimizer.weight_decay == 1e-4


_MIRRORED_SCRIPT = """
    import json, sys
    import keras
    import numpy as np
    from retinanet.fused_adam import FusedAdam

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    targets = rng.normal(size=(8, 1)).astype("float32")

    def run(optimizer_class):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            inputs = keras.Input((6, 6, 3))
            x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
            x = keras.layers.GlobalAveragePooling2D()(x)
            outputs = keras.layers.Dense(1)(x)
            model = keras.Model(inputs, outputs)
            optimizer = optimizer_class(0.01, clipnorm=1.0)
            optimizer.build(model.trainable_variables)

        def step(x, y):
            with tf.GradientTape() as tape:
                predictions = model(x, training=True)
                loss = tf.reduce_sum((predictions - y) ** 2) / 8.0
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return predictions

        @tf.function
        def distributed_step(x, y):
            return strategy.run(step, args=(x, y))

        dataset = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((images, targets)).batch(8))
        for _ in range(2):
            for x, y in dataset:
                distributed_step(x, y)
                graph = distributed_step.get_concrete_function(x, y).graph
                fused_ops = sum(op.type == "ResourceApplyAdam"
                                for op in graph.get_operations())
        # Every replica's copy of every variable, so that a replica left behind shows.
        replicas = [[c.numpy().tolist() for c in
                     strategy.experimental_local_results(v.value)] for v in model.weights]
        return {"replicas": strategy.num_replicas_in_sync, "fused_ops": int(fused_ops),
                "iterations": int(optimizer.iterations.numpy()),
                "weights": [w.numpy().tolist() for w in model.weights],
                "replica_weights": replicas,
                "slots": [v.numpy().tolist() for v in optimizer.variables[2:]]}

    json.dump({"keras": run(keras.optimizers.Adam), "fused": run(FusedAdam)}, sys.stdout)
"""


@pytest.mark.slow
def test_mirrored_strategy_training_step_matches_keras():
    runs = run_on_two_cpus(_MIRRORED_SCRIPT)
    plain, fused = runs["keras"], runs["fused"]
    assert plain["replicas"] == fused["replicas"] == 2
    assert plain["iterations"] == fused["iterations"] == 2
    # The kernel is used inside the distributed update: one per variable per replica.
    assert plain["fused_ops"] == 0
    assert fused["fused_ops"] == 2 * 4
    assert len(fused["weights"]) == len(plain["weights"]) == 4
    _assert_close(fused["weights"], plain["weights"], 1e-5)
    _assert_close(fused["slots"], plain["slots"], 1e-5)
    for copies in fused["replica_weights"]:
        assert len(copies) == 2
        _assert_close([copies[1]], [copies[0]], 0)
    _assert_close([c[0] for c in fused["replica_weights"]], plain["weights"], 1e-5)
