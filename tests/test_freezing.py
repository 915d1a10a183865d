"""Freezing defaults follow the backbone's weights: frozen when pretrained, trainable from scratch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import retinanet
from retinanet import _keras_compat
from retinanet.model.backbone import build_backbone, follow_weights


def _norms(model):
    return [layer for layer in _keras_compat.all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _frozen_convs(model):
    return [layer.name for layer in _keras_compat.all_layers(model)
            if isinstance(layer, keras.layers.Conv2D) and not layer.trainable]


@pytest.mark.parametrize("flag, pretrained, expected", [
    (None, False, False), (None, True, True),
    (True, False, True), (False, True, False),
])
def test_follow_weights(flag, pretrained, expected):
    assert follow_weights(flag, pretrained) is expected


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    plain = keras.applications.MobileNetV3Small(input_shape=(None, None, 3), include_top=False,
                                                weights=None)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet.weights.h5")
    plain.save_weights(path)
    return path


def test_random_weights_train_everything_by_default():
    backbone = build_backbone("mobilenet_v3_small")
    assert all(layer.trainable for layer in _norms(backbone))
    assert not _frozen_convs(backbone)


def test_weights_file_freezes_by_default(weights_file):
    backbone = build_backbone("mobilenet_v3_small", weights=weights_file)
    assert not any(layer.trainable for layer in _norms(backbone))
    assert _frozen_convs(backbone)


def test_explicit_true_freezes_random_weights():
    backbone = build_backbone("mobilenet_v3_small", frozen_batchnorm=True,
                              frozen_early_stages=True)
    assert not any(layer.trainable for layer in _norms(backbone))
    assert _frozen_convs(backbone)


def test_explicit_false_trains_pretrained_weights(weights_file):
    backbone = build_backbone("mobilenet_v3_small", weights=weights_file,
                              frozen_batchnorm=False, frozen_early_stages=False)
    assert all(layer.trainable for layer in _norms(backbone))
    assert not _frozen_convs(backbone)


def test_torchvision_resnet_follows_its_weights_too():
    from retinanet.model.torchvision_resnet import build_torchvision_resnet

    scratch = build_torchvision_resnet()
    assert all(layer.trainable for layer in _norms(scratch)) and not _frozen_convs(scratch)
    frozen = build_torchvision_resnet(frozen_batchnorm=True, frozen_early_stages=True)
    assert not any(layer.trainable for layer in _norms(frozen))
    assert "conv1_conv" in _frozen_convs(frozen)


def test_config_default_follows_the_weights(weights_file):
    from retinanet import config as rconfig
    from retinanet.training import builders

    config = rconfig.default_config()
    config.model.backbone = "mobilenet_v3_small"
    config.model.fpn_filters = config.model.head_filters = 16
    assert config.model.frozen_batchnorm is None and config.model.frozen_early_stages is None
    scratch = builders.build_model(config, num_classes=2)
    assert all(layer.trainable for layer in _norms(scratch.backbone))
    config.model.backbone_weights = weights_file
    pretrained = builders.build_model(config, num_classes=2)
    assert not any(layer.trainable for layer in _norms(pretrained.backbone))
    config.model.frozen_batchnorm = False  # explicit wins
    explicit = builders.build_model(config, num_classes=2)
    # Batch norm trains after stride 4; the early stages (their norms too) still follow the
    # weights and stay frozen.
    norms = _norms(explicit.backbone)
    assert any(layer.trainable for layer in norms) and not all(layer.trainable for layer in norms)
    assert _frozen_convs(explicit.backbone)
    # A saved config keeps "unset" as null and reads it back as None.
    assert rconfig.from_dict(rconfig.to_dict(rconfig.default_config())).model \
        .frozen_batchnorm is None


def test_from_scratch_resnet50_activations_stay_normalised():
    """Frozen batch norm on random weights multiplies the scale at every block; trainable
    batch norm (the from-scratch default) keeps C3-C5 near unit scale in training mode."""
    model = retinanet.RetinaNet(2, backbone="resnet50", fpn_filters=16, head_filters=16,
                                head_convs=1)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    features = model.backbone(images, training=True)
    stds = [float(np.std(keras.ops.convert_to_numpy(f))) for f in features]
    assert all(0.3 <= std <= 3.0 for std in stds), stds


def _bias_model():
    # a -> bn_a; b -> bn_b and b -> add: only a's bias is cancelled by a batch norm alone.
    inputs = keras.Input((None, None, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn_a")(a))
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)
    y = keras.layers.BatchNormalization(name="bn_b")(b)
    return keras.Model(inputs, keras.layers.Add()([y, b]))


def test_only_biases_a_training_batch_norm_cancels_stop_training():
    from retinanet.model.backbone import set_redundant_biases

    model = _bias_model()
    set_redundant_biases(model)
    assert not model.get_layer("a").bias.trainable  # cancelled by bn_a's batch mean
    assert model.get_layer("b").bias.trainable  # also read by the add
    # The premise: the cancelled bias's gradient is float32 noise, the kernel's is not.
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images, training=True) ** 2)
    conv = model.get_layer("a")
    bias_gradient, kernel_gradient = tape.gradient(loss, [conv.bias, conv.kernel])
    assert np.abs(bias_gradient).max() < 1e-5 * np.abs(kernel_gradient).max()
    # A frozen batch norm normalises by its moving statistics: the bias shifts the output.
    model.get_layer("bn_a").trainable = False
    set_redundant_biases(model)
    assert model.get_layer("a").bias.trainable


def test_resnet50_trains_its_biases_only_where_they_count():
    training = retinanet.RetinaNet(2, backbone="resnet50", frozen_batchnorm=False,
                                   frozen_early_stages=False, fpn_filters=32, head_filters=32)
    convs = [layer for layer in _keras_compat.all_layers(training.backbone)
             if isinstance(layer, keras.layers.Conv2D)]
    trainable = {id(variable) for variable in training.trainable_variables}
    assert len(convs) == 53 and all(conv.use_bias for conv in convs)
    assert not any(id(conv.bias) in trainable for conv in convs)
    assert all(id(conv.kernel) in trainable for conv in convs)
    frozen = retinanet.RetinaNet(2, backbone="resnet50", frozen_batchnorm=True,
                                 frozen_early_stages=False, fpn_filters=32, head_filters=32)
    trainable = {id(variable) for variable in frozen.trainable_variables}
    assert all(id(layer.bias) in trainable for layer in _keras_compat.all_layers(frozen.backbone)
               if isinstance(layer, keras.layers.Conv2D))
    # Freezing done after construction is followed when the model is compiled.
    for layer in _norms(training.backbone):
        layer.trainable = False
    training.compile()
    assert all(conv.bias.trainable for conv in convs)
