import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_squares, make_tiny_backbone

import retinanet
from retinanet.evaluation import VOCEvaluator
from retinanet.anchors import AnchorGenerator
from retinanet.model import FeaturePyramid, RetinaNetHead


@pytest.fixture(scope="module")
def resnet50_model():
    # Frozen as when fine-tuning from ImageNet (random weights alone leave both trainable).
    return retinanet.RetinaNet(20, backbone="resnet50", frozen_batchnorm=True,
                               frozen_early_stages=True)


def test_resnet50_512_input_gives_49104_anchors(resnet50_model):
    outputs = resnet50_model(np.zeros((1, 512, 512, 3), "float32"))
    assert outputs["cls_logits"].shape == (1, 49104, 20)
    assert outputs["box_deltas"].shape == (1, 49104, 4)
    assert outputs["cls_logits"].dtype == tf.float32


@pytest.mark.parametrize("shape", [(1, 256, 256), (3, 256, 256), (2, 384, 640), (1, 200, 300)])
def test_predict_output_shapes(tiny_retinanet, shape):
    model = tiny_retinanet()
    # A zero score threshold makes every image produce detections to check.
    model.postprocessor.score_threshold = 0.0
    images = np.random.default_rng(0).uniform(0, 255, shape + (3,)).astype("uint8")
    detections = model.predict(images, verbose=0)
    batch, height, width = shape
    assert detections["boxes"].shape == (batch, 100, 4)
    assert detections["scores"].shape == (batch, 100)
    assert detections["classes"].shape == (batch, 100)
    assert detections["num_detections"].shape == (batch,)
    assert detections["classes"].dtype == np.int32
    assert np.all(detections["num_detections"] == 100)
    boxes = detections["boxes"]
    assert boxes[..., [0, 2]].max() <= width and boxes[..., [1, 3]].max() <= height
    assert boxes.min() >= 0
    assert np.all(np.diff(detections["scores"], axis=1) <= 1e-6), "scores must be sorted"


def test_padding_of_detections(tiny_retinanet):
    model = tiny_retinanet()
    detections = model.predict(np.zeros((2, 128, 128, 3), "float32"), verbose=0)
    # Random init predicts p = 0.01 < 0.05 everywhere: nothing is detected.
    assert np.all(detections["num_detections"] == 0)
    assert np.all(detections["classes"] == -1)
    assert np.all(detections["scores"] == 0)


def test_torchvision_preprocessing_pads_with_the_mean_colour_and_clips_per_image(
        tiny_retinanet, tmp_path):
    from retinanet.preprocess import IMAGENET_MEAN_255

    image = np.random.default_rng(0).uniform(0, 255, (1, 50, 70, 3)).astype("float32")
    for rules, color in (("retinanet", (0, 0, 0)), ("torchvision", IMAGENET_MEAN_255)):
        model = tiny_retinanet(preprocessing=rules)
        canvas = np.empty((1, 128, 128, 3), "float32")
        canvas[...] = color
        canvas[:, :50, :70] = image
        for key, value in model(image).items():
            np.testing.assert_allclose(value, model(canvas)[key], atol=1e-5, err_msg=rules)
    assert model.get_config()["preprocessing"] == "torchvision"
    model.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras").preprocessing == "torchvision"
    # Two images of one batch, each clipped to its own size before NMS.
    model.postprocessor.score_threshold = 0.0
    found = model.predict_on_batch({"images": np.concatenate([canvas, canvas]),
                                    "image_sizes": np.array([[50, 70], [20, 30]])})
    assert found["boxes"][0].max() <= 70 and found["boxes"][0][:, 3].max() <= 50
    assert found["boxes"][0].max() > 30  # it was clipped, not empty
    assert found["boxes"][1][:, 0::2].max() <= 30 and found["boxes"][1][:, 1::2].max() <= 20
    with pytest.raises(ValueError, match="preprocessing"):
        tiny_retinanet(preprocessing="pytorch")


def test_one_anchor_generator_and_box_coder_for_targets_losses_and_decoding(tiny_retinanet):
    from retinanet import AnchorGenerator, ATSSMatcher, BoxCoder, LabelEncoder
    from retinanet.model import DetectionPostprocessor

    model = tiny_retinanet(matcher=ATSSMatcher(), box_coder=BoxCoder((2, 2, 1, 1)))
    assert model.label_encoder.anchor_generator is model.anchor_generator
    assert model.postprocessor.anchor_generator is model.anchor_generator
    assert model.postprocessor.box_coder is model.box_coder is model.label_encoder.box_coder
    assert isinstance(model.label_encoder.matcher, ATSSMatcher)
    with pytest.raises(ValueError, match="anchor generator"):
        tiny_retinanet(anchor_generator=AnchorGenerator(),
                       label_encoder=LabelEncoder(AnchorGenerator(anchor_size=8.0)))
    with pytest.raises(ValueError, match="box coder"):
        tiny_retinanet(box_coder=BoxCoder((2, 2, 1, 1)),
                       postprocessor=DetectionPostprocessor(AnchorGenerator()))
    with pytest.raises(ValueError, match="not both"):
        tiny_retinanet(matcher=ATSSMatcher(), label_encoder=LabelEncoder())


@pytest.mark.slow
@pytest.mark.parametrize("option", ["atss", "quality_focal", "both"])
def test_atss_and_quality_focal_loss_train_through_fit(option, tiny_retinanet):
    import tensorflow as tf

    from retinanet import ATSSMatcher
    from retinanet.losses import QualityFocalLoss

    keras.utils.set_random_seed(0)
    images, boxes, classes = make_squares(num_images=8)
    model = tiny_retinanet(matcher=ATSSMatcher() if option != "quality_focal" else None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  classification_loss=QualityFocalLoss() if option != "atss" else None)

    def positive_scores():
        encoded = model.label_encoder.encode(boxes, classes, 128, 128)
        logits = tf.gather(model(images)["cls_logits"], tf.maximum(encoded["cls_targets"], 0),
                           batch_dims=2)
        return float(tf.reduce_mean(tf.boolean_mask(tf.sigmoid(logits),
                                                    encoded["anchor_states"] == 1)))

    before = positive_scores()
    history = model.fit(images, {"boxes": boxes, "classes": classes}, batch_size=4, epochs=8,
                        verbose=0).history
    # Quality focal loss moves its own targets (the boxes' IoU rises as they train), so its
    # total need not fall in a few steps; the box loss must, and positives' scores rise.
    for name in ("loss", "cls_loss", "box_loss"):
        assert all(np.isfinite(history[name])), name
    assert history["box_loss"][-1] < history["box_loss"][0]
    assert min(history["num_positives"]) > 0
    assert positive_scores() > before


def test_class_head_prior_and_gaussian_init():
    head = RetinaNetHead(80, 9, prior_probability=0.01)
    head.build([(None, 8, 8, 256)])
    bias = head.output_conv.bias.numpy()
    np.testing.assert_allclose(bias, -math.log(99), rtol=1e-6)
    kernel = head.convs[0].kernel.numpy()
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001
    assert head.output_conv.kernel.shape == (3, 3, 256, 9 * 80)


def test_fpn_levels_and_channels():
    fpn = FeaturePyramid(filters=64, max_level=7)
    features = [tf.zeros([2, 32, 48, 8]), tf.zeros([2, 16, 24, 16]), tf.zeros([2, 8, 12, 32])]
    levels = fpn(features)
    assert [tuple(level.shape) for level in levels] == [
        (2, 32, 48, 64), (2, 16, 24, 64), (2, 8, 12, 64), (2, 4, 6, 64), (2, 2, 3, 64)
    ]
    # P6 reads C5 (32 channels); P7 reads P6.
    assert fpn.extra_convs[0].kernel.shape == (3, 3, 32, 64)
    assert fpn.extra_convs[1].kernel.shape == (3, 3, 64, 64)


@pytest.mark.parametrize("max_level", [5, 6])
def test_shorter_pyramids_build_and_pad_to_their_own_multiple(tiny_retinanet, max_level):
    anchors = AnchorGenerator(max_level=max_level)
    model = tiny_retinanet(anchor_generator=anchors)
    assert len(model.fpn.extra_convs) == max_level - 5
    outputs = model(tf.zeros([1, 40, 70, 3]))
    # Padded to multiples of 2**max_level: 64 x 128 for P5, 64 x 128 for P6.
    multiple = 2**max_level
    padded = (-(-40 // multiple) * multiple, -(-70 // multiple) * multiple)
    assert outputs["cls_logits"].shape[1] == anchors.num_anchors(*padded)
    detections = model.predict(np.zeros([1, 40, 70, 3], np.float32), verbose=0)
    assert detections["boxes"].shape == (1, 100, 4)


def test_fpn_and_head_parameter_count_by_hand(resnet50_model):
    c = 256
    conv3 = 9 * c * c + c
    fpn = (512 + 1024 + 2048) * c + 3 * c + 3 * conv3 + (9 * 2048 * c + c) + conv3
    heads = 2 * 4 * conv3 + (9 * c * 9 * 20 + 9 * 20) + (9 * c * 9 * 4 + 9 * 4)
    assert resnet50_model.fpn.count_params() == fpn
    assert (
        resnet50_model.classification_head.count_params() + resnet50_model.box_head.count_params()
        == heads
    )
    assert resnet50_model.backbone.count_params() == keras.applications.ResNet50(
        include_top=False, weights=None
    ).count_params()


def test_resnet_preprocessing_matches_keras(resnet50_model):
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    layer = resnet50_model.backbone.get_layer("caffe_preprocessing")
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(layer(images), expected, atol=1e-4)


def test_frozen_batchnorm_and_freeze_backbone():
    model = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", fpn_filters=32, head_filters=32,
                                frozen_batchnorm=True)
    norms = [
        layer for layer in model.backbone.layers[-1].layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and not any(layer.trainable for layer in norms)
    frozen = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", freeze_backbone=True)
    assert not frozen.backbone.trainable_weights
    assert frozen.fpn.trainable_weights and frozen.box_head.trainable_weights


def test_frozen_early_stages_are_the_stem_and_res2(resnet50_model):
    features = resnet50_model.backbone.layers[-1]
    frozen = [layer.name for layer in features.layers if layer.weights and not layer.trainable
              and not isinstance(layer, keras.layers.BatchNormalization)]
    assert frozen[0] == "conv1_conv" and frozen[-1].startswith("conv2_block3")
    assert all(name.startswith(("conv1_", "conv2_")) for name in frozen)
    assert features.get_layer("conv3_block1_1_conv").trainable
    # By hand: conv1 7x7x3x64 + 64; res2 block 1 has 1x1 64->64, 3x3 64->64, 1x1 64->256
    # and the 1x1 64->256 shortcut; blocks 2 and 3 start with 1x1 256->64 instead.
    conv1 = 7 * 7 * 3 * 64 + 64
    block1 = (64 * 64 + 64) + (9 * 64 * 64 + 64) + 2 * (64 * 256 + 256)
    block23 = (256 * 64 + 64) + (9 * 64 * 64 + 64) + (64 * 256 + 256)
    trainable = retinanet.RetinaNet(20, backbone="resnet50", frozen_batchnorm=True,
                                    frozen_early_stages=False)
    assert _trainable_count(trainable) - _trainable_count(resnet50_model) == \
        conv1 + block1 + 2 * block23 == 223_872


def _trainable_count(model):
    return sum(int(np.prod(variable.shape)) for variable in model.trainable_variables)


def test_frozen_early_stages_of_other_backbones_stop_at_stride_4():
    model = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", fpn_filters=32,
                                head_filters=32, frozen_early_stages=True)
    # The same application at a fixed size gives each layer's output stride; squeeze-excite
    # layers (1x1 pooled outputs) belong to the stage they sit in.
    sized = keras.applications.MobileNetV3Small(input_shape=(128, 128, 3), include_top=False,
                                                weights=None)
    last_stride_4 = max(index for index, layer in enumerate(sized.layers)
                        if len(layer.output.shape) == 4 and layer.output.shape[1] == 32)
    weighted = [(index, layer) for index, layer in enumerate(model.backbone.layers[-1].layers)
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    for index, layer in weighted:
        assert type(layer) is type(sized.layers[index])
        assert layer.trainable == (index > last_stride_4), layer.name
    assert sum(not layer.trainable for _, layer in weighted) >= 3


def test_backbone_weights_from_a_file(tmp_path):
    # A weights file of the plain application, as keras.applications would write it.
    plain = keras.applications.MobileNetV3Small(
        input_shape=(None, None, 3), include_top=False, weights=None
    )
    path = str(tmp_path / "mobilenet.weights.h5")
    plain.save_weights(path)
    model = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", backbone_weights=path)
    assert len(model.backbone.weights) == len(plain.weights)
    for loaded, saved in zip(model.backbone.weights, plain.weights):
        np.testing.assert_array_equal(loaded.numpy(), saved.numpy())
    fresh = retinanet.RetinaNet(2, backbone="mobilenet_v3_small")
    assert not all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fresh.backbone.weights, plain.weights)
    )


def test_unknown_backbone_zero_classes_and_missing_weights_raise():
    with pytest.raises(ValueError, match="backbone"):
        retinanet.RetinaNet(3, backbone="vgg99")
    with pytest.raises(ValueError, match="num_classes"):
        retinanet.RetinaNet(0, backbone=make_tiny_backbone())
    with pytest.raises(ValueError, match="backbone_weights"):
        retinanet.RetinaNet(3, backbone="resnet50", backbone_weights="/no/such/file.weights.h5")


def _squares_dataset(images, boxes, classes, batch_size=4):
    return (
        tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "classes": classes}))
        .shuffle(len(images), seed=0)
        .repeat()
        .batch(batch_size)
    )


def _voc_map50(model, images, boxes, classes):
    detections = model.predict(images, verbose=0)
    evaluator = VOCEvaluator(class_names=["red", "green", "blue"])
    for i in range(len(images)):
        valid = classes[i] >= 0
        count = detections["num_detections"][i]
        evaluator.update(
            str(i), boxes[i][valid], classes[i][valid],
            detections["boxes"][i][:count], detections["scores"][i][:count],
            detections["classes"][i][:count],
        )
    return evaluator.result()["mAP"]


@pytest.mark.slow
def test_overfits_a_handful_of_images(tiny_retinanet):
    keras.utils.set_random_seed(1)
    images, boxes, classes = make_squares(num_images=8)
    model = tiny_retinanet()
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=10.0))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(
        _squares_dataset(images, boxes, classes), steps_per_epoch=100, epochs=3, verbose=0
    )
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert {"cls_loss", "box_loss", "num_positives"} <= set(history.history)
    changed = [not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights)]
    assert all(changed)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    assert _voc_map50(model, images, boxes, classes) >= 0.9


def test_keras_cv_dict_input_trains(tiny_retinanet):
    images, boxes, classes = make_squares(num_images=4)
    model = tiny_retinanet()
    model.compile()
    dataset = tf.data.Dataset.from_tensor_slices(
        {"images": images, "bounding_boxes": {"boxes": boxes, "classes": classes}}
    ).batch(2)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["num_positives"][0] > 0
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    assert {"loss", "cls_loss", "box_loss"} <= set(results)


def test_compile_rejects_a_loss_argument(tiny_retinanet):
    with pytest.raises(ValueError, match="loss"):
        tiny_retinanet().compile(loss="mse")


def test_missing_targets_are_a_clear_error(tiny_retinanet):
    model = tiny_retinanet()
    model.compile()
    with pytest.raises(ValueError, match="boxes"):
        model.fit(np.zeros((2, 128, 128, 3), "float32"), np.zeros((2, 3)), verbose=0)


def test_keras_file_round_trip(tiny_retinanet, tmp_path):
    model = tiny_retinanet()
    model.postprocessor.score_threshold = 0.0
    images = make_squares(num_images=2)[0]
    expected = model.predict(images, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode is on by default
    assert isinstance(loaded, retinanet.RetinaNet)
    actual = loaded.predict(images, verbose=0)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])


def test_keras_file_keeps_compile_state(tiny_retinanet, tmp_path):
    model = tiny_retinanet()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), box_loss_weight=2.0)
    images, boxes, classes = make_squares(num_images=2)
    model.fit(images, {"boxes": boxes, "classes": classes}, epochs=1, verbose=0)
    path = str(tmp_path / "trained.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.compiled and loaded.box_loss_weight == 2.0
    assert isinstance(loaded.classification_loss, retinanet.losses.FocalLoss)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_only_round_trip(tiny_retinanet, tmp_path):
    model = tiny_retinanet()
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    other = tiny_retinanet()
    other.load_weights(path)
    images = make_squares(num_images=1)[0]
    np.testing.assert_array_equal(
        model(images)["cls_logits"].numpy(), other(images)["cls_logits"].numpy()
    )


def test_named_backbone_keras_round_trip(tmp_path):
    model = retinanet.RetinaNet(2, backbone="mobilenet_v3_small", fpn_filters=32, head_filters=32)
    images = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    path = str(tmp_path / "mobile.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded(images)["cls_logits"], model(images)["cls_logits"], atol=1e-6
    )
