"""`retinanet.model.group_norm`: the heads' GroupNorm against Keras's (issue 30)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from retinanet.model.group_norm import FastGroupNormalization  # noqa: E402


def _pair(channels=64, groups=32, epsilon=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    reference = keras.layers.GroupNormalization(groups=groups, epsilon=epsilon, name="gn0")
    fast = FastGroupNormalization(groups=groups, epsilon=epsilon, name="gn0")
    for layer in (reference, fast):
        layer.build((None, None, None, channels))
    reference.set_weights([rng.uniform(0.5, 1.5, channels).astype("float32"),
                           rng.uniform(-0.5, 0.5, channels).astype("float32")])
    fast.set_weights(reference.get_weights())
    return reference, fast


def _forward_and_gradients(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    return [y] + tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])


@pytest.mark.parametrize("shape,groups", [((2, 12, 10, 64), 32), ((3, 5, 7, 32), 8),
                                          ((1, 1, 1, 64), 32)])
def test_forward_and_gradients_match_keras(shape, groups):
    reference, fast = _pair(shape[-1], groups)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(1.0, 2.0, shape).astype("float32"))
    upstream = tf.constant(rng.normal(0, 1, shape).astype("float32"))
    expected = _forward_and_gradients(reference, x, upstream)
    actual = _forward_and_gradients(fast, x, upstream)
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), expected, actual):
        scale = max(1.0, float(tf.reduce_max(tf.abs(a))))
        np.testing.assert_allclose(b.numpy() / scale, a.numpy() / scale, atol=1e-5,
                                   err_msg=name)


def test_same_variables_and_config_as_keras():
    reference, fast = _pair()
    assert [v.path for v in fast.weights] == [v.path for v in reference.weights]
    assert fast.get_config() == reference.get_config()


def test_the_heads_use_it_and_their_weights_load_into_keras_layers(monkeypatch):
    from retinanet.model import heads

    assert heads.GroupNormalization is FastGroupNormalization
    make = lambda: heads.RetinaNetHead(4, num_anchors_per_location=1, num_convs=2,  # noqa
                                       filters=64, use_group_norm=True, name="head")
    features = [tf.random.normal([1, 8, 8, 64]), tf.random.normal([1, 4, 4, 64])]
    fast = make()
    expected = fast(features)
    monkeypatch.setattr(heads, "GroupNormalization", keras.layers.GroupNormalization)
    plain = make()
    plain(features)
    assert [v.path for v in plain.weights] == [v.path for v in fast.weights]
    plain.set_weights(fast.get_weights())
    np.testing.assert_allclose(plain(features).numpy(), expected.numpy(), atol=1e-5)
