"""Backbone activation recomputation (retinanet.model.recompute) against the plain backbone."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_on_two_cpus
from retinanet import RetinaNet
from retinanet.model.backbone import build_backbone, build_simple_backbone
from retinanet.model.fused_batchnorm import FusedBatchNormalization
from retinanet.model.recompute import _segments, recomputed_backbone


def _residual_model():
    # input -> a -> b -> c, a + c -> relu: no single tensor carries the graph past b or c.
    inputs = keras.Input((None, None, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c")(b)
    added = keras.layers.Add(name="add")([a, c])
    return keras.Model(inputs, [added, keras.layers.ReLU(name="relu")(added)])


def test_segments_cut_only_where_one_tensor_carries_the_graph():
    model = _residual_model()
    segments, emitted = _segments(model, min_layers=1)
    names = [[layer.name for layer in segment.layers[1:]] for segment in segments]
    assert names == [["a"], ["b", "c", "add"], ["relu"]]
    assert emitted == [None, 0, 1]
    # Merged to at least 2 layers a segment; outputs stay cuts.
    segments, emitted = _segments(model, min_layers=2)
    assert [[layer.name for layer in s.layers[1:]] for s in segments] == [
        ["a", "b", "c", "add"], ["relu"]]
    assert emitted == [0, 1]


def _gradients_and_statistics(backbone, run, images):
    """Features, gradients of a loss on them and the moving means after one call."""
    means = [w for w in backbone.weights if "moving_mean" in w.path]
    start = [w.numpy() for w in means]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            features = run(images)
            loss = tf.add_n([tf.reduce_mean(f ** 2) for f in features])
        return features, tape.gradient(loss, backbone.trainable_weights)

    features, gradients = step()
    after = [w.numpy() for w in means]
    for variable, value in zip(means, start):
        variable.assign(value)
    return features, gradients, after, start


@pytest.mark.parametrize("name", ["simple", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_recomputed_backbone_matches_the_plain_one(name):
    keras.utils.set_random_seed(3)
    backbone = build_simple_backbone() if name == "simple" else build_backbone("resnet50")
    images = tf.random.stateless_uniform([2, 64, 64, 3], [1, 2], 0.0, 255.0)
    plain = _gradients_and_statistics(backbone, lambda x: backbone(x, training=True), images)
    recomputed = _gradients_and_statistics(backbone, recomputed_backbone(backbone), images)
    for expected, actual in zip(plain[0], recomputed[0]):
        np.testing.assert_allclose(actual, expected, atol=1e-6)
    # Within 1e-5 of the largest gradient (biases before a batch norm have true gradient 0
    # and float32 noise of either sign).
    scale = max(float(tf.reduce_max(tf.abs(g))) for g in plain[1])
    for expected, actual in zip(plain[1], recomputed[1]):
        np.testing.assert_allclose(actual, expected, atol=1e-5 * scale)
    # The moving statistics moved, once: as the plain path moved them.
    assert not all(np.allclose(a, b) for a, b in zip(plain[2], plain[3]))
    for expected, actual in zip(plain[2], recomputed[2]):
        np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_recomputation_refuses_batchnorm_that_would_update_twice():
    with pytest.raises(ValueError, match="trains its statistics"):
        recomputed_backbone(build_simple_backbone(fused_batchnorm=False))
    frozen = build_simple_backbone(fused_batchnorm=False)
    for layer in frozen.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    recomputed_backbone(frozen)  # frozen statistics never update: allowed
    backbone = build_simple_backbone()
    run = recomputed_backbone(backbone)
    next(layer for layer in backbone.layers
         if isinstance(layer, FusedBatchNormalization)).synchronized = True
    with pytest.raises(ValueError, match="synchronized=True"):
        run(tf.zeros([1, 64, 64, 3]))  # as the trainer sets it after construction
    with pytest.raises(ValueError, match="functional"):
        recomputed_backbone(keras.layers.Dense(3))


def test_retinanet_option_trains_the_same_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    targets = {"boxes": np.array([[[10, 20, 70, 90]], [[40, 30, 120, 100]]], "float32"),
               "classes": np.array([[0], [1]], "int32")}
    losses, weights = [], []
    for recompute in (False, True):
        keras.utils.set_random_seed(5)
        model = RetinaNet(num_classes=2, backbone=build_simple_backbone(), fpn_filters=16,
                          head_filters=16, head_convs=1, recompute_backbone=recompute)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        history = model.fit(images, targets, batch_size=2, epochs=2, verbose=0)
        losses.append(history.history["loss"])
        weights.append(model.get_weights())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for expected, actual in zip(*weights):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.recompute_backbone and loaded.get_config()["recompute_backbone"]
    np.testing.assert_allclose(loaded.predict_on_batch(images[:1])["boxes"],
                               model.predict_on_batch(images[:1])["boxes"], atol=1e-4)


_MIRRORED_SCRIPT = """
    import json, sys
    import keras
    import numpy as np
    from retinanet.model.backbone import build_simple_backbone
    from retinanet.model.recompute import recomputed_backbone

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")

    def run(recompute):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            backbone = build_simple_backbone()
            optimizer = keras.optimizers.SGD(0.1)
            optimizer.build(backbone.trainable_variables)
        forward = (recomputed_backbone(backbone) if recompute
                   else lambda x: backbone(x, training=True))

        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.add_n([tf.reduce_mean(f ** 2) for f in forward(x)]) / 2.0
            gradients = tape.gradient(loss, backbone.trainable_variables)
            optimizer.apply_gradients(zip(gradients, backbone.trainable_variables))

        @tf.function
        def distributed_step(x):
            strategy.run(step, args=(x,))

        dataset = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices(images).batch(4))
        for _ in range(2):
            for x in dataset:
                distributed_step(x)
        return {"replicas": strategy.num_replicas_in_sync,
                "weights": [w.numpy().tolist() for w in backbone.weights]}

    json.dump({"plain": run(False), "recomputed": run(True)}, sys.stdout)
"""


@pytest.mark.slow
def test_mirrored_strategy_training_matches_the_plain_backbone():
    runs = run_on_two_cpus(_MIRRORED_SCRIPT)
    assert runs["plain"]["replicas"] == runs["recomputed"]["replicas"] == 2
    initial = build_simple_backbone().weights  # names and count only
    assert len(runs["plain"]["weights"]) == len(initial)
    for expected, actual in zip(runs["plain"]["weights"], runs["recomputed"]["weights"]):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
