"""FusedBatchNormalization against Keras's BatchNormalization, and fuse_batchnorm."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_on_two_cpus
from retinanet.model.fused_batchnorm import FusedBatchNormalization, fuse_batchnorm

SHAPE = (4, 9, 11, 16)


def _random_weights(layer, rng):
    """Weights away from the initial ones, so that gamma, beta and the moving statistics
    all matter; variances stay positive."""
    for variable in layer.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))


def _pair(rng, shape=SHAPE, **kwargs):
    """A Keras layer and a fused layer, built for `shape`, with the same random weights."""
    plain = keras.layers.BatchNormalization(**kwargs)
    fused = FusedBatchNormalization(**kwargs)
    plain.build(shape)
    fused.build(shape)
    _random_weights(plain, rng)
    fused.set_weights(plain.get_weights())
    return plain, fused


def _inputs(rng, shape=SHAPE):
    # Mean 2 and spread 3: far from the moving statistics, so training and inference
    # modes give clearly different outputs.
    return tf.constant(rng.normal(2.0, 3.0, shape).astype("float32"))


def _op_types(layer, shape, training, dtype="float32"):
    function = tf.function(lambda x: layer(x, training=training))
    graph = function.get_concrete_function(tf.TensorSpec(shape, dtype)).graph
    return {op.type for op in graph.get_operations()}


def _assert_close(actual, expected, tolerance=1e-5):
    """Within `tolerance` absolutely or relative to the largest expected value (gradients
    are sums over many elements: their float32 rounding grows with their size)."""
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)


def test_same_variables_and_config_as_keras():
    plain, fused = _pair(np.random.default_rng(0), momentum=0.9, epsilon=1e-4)
    assert [v.name for v in fused.weights] == ["gamma", "beta", "moving_mean",
                                               "moving_variance"]
    assert [v.name for v in fused.weights] == [v.name for v in plain.weights]
    assert [v.trainable for v in fused.weights] == [True, True, False, False]
    plain_config, fused_config = plain.get_config(), fused.get_config()
    del plain_config["name"], fused_config["name"]
    assert fused_config == plain_config


@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_keras_and_the_formula(training):
    rng = np.random.default_rng(1)
    plain, fused = _pair(rng, momentum=0.9)
    x = _inputs(rng)
    gamma, beta, moving_mean, moving_variance = plain.get_weights()
    expected = plain(x, training=training)
    actual = fused(x, training=training)
    _assert_close(actual, expected)
    # The textbook formula, in float64.
    x64 = x.numpy().astype("float64")
    if training:
        mean, variance = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    else:
        mean, variance = moving_mean, moving_variance
    _assert_close(actual, (x64 - mean) / np.sqrt(variance + 1e-3) * gamma + beta)
    # The kernel in training mode; Keras's own computation in inference mode.
    assert ("FusedBatchNormV3" in _op_types(fused, SHAPE, training)) == training


@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_keras(training):
    # Inference mode too: a frozen backbone still passes gradients to its input.
    rng = np.random.default_rng(2)
    plain, fused = _pair(rng)
    x = _inputs(rng)
    # A random linear loss: every output element gets a different gradient.
    upstream = tf.constant(rng.normal(size=SHAPE).astype("float32"))
    gradients = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=training) * upstream)
        gradients.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for expected, actual in zip(*gradients):
        _assert_close(actual, expected)
    # d loss / d beta is the upstream gradient summed per channel, whatever the moments.
    _assert_close(gradients[1][2], upstream.numpy().sum(axis=(0, 1, 2)))


def test_moving_statistics_match_keras_after_training_calls():
    rng = np.random.default_rng(3)
    plain, fused = _pair(rng, momentum=0.9)
    moving_mean, moving_variance = plain.get_weights()[2:]
    for _ in range(3):
        x = _inputs(rng)
        plain(x, training=True)
        fused(x, training=True)
        # Keras's update: moving * momentum + batch * (1 - momentum), biased variance.
        x64 = x.numpy().astype("float64")
        moving_mean = moving_mean * 0.9 + x64.mean(axis=(0, 1, 2)) * 0.1
        moving_variance = moving_variance * 0.9 + x64.var(axis=(0, 1, 2)) * 0.1
    for expected, actual in zip(plain.get_weights(), fused.get_weights()):
        _assert_close(actual, expected)
    _assert_close(fused.moving_mean, moving_mean)
    _assert_close(fused.moving_variance, moving_variance)


def test_moving_variance_is_the_biased_one_worked_by_hand():
    # One channel, values 1 and 3: mean 2, biased variance 1 (the unbiased one is 2).
    # Momentum 0.5 from mean 0, variance 1: moving mean 1, moving variance 1 (1.5 if the
    # kernel's Bessel-corrected variance leaked through).
    layer = FusedBatchNormalization(momentum=0.5)
    layer(tf.constant([[[[1.0], [3.0]]]]), training=True)
    np.testing.assert_allclose(layer.moving_mean.numpy(), [1.0], atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [1.0], atol=1e-6)


def test_single_value_per_channel_gives_zero_variance():
    # One value per channel: the kernel's n - 1 is 0; Keras's biased variance is 0.
    layer = FusedBatchNormalization(momentum=0.5, moving_variance_initializer="zeros")
    outputs = layer(tf.constant([[[[5.0, -2.0]]]]), training=True)
    np.testing.assert_allclose(outputs.numpy(), [[[[0.0, 0.0]]]], atol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), [2.5, -1.0], atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [0.0, 0.0], atol=1e-6)


def test_frozen_layer_runs_in_inference_mode_and_keeps_its_statistics():
    rng = np.random.default_rng(4)
    plain, fused = _pair(rng)
    plain.trainable = fused.trainable = False
    before = fused.get_weights()
    x = _inputs(rng)
    _assert_close(fused(x, training=True), plain(x, training=False))
    _assert_close(fused(x, training=True), fused(x, training=False))
    for expected, actual in zip(before, fused.get_weights()):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("case", ["rank2", "axis1", "renorm", "small_epsilon",
                                  "synchronized", "mask"])
def test_falls_back_to_keras_where_the_kernel_does_not_fit(case):
    rng = np.random.default_rng(5)
    shape, kwargs, mask = SHAPE, {}, None
    if case == "rank2":
        shape = (12, 16)
    elif case == "axis1":
        shape, kwargs = (4, 16, 9, 11), {"axis": 1}
    elif case == "renorm":
        kwargs = {"renorm": True}
    elif case == "small_epsilon":
        kwargs = {"epsilon": 1e-6}
    elif case == "synchronized":
        kwargs = {"synchronized": True}
    else:
        shape = (4, 9, 16)
        mask = tf.constant(rng.uniform(size=shape[:2]) > 0.3)
    plain, fused = _pair(rng, shape, **kwargs)
    x = _inputs(rng, shape)
    for training in (True, False):
        expected = plain(x, training=training, mask=mask)
        _assert_close(fused(x, training=training, mask=mask), expected)
    for expected, actual in zip(plain.get_weights(), fused.get_weights()):
        _assert_close(actual, expected)
    if mask is None:
        assert "FusedBatchNormV3" not in _op_types(fused, shape, True)


@pytest.mark.parametrize("policy,tolerance", [("mixed_float16", 1e-2),
                                              ("mixed_bfloat16", 5e-2)])
def test_mixed_precision(policy, tolerance):
    # Half-precision outputs: about 3 (float16) and 2 (bfloat16) significant digits.
    rng = np.random.default_rng(6)
    plain, fused = _pair(rng, dtype=policy)
    half = policy.removeprefix("mixed_")
    x = tf.cast(_inputs(rng), half)
    for training in (True, False):
        expected, actual = plain(x, training=training), fused(x, training=training)
        assert actual.dtype == expected.dtype == half
        _assert_close(tf.cast(actual, "float32"), tf.cast(expected, "float32"), tolerance)
    # Statistics stay float32, updated from float32 moments.
    assert fused.moving_mean.dtype == "float32"
    for expected, actual in zip(plain.get_weights(), fused.get_weights()):
        _assert_close(actual, expected, 1e-3)
    assert "FusedBatchNormV3" in _op_types(fused, SHAPE, True, half)


def _small_model(name="small", batchnorm=keras.layers.BatchNormalization):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = batchnorm(momentum=0.9, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(x)
    x = batchnorm(momentum=0.9, epsilon=1.001e-5, name="bn2")(x)
    return keras.Model(inputs, x, name=name)


def test_keras_file_round_trip_keeps_class_config_and_outputs(tmp_path):
    rng = np.random.default_rng(7)
    model = _small_model(batchnorm=FusedBatchNormalization)
    for layer in model.layers:
        if isinstance(layer, FusedBatchNormalization):
            _random_weights(layer, rng)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for name in ("bn1", "bn2"):
        assert type(loaded.get_layer(name)) is FusedBatchNormalization
        assert loaded.get_layer(name).get_config() == model.get_layer(name).get_config()
    x = _inputs(rng, (2, 10, 12, 3))
    for training in (True, False):
        _assert_close(loaded(x, training=training), model(x, training=training))
    with open(tmp_path / "config.json", "w") as file:
        json.dump(model.get_layer("bn1").get_config(), file)  # JSON-serialisable config


@pytest.mark.parametrize("by_name", [False, True])
def test_legacy_h5_weights_load_into_the_fused_layer(tmp_path, by_name):
    # The format of keras.applications' ImageNet weights: layers by name or by order.
    rng = np.random.default_rng(8)
    plain_model = _small_model()
    for layer in plain_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _random_weights(layer, rng)
    plain_model.save(tmp_path / "plain.h5")
    fused_model = _small_model(batchnorm=FusedBatchNormalization)
    fused_model.load_weights(tmp_path / "plain.h5", by_name=by_name)
    x = _inputs(rng, (2, 10, 12, 3))
    for training in (True, False):
        _assert_close(fused_model(x, training=training), plain_model(x, training=training))


def test_model_fit_matches_keras():
    # Keras's own training loop (a compiled train step, XLA where Keras chooses it).
    rng = np.random.default_rng(11)
    images = rng.normal(2.0, 3.0, (8, 6, 6, 3)).astype("float32")
    targets = rng.normal(size=(8, 6, 6, 8)).astype("float32")
    results = []
    for batchnorm in (keras.layers.BatchNormalization, FusedBatchNormalization):
        keras.utils.set_random_seed(1)
        model = _small_model(batchnorm=batchnorm)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        history = model.fit(images, targets, batch_size=4, epochs=2, shuffle=False,
                            verbose=0)
        results.append((history.history["loss"], model.get_weights()))
    (plain_loss, plain_weights), (fused_loss, fused_weights) = results
    _assert_close(fused_loss, plain_loss)
    for expected, actual in zip(plain_weights, fused_weights):
        _assert_close(actual, expected)


def _nested_model():
    """A functional model around a nested functional model, a nested Sequential, and a
    frozen batch normalisation."""
    inner = _small_model("inner")
    sequential = keras.Sequential([keras.layers.Conv2D(4, 1),
                                   keras.layers.BatchNormalization(name="seq_bn")],
                                  name="sequential_part")
    inputs = keras.Input((None, None, 3))
    x = inner(inputs)
    x = keras.layers.BatchNormalization(name="frozen_bn", trainable=False)(x)
    x = sequential(x)
    return keras.Model(inputs, x, name="outer")


def _all_layers(model):
    """The layers of `model` and of the models nested in it, in order."""
    layers = []
    for layer in model.layers:
        layers.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers


def test_fuse_batchnorm_on_nested_model():
    rng = np.random.default_rng(9)
    model = _nested_model()
    model.build((None, None, None, 3))
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    fused = fuse_batchnorm(model)

    original_bns = [layer for layer in _all_layers(model)
                    if isinstance(layer, keras.layers.BatchNormalization)]
    fused_bns = [layer for layer in _all_layers(fused)
                 if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(original_bns) == len(fused_bns) == 4
    assert all(type(layer) is keras.layers.BatchNormalization for layer in original_bns)
    assert all(type(layer) is FusedBatchNormalization for layer in fused_bns)
    assert ([layer.name for layer in fused_bns] == [layer.name for layer in original_bns]
            == ["bn1", "bn2", "frozen_bn", "seq_bn"])
    assert not fused.get_layer("frozen_bn").trainable
    # A copy: no variable shared.
    assert not {id(v.value) for v in model.weights} & {id(v.value) for v in fused.weights}

    x = _inputs(rng, (2, 10, 12, 3))
    _assert_close(fused(x, training=False), model(x, training=False))
    _assert_close(fused(x, training=True), model(x, training=True))
    for expected, actual in zip(model.get_weights(), fused.get_weights()):
        _assert_close(actual, expected)


def test_fuse_batchnorm_rejects_what_it_cannot_clone():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="`model`"):
        fuse_batchnorm(Subclassed())
    with pytest.raises(ValueError, match="`model`"):
        fuse_batchnorm(keras.layers.BatchNormalization())


def test_fuse_batchnorm_on_resnet50():
    rng = np.random.default_rng(10)
    model = keras.applications.ResNet50(weights=None, include_top=False,
                                        input_shape=(None, None, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _random_weights(layer, rng)
    fused = fuse_batchnorm(model)
    assert sum(type(layer) is FusedBatchNormalization for layer in fused.layers) == 53
    assert not any(type(layer) is keras.layers.BatchNormalization
                   for layer in fused.layers)
    x = tf.constant(rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    _assert_close(fused(x, training=False), model(x, training=False), 1e-5)
    # Training mode through 53 layers normalising by batch moments of as few as 8 values
    # per channel (2 images of 2x2 at stride 32) amplifies float32 rounding; each layer
    # alone matches to 1e-5 (the tests above).
    _assert_close(fused(x, training=True), model(x, training=True), 1e-3)
    for expected, actual in zip(model.get_weights(), fused.get_weights()):
        _assert_close(actual, expected, 1e-3)


_MIRRORED_SCRIPT = """
    import json, sys
    import keras
    import numpy as np
    from retinanet.model.fused_batchnorm import FusedBatchNormalization

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, (8, 6, 6, 3)).astype("float32")
    targets = rng.normal(size=(8, 1)).astype("float32")

    def run(batchnorm):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            inputs = keras.Input((6, 6, 3))
            x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
            x = batchnorm(momentum=0.8, name="bn")(x)
            x = keras.layers.GlobalAveragePooling2D()(x)
            outputs = keras.layers.Dense(1)(x)
            model = keras.Model(inputs, outputs)
            optimizer = keras.optimizers.SGD(0.1)
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
        outputs = []
        for _ in range(2):
            for x, y in dataset:
                per_replica = distributed_step(x, y)
                graph = distributed_step.get_concrete_function(x, y).graph
                fused_ops = any(op.type == "FusedBatchNormV3"
                                for op in graph.get_operations())
                outputs.append(np.concatenate(
                    [t.numpy() for t in strategy.experimental_local_results(per_replica)]))
        layer = model.get_layer("bn")
        return {"replicas": strategy.num_replicas_in_sync,
                "class": type(layer).__name__,
                "fused_ops": fused_ops,
                "outputs": np.stack(outputs).tolist(),
                "weights": [w.numpy().tolist() for w in model.weights]}

    json.dump({"plain": run(keras.layers.BatchNormalization),
               "fused": run(FusedBatchNormalization)}, sys.stdout)
"""


def test_mirrored_strategy_training_step_matches_keras(tmp_path):
    runs = run_on_two_cpus(_MIRRORED_SCRIPT)
    plain, fused = runs["plain"], runs["fused"]
    assert plain["replicas"] == fused["replicas"] == 2
    assert (plain["class"], fused["class"]) == ("BatchNormalization",
                                                "FusedBatchNormalization")
    assert (plain["fused_ops"], fused["fused_ops"]) == (False, True)
    _assert_close(fused["outputs"], plain["outputs"])
    # Conv, gamma, beta, moving mean and variance, dense: after two SGD steps.
    assert len(plain["weights"]) == len(fused["weights"]) == 8
    for expected, actual in zip(plain["weights"], fused["weights"]):
        _assert_close(actual, expected)
    # The moving statistics moved from their initial 0 and 1.
    assert not np.allclose(fused["weights"][4], 0.0)
    assert not np.allclose(fused["weights"][5], 1.0)


# ----------------------------------------------------------------------------- the option


def _batchnorms(model):
    """Every batch normalisation layer inside `model`, nested ones included."""
    from retinanet import _keras_compat

    return [layer for layer in _keras_compat.all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _copy_retinanet_weights(source, target):
    """Backbone layers by name (the fused copy may order them differently), the rest as is."""
    from retinanet import _keras_compat

    target_layers = {layer.name: layer for layer in _keras_compat.all_layers(target.backbone)}
    for layer in _keras_compat.all_layers(source.backbone):
        if layer.weights and not isinstance(layer, keras.Model):
            target_layers[layer.name].set_weights(layer.get_weights())
    for part in ("fpn", "classification_head", "box_head"):
        getattr(target, part).set_weights(getattr(source, part).get_weights())


def test_retinanet_option_gives_fused_layers_and_the_same_outputs():
    import retinanet

    rng = np.random.default_rng(12)
    models = {}
    for fused in (False, True):
        models[fused] = retinanet.RetinaNet(2, backbone="resnet50", fpn_filters=32,
                                            head_filters=32, head_convs=1,
                                            fused_batchnorm=fused)
    plain, fused = models[False], models[True]
    assert {type(layer) for layer in _batchnorms(plain)} == {keras.layers.BatchNormalization}
    assert {type(layer) for layer in _batchnorms(fused)} == {FusedBatchNormalization}
    assert len(_batchnorms(fused)) == len(_batchnorms(plain)) == 53
    # Random weights: nothing frozen, as without the option.
    assert all(layer.trainable for layer in _batchnorms(fused))
    assert _trainable_names(fused) == _trainable_names(plain)
    for layer in _batchnorms(plain):
        _random_weights(layer, rng)
    _copy_retinanet_weights(plain, fused)
    images = tf.constant(rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    for key in ("cls_logits", "box_deltas"):
        # The heads' outputs are small next to the backbone's features (random statistics
        # let them grow): 1e-4 of the outputs is float32 rounding of the features.
        _assert_close(fused(images, training=False)[key], plain(images, training=False)[key],
                      1e-4)
        # Training mode: batch moments of few values per channel at stride 32 (see
        # test_fuse_batchnorm_on_resnet50).
        _assert_close(fused(images, training=True)[key], plain(images, training=True)[key],
                      1e-3)


def _trainable_names(model):
    # Backbone variables: the model's own name prefixes the rest and differs between the two.
    return sorted(variable.path for variable in model.backbone.trainable_variables)


def test_frozen_flags_apply_to_the_fused_backbone():
    from retinanet.model.backbone import build_backbone

    backbone = build_backbone("resnet50", frozen_batchnorm=True, frozen_early_stages=True,
                              fused_batchnorm=True)
    features = backbone.get_layer("resnet50_features")
    norms = _batchnorms(backbone)
    assert norms and all(type(layer) is FusedBatchNormalization and not layer.trainable
                         for layer in norms)
    assert not features.get_layer("conv1_conv").trainable
    assert not features.get_layer("conv2_block3_3_conv").trainable
    assert features.get_layer("conv3_block1_1_conv").trainable
    # The endpoints are C3, C4, C5 as without the option.
    assert [tuple(output.shape) for output in backbone.outputs] == [
        (None, None, None, 512), (None, None, None, 1024), (None, None, None, 2048)]


def test_plain_weights_file_loads_into_the_fused_backbone(tmp_path):
    import retinanet

    plain = keras.applications.MobileNetV3Small(input_shape=(None, None, 3),
                                                include_top=False, weights=None)
    rng = np.random.default_rng(13)
    for layer in _batchnorms(plain):
        _random_weights(layer, rng)
    path = str(tmp_path / "mobilenet.weights.h5")
    plain.save_weights(path)
    model = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", backbone_weights=path,
                                fpn_filters=32, head_filters=32, fused_batchnorm=True)
    assert {type(layer) for layer in _batchnorms(model)} == {FusedBatchNormalization}
    features = model.backbone.get_layer("mobilenet_v3_small_features")
    for layer in (layer for layer in plain.layers if layer.weights):
        for saved, loaded in zip(layer.weights, features.get_layer(layer.name).weights):
            np.testing.assert_array_equal(loaded.numpy(), saved.numpy())


def test_retinanet_with_the_fused_backbone_keras_round_trip(tmp_path):
    import retinanet

    model = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", fpn_filters=32,
                                head_filters=32, frozen_batchnorm=False,
                                fused_batchnorm=True)
    path = str(tmp_path / "fused.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    norms = _batchnorms(loaded)
    assert norms and {type(layer) for layer in norms} == {FusedBatchNormalization}
    assert all(layer.trainable for layer in norms)
    images = tf.constant(np.random.default_rng(14).uniform(0, 255, (2, 96, 96, 3))
                         .astype("float32"))
    for training in (False, True):
        _assert_close(loaded(images, training=training)["cls_logits"],
                      model(images, training=training)["cls_logits"])
    # A model saved with Keras's layer loads back with Keras's layer.
    plain = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", fpn_filters=32,
                                head_filters=32, fused_batchnorm=False)
    plain.save(tmp_path / "plain.keras")
    reloaded = keras.models.load_model(tmp_path / "plain.keras")
    assert {type(layer) for layer in _batchnorms(reloaded)} == {keras.layers.BatchNormalization}


def _tiny_config():
    import importlib.util

    from retinanet import config as rconfig

    spec = importlib.util.spec_from_file_location("config_tiny",
                                                  rconfig.resolve_config_file("tiny"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("fused", [True, False])
def test_config_field_reaches_the_model(fused):
    from retinanet.training import builders

    config = _tiny_config()
    assert config.model.fused_batchnorm is True  # the default
    config.model.fused_batchnorm = fused
    model = builders.build_model(config, num_classes=2)
    expected = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    norms = _batchnorms(model.backbone)
    assert norms and {type(layer) for layer in norms} == {expected}
    assert all(layer.momentum == 0.9 for layer in norms)


def test_sync_batchnorm_falls_back_to_keras_in_the_fused_layers():
    from retinanet.training import builders

    model = builders.build_model(_tiny_config(), num_classes=2, num_replicas=2)
    norms = _batchnorms(model.backbone)
    assert norms and all(type(layer) is FusedBatchNormalization and layer.synchronized
                         for layer in norms)
    shape = (2, 8, 8, norms[0].gamma.shape[0])
    assert "FusedBatchNormV3" not in _op_types(norms[0], shape, True)
