"""torchvision's COCO RetinaNets through keras-hub presets: architecture options and import.

Everything runs offline: the keras-hub detectors are built with random weights the way
keras-hub's ``tools/checkpoint_conversion/convert_retinanet_checkpoints.py`` builds them
(but with the ResNet50 from `ResNetBackbone` constructor arguments, as its ``from_preset``
downloads), saved with ``save_to_preset`` and loaded back through `RetinaNet.from_preset`.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import make_squares
from keras_hub_presets import ARCHITECTURES, MEAN, STD, keras_hub_detector

import retinanet
from retinanet.anchors import AnchorGenerator
from retinanet.model import presets
from retinanet.model.fpn import FeaturePyramid
from retinanet.model.torchvision_resnet import TorchvisionNormalization

keras_hub = pytest.importorskip("keras_hub")

SIZE = 128


# ----------------------------------------------------------------------------- anchors


def test_torchvision_anchors_level3_match_hand_worked_values():
    # torchvision, level 3 (stride 8): sizes (32, int(32 * 2**(1/3)), int(32 * 2**(2/3)))
    # = (32, int(40.32), int(50.80)) = (32, 40, 50). h_ratios = sqrt(r), w_ratios = 1 / h_ratios,
    # ws = (w_ratios[:, None] * sizes[None, :]).view(-1): ratio major, scale minor.
    # Base anchor = round([-ws, -hs, ws, hs] / 2); centres at (col * 8, row * 8).
    #   r=0.5: w = 1.41421 * (32, 40, 50) = (45.25, 56.57, 70.71) -> halves 22.6, 28.3, 35.4
    #          -> 23, 28, 35; h = 0.70711 * (32, 40, 50) = (22.63, 28.28, 35.36) -> halves
    #          11.3, 14.1, 17.7 -> 11, 14, 18.
    #   r=1:   halves 16, 20, 25.   r=2: the r=0.5 values with x and y swapped.
    expected_at_origin = np.array([
        [-23, -11, 23, 11], [-28, -14, 28, 14], [-35, -18, 35, 18],
        [-16, -16, 16, 16], [-20, -20, 20, 20], [-25, -25, 25, 25],
        [-11, -23, 11, 23], [-14, -28, 14, 28], [-18, -35, 18, 35],
    ], "float32")
    generator = AnchorGenerator(3, 3, convention="torchvision")
    anchors = generator(16, 16).numpy().reshape(2, 2, 9, 4)  # [row, col, anchor, xyxy]
    np.testing.assert_array_equal(anchors[0, 0], expected_at_origin)
    # Row 1, column 0: centre (0, 8); row 0, column 1: centre (8, 0).
    np.testing.assert_array_equal(anchors[1, 0], expected_at_origin + [0, 8, 0, 8])
    np.testing.assert_array_equal(anchors[0, 1], expected_at_origin + [8, 0, 8, 0])


def test_torchvision_anchors_round_halves_to_even():
    # Level 4: sizes (64, int(80.63), int(101.59)) = (64, 80, 101); ratio 1 halves 32, 40 and
    # 50.5 -> 50. Level 5: (128, int(161.27), int(203.19)) = (128, 161, 203); halves 64,
    # 80.5 -> 80 and 101.5 -> 102 (torch.round rounds halves to even).
    generator = AnchorGenerator(4, 5, convention="torchvision")
    level4, level5 = (a.numpy() for a in generator.anchors_per_level(32, 32))
    np.testing.assert_array_equal(level4[3:6, 2:], [[32, 32], [40, 40], [50, 50]])
    np.testing.assert_array_equal(level5[3:6, 2:], [[64, 64], [80, 80], [102, 102]])


def test_anchor_convention_defaults_to_centered_and_is_checked():
    assert AnchorGenerator().convention == "centered"
    with pytest.raises(ValueError, match="convention"):
        AnchorGenerator(convention="detectron")


def test_box_coder_matches_torchvision():
    # torchvision's RetinaNet: BoxCoder(weights=(1, 1, 1, 1)), dw and dh clamped at
    # log(1000 / 16) before exp.
    assert retinanet.LabelEncoder().box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert retinanet.ops.BBOX_XFORM_CLIP == pytest.approx(np.log(1000.0 / 16))


# ----------------------------------------------------------------------------- layers


def test_torchvision_normalization_values():
    layer = TorchvisionNormalization()
    pixel = np.array([[[[255.0, 0.0, 127.5]]]], "float32")
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    np.testing.assert_allclose(layer(pixel).numpy()[0, 0, 0], expected, rtol=1e-6)


def test_fpn_p6_from_p5_takes_fpn_channels():
    features = [np.zeros((1, 16, 16, 8)), np.zeros((1, 8, 8, 16)), np.zeros((1, 4, 4, 32))]
    for p6_input, channels in (("c5", 32), ("p5", 4)):
        fpn = FeaturePyramid(4, 7, p6_input=p6_input)
        outputs = fpn(features)
        assert fpn.extra_convs[0].kernel.shape == (3, 3, channels, 4)
        assert [tuple(o.shape[1:3]) for o in outputs] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    with pytest.raises(ValueError, match="p6_input"):
        FeaturePyramid(4, 7, p6_input="c4")


def test_copy_layer_names_the_layer_on_shape_mismatch():
    source = keras.layers.Conv2D(8, 3)
    source.build((None, None, None, 4))
    target = keras.layers.Conv2D(8, 3)
    target.build((None, None, None, 5))
    with pytest.raises(ValueError, match="FPN conv P6"):
        presets._copy_layer(source, target, "FPN conv P6")


def test_unknown_preset_is_a_value_error():
    with pytest.raises(ValueError, match="preset"):
        retinanet.RetinaNet.from_preset("retinanet_resnet18_coco")


def test_coco_names_and_ids():
    assert len(presets.COCO_CLASS_NAMES) == 91  # torchvision's 91 logits
    assert len(presets.COCO_CATEGORIES) == 80
    assert min(presets.COCO_CATEGORIES) == 1 and max(presets.COCO_CATEGORIES) == 90
    assert presets.COCO_CATEGORIES[1] == "person"
    assert presets.COCO_CATEGORIES[13] == "stop sign"
    assert presets.COCO_CATEGORIES[90] == "toothbrush"
    missing = sorted(set(range(1, 91)) - set(presets.COCO_CATEGORIES))
    assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


# ----------------------------------------------------------------------------- import


@pytest.fixture(scope="module")
def keras_hub_presets(tmp_path_factory):
    """{architecture: (keras-hub detector, preset directory)}."""
    result = {}
    for architecture in ARCHITECTURES:
        detector = keras_hub_detector(architecture, SIZE)
        directory = tmp_path_factory.mktemp(f"retinanet_{architecture}")
        detector.save_to_preset(str(directory))
        result[architecture] = (detector, str(directory))
    return result


@pytest.fixture(scope="module")
def converted(keras_hub_presets):
    return {
        architecture: retinanet.RetinaNet.from_preset(directory)
        for architecture, (_, directory) in keras_hub_presets.items()
    }


@pytest.fixture(scope="module")
def keras_hub_exact(keras_hub_presets):
    """The conversion without torchvision's rules: keras-hub's model, to the last weight."""
    from retinanet.model import presets

    return {architecture: presets.from_keras_hub(detector, torchvision_rules=False)
            for architecture, (detector, _) in keras_hub_presets.items()}


def _images(count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


def _normalise(images):
    scale = np.array([1.0 / 255.0 / s for s in STD], "float32")
    offset = np.array([-m / s for m, s in zip(MEAN, STD)], "float32")
    return images * scale + offset


# Slow: the module fixtures build, save and convert two ResNet50 RetinaNets (~30 s).
@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_architecture_follows_the_preset(converted, architecture):
    model = converted[architecture]
    assert model.fpn.p6_input == ("c5" if architecture == "v2" else "p5")
    # torchvision: LastLevelP6P7(256, 256) in v1, LastLevelP6P7(2048, 256) in v2.
    assert model.fpn.extra_convs[0].kernel.shape[2] == (2048 if architecture == "v2" else 256)
    assert model.classification_head.use_group_norm == (architecture == "v2")
    assert model.anchor_generator.convention == "torchvision"
    assert model.num_classes == 91 and model.class_names[1] == "person"
    # torchvision's rules, where keras-hub's port differs (its P6/P7 pad "same", its
    # GroupNorm epsilon is 1e-3) or the package's defaults do (100 detections).
    assert model.fpn.extra_padding == "symmetric"
    assert model.anchor_generator.stride_multiple == 32
    assert model.postprocessor.max_detections == 300
    if architecture == "v2":
        assert model.classification_head.group_norm_epsilon == 1e-5
        assert model.classification_head.norms[0].epsilon == 1e-5
    normalisation = model.backbone.get_layer("torchvision_normalization")
    np.testing.assert_allclose(normalisation.mean, MEAN, rtol=1e-6)
    np.testing.assert_allclose(normalisation.std, STD, rtol=1e-6)


# Slow: the module fixtures build, save and convert two ResNet50 RetinaNets (~30 s).
@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_raw_outputs_match_keras_hub(keras_hub_presets, keras_hub_exact, architecture):
    detector, _ = keras_hub_presets[architecture]
    model = keras_hub_exact[architecture]
    images = _images()
    ours = model(images)
    theirs = detector(_normalise(images))
    # Both order anchors by level, row, column, then ratio-major / scale-minor, and the
    # anchors themselves agree (keras-hub's are yxyx): no reordering needed.
    their_anchors = detector.anchor_generator(images)
    their_anchors = np.concatenate([np.asarray(a) for a in their_anchors.values()])
    np.testing.assert_array_equal(
        model.anchor_generator(SIZE, SIZE).numpy(), their_anchors[:, [1, 0, 3, 2]]
    )
    np.testing.assert_allclose(ours["cls_logits"], theirs["cls_logits"], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(
        ours["box_deltas"], theirs["bbox_regression"], atol=1e-4, rtol=1e-5
    )


# Slow: the module fixtures build, save and convert two ResNet50 RetinaNets (~30 s).
@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_predict_matches_keras_hub(keras_hub_presets, keras_hub_exact, architecture):
    """Same detections from both decoders at score threshold 0 and the same NMS settings.

    Differences by design, bridged here: keras-hub's decoder neither clamps dw, dh at
    log(1000/16) nor clips boxes to the image (torchvision and ours do both), so its boxes
    are clipped here before its NMS, and the deltas stay far below the clamp. Its NMS is
    class-agnostic on each anchor's best class while ours is class-aware (torchvision's);
    every anchor's best class is class 1 here and more than `max_detections` class-1 boxes
    survive NMS, so both keep the same boxes.
    """
    from keras_hub.src.layers.modeling.non_max_supression import NonMaxSuppression

    detector, _ = keras_hub_presets[architecture]
    model = keras_hub_exact[architecture]
    max_detections = 20
    images = _images(seed=1)
    logits = model(images)["cls_logits"].numpy()
    assert logits[..., 1].min() > np.delete(logits, 1, axis=-1).max()

    postprocessor = model.postprocessor
    postprocessor.score_threshold = 0.0
    postprocessor.pre_nms_topk_per_level = 10**6  # every anchor is a candidate, as in keras-hub
    postprocessor.iou_threshold = 0.5
    postprocessor.max_detections = max_detections
    ours = model.predict(images, verbose=0)

    normalised = _normalise(images)
    raw = detector(normalised)
    anchors = detector.anchor_generator(normalised)
    anchors = keras.ops.concatenate(list(anchors.values()), axis=0)
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors, boxes_delta=raw["bbox_regression"], encoded_format="center_xywh",
        anchor_format="yxyx", box_format="yxyx", image_shape=(SIZE, SIZE, 3),
    )
    boxes = keras.ops.clip(boxes, 0.0, float(SIZE))
    nms = NonMaxSuppression(
        bounding_box_format="yxyx", from_logits=True, iou_threshold=0.5,
        confidence_threshold=0.0, max_detections=max_detections,
    )
    theirs = nms(boxes, raw["cls_logits"], images=normalised)

    np.testing.assert_array_equal(ours["num_detections"], [max_detections] * 2)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(theirs["num_detections"]),
                                  [max_detections] * 2)
    np.testing.assert_array_equal(ours["classes"], keras.ops.convert_to_numpy(theirs["labels"]))
    np.testing.assert_allclose(
        ours["scores"], keras.ops.convert_to_numpy(theirs["confidence"]), atol=1e-4
    )
    their_boxes = keras.ops.convert_to_numpy(theirs["boxes"])[..., [1, 0, 3, 2]]
    np.testing.assert_allclose(ours["boxes"], their_boxes, atol=1e-2)


@pytest.mark.slow
def test_finetune_new_classes_and_keras_round_trip(keras_hub_presets, converted, tmp_path):
    _, directory = keras_hub_presets["v1"]
    model = retinanet.RetinaNet.from_preset(directory, num_classes=1)
    reference = converted["v1"]
    assert model.class_names is None
    output = model.classification_head.output_conv
    assert output.kernel.shape[-1] == 9  # 9 anchors x 1 class
    np.testing.assert_allclose(output.bias.numpy(), -np.log(99.0), rtol=1e-6)  # prior 0.01
    for ours, theirs in (
        (model.box_head.output_conv, reference.box_head.output_conv),
        (model.classification_head.convs[0], reference.classification_head.convs[0]),
        (model.fpn.extra_convs[0], reference.fpn.extra_convs[0]),
    ):
        np.testing.assert_array_equal(ours.kernel.numpy(), theirs.kernel.numpy())

    images, boxes, classes = make_squares(num_images=2, size=SIZE, seed=3)
    classes = np.where(classes >= 0, 0, -1).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    history = model.fit(images, {"boxes": boxes, "classes": classes}, batch_size=2, epochs=6,
                        verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses

    path = tmp_path / "finetuned.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    for key, value in model.predict(images, verbose=0).items():
        np.testing.assert_allclose(restored.predict(images, verbose=0)[key], value, atol=1e-4)

    # The .keras file loads where keras-hub cannot be imported at all.
    script = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "import keras, retinanet\n"
        f"model = keras.saving.load_model({str(path)!r})\n"
        "assert model.fpn.p6_input == 'p5' and model.num_classes == 1\n"
        "assert 'keras_hub' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(
        __import__("pathlib").Path(__file__).resolve().parents[1]))


def test_torchvision_resnet50_backbone_layout():
    from retinanet.model.backbone import BACKBONES, build_backbone

    assert "torchvision_resnet50" in BACKBONES
    backbone = build_backbone("torchvision_resnet50", frozen_batchnorm=True,
                              frozen_early_stages=True)
    features = backbone.get_layer("torchvision_resnet50_features")
    c3, c4, c5 = backbone(np.zeros((1, 64, 96, 3), "float32"))
    assert (c3.shape, c4.shape, c5.shape) == ((1, 8, 12, 512), (1, 4, 6, 1024), (1, 2, 3, 2048))
    # v1.5: the stride sits on the 3x3 conv of the first block of a stage, not the 1x1.
    assert features.get_layer("stack1_block0_1_conv").strides == (1, 1)
    assert features.get_layer("stack1_block0_2_conv").strides == (2, 2)
    convs = [layer for layer in features.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 53 and not any(conv.use_bias for conv in convs)
    norms = [
        layer for layer in features.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert all(norm.epsilon == 1e-5 and not norm.trainable for norm in norms)
    # Stem and res2 frozen (torchvision's trainable_backbone_layers=3), res3 on trainable.
    assert not features.get_layer("conv1_conv").trainable
    assert not features.get_layer("stack0_block2_3_conv").trainable
    assert features.get_layer("stack1_block0_1_conv").trainable
    with pytest.raises(ValueError, match="imagenet"):
        build_backbone("torchvision_resnet50", weights="imagenet")


def _conv3x3_stride2(x, kernel, pad_before, pad_after):
    """Hand-written 3x3 stride-2 conv of `x` [H, W, C] with `kernel` [3, 3, C, F]."""
    padded = np.pad(x, [(pad_before, pad_after), (pad_before, pad_after), (0, 0)])
    rows = (padded.shape[0] - 3) // 2 + 1
    cols = (padded.shape[1] - 3) // 2 + 1
    return np.array([[np.tensordot(padded[2 * r:2 * r + 3, 2 * c:2 * c + 3], kernel, 3)
                      for c in range(cols)] for r in range(rows)])


@pytest.mark.parametrize("extra_padding, pad_before, pad_after",
                         [("symmetric", 1, 1), ("same", 0, 1)])
def test_p6_and_p7_pad_as_torchvision_or_as_keras(extra_padding, pad_before, pad_after):
    """On the even inputs P6 gets, "same" pads 0 before and 1 after; torchvision pads 1 on
    each side, so P6 and P7 of a "same" FPN are torchvision's on a shifted image."""
    from retinanet.model.fpn import FeaturePyramid

    rng = np.random.default_rng(0)
    fpn = FeaturePyramid(filters=2, max_level=7, p6_input="c5", extra_padding=extra_padding)
    c3, c4, c5 = (rng.normal(size=(1, 4 * k, 4 * k, 3)).astype("float32") for k in (4, 2, 1))
    outputs = fpn([c3, c4, c5])
    p6_conv, p7_conv = fpn.extra_convs
    p6 = _conv3x3_stride2(c5[0], p6_conv.kernel.numpy(), pad_before, pad_after) + \
        p6_conv.bias.numpy()
    np.testing.assert_allclose(outputs[3][0], p6, atol=1e-5)
    p7 = _conv3x3_stride2(np.maximum(p6, 0), p7_conv.kernel.numpy(), pad_before, pad_after) + \
        p7_conv.bias.numpy()
    np.testing.assert_allclose(outputs[4][0], p7, atol=1e-5)
    again = FeaturePyramid.from_config(fpn.get_config())
    assert again.extra_padding == extra_padding


def test_torchvision_strides_are_side_over_grid():
    """torchvision pads to 32: an 800 x 1088 canvas gives P7 a 7 x 9 grid, and each level's
    stride is side // grid (114 and 120 on P7), anchors at multiples of it."""
    generator = AnchorGenerator(convention="torchvision")
    assert generator.stride_multiple == 32
    per_level = generator.anchors_per_level(800, 1088)
    p7 = per_level[-1].numpy().reshape(7, 9, 9, 4)  # rows, cols, anchors, xyxy
    centres = (p7[..., :2] + p7[..., 2:]) / 2
    np.testing.assert_allclose(centres[0, :, 0, 0], np.arange(9) * 120, atol=1e-3)
    np.testing.assert_allclose(centres[:, 0, 0, 1], np.arange(7) * 114, atol=1e-3)
    # On a multiple of 2**level the rule gives 2**level: the package's own canvases.
    p3 = generator.anchors_per_level(256, 256)[0].numpy().reshape(32, 32, 9, 4)
    np.testing.assert_allclose((p3[0, :, 0, 0] + p3[0, :, 0, 2]) / 2, np.arange(32) * 8,
                               atol=1e-3)


def _torchvision_state_dict(model):
    """The torchvision state dict of a torchvision-layout `RetinaNet` (the inverse of
    `from_torchvision`'s mapping)."""
    from retinanet.model.torchvision_detector import BACKBONE

    state = {}

    def conv(layer, name, bias=True):
        state[f"{name}.weight"] = layer.kernel.numpy().transpose(3, 2, 0, 1)
        if bias:
            state[f"{name}.bias"] = layer.bias.numpy()

    def norm(layer, name):
        state[f"{name}.weight"], state[f"{name}.bias"] = layer.gamma.numpy(), layer.beta.numpy()
        if hasattr(layer, "moving_mean"):
            state[f"{name}.running_mean"] = layer.moving_mean.numpy()
            state[f"{name}.running_var"] = layer.moving_variance.numpy()

    features = model.backbone.get_layer(f"{BACKBONE}_features")
    conv(features.get_layer("conv1_conv"), "backbone.body.conv1", bias=False)
    norm(features.get_layer("conv1_bn"), "backbone.body.bn1")
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for block in range(blocks):
            ours, theirs = f"stack{stage}_block{block}", f"backbone.body.layer{stage + 1}.{block}"
            for k in (1, 2, 3):
                conv(features.get_layer(f"{ours}_{k}_conv"), f"{theirs}.conv{k}", bias=False)
                norm(features.get_layer(f"{ours}_{k}_bn"), f"{theirs}.bn{k}")
            if block == 0:
                conv(features.get_layer(f"{ours}_0_conv"), f"{theirs}.downsample.0", bias=False)
                norm(features.get_layer(f"{ours}_0_bn"), f"{theirs}.downsample.1")
    for index in range(3):
        conv(model.fpn.lateral_convs[index], f"backbone.fpn.inner_blocks.{index}.0")
        conv(model.fpn.output_convs[index], f"backbone.fpn.layer_blocks.{index}.0")
    for index, level in enumerate((6, 7)):
        conv(model.fpn.extra_convs[index], f"backbone.fpn.extra_blocks.p{level}")
    v2 = model.classification_head.use_group_norm
    for head, theirs, output in ((model.classification_head, "classification_head",
                                  "cls_logits"), (model.box_head, "regression_head", "bbox_reg")):
        for index, layer in enumerate(head.convs):
            conv(layer, f"head.{theirs}.conv.{index}.0", bias=not v2)
            if v2:
                norm(head.norms[index], f"head.{theirs}.conv.{index}.1")
        conv(head.output_conv, f"head.{theirs}.{output}")
    return state


# Slow: the module fixtures build, save and convert two ResNet50 RetinaNets (~30 s).
@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_preset_and_its_torchvision_state_dict_give_the_same_model(converted, architecture,
                                                                     tmp_path):
    """keras-hub's presets hold torchvision's weights: written back as torchvision's state
    dict and read by `from_torchvision`, they make the model the preset makes, weight for
    weight and rule for rule."""
    from_preset = converted[architecture]
    path = tmp_path / "retinanet.npz"
    np.savez(path, **_torchvision_state_dict(from_preset))
    from_file = retinanet.RetinaNet.from_torchvision(path)
    assert from_file.class_names == from_preset.class_names
    for part in ("fpn", "classification_head", "box_head", "postprocessor", "anchor_generator"):
        assert getattr(from_file, part).get_config() == getattr(from_preset, part).get_config()
    def named(model):  # the model's own (numbered) name left out
        return {w.path.split("/", 1)[-1] if w.path.startswith(model.name) else w.path:
                w.numpy() for w in model.weights}

    weights, again = named(from_preset), named(from_file)
    assert sorted(again) == sorted(weights) and len(weights) == len(from_preset.weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
