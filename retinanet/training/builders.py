"""Builders: a config (`retinanet.config`) to the package's own objects.

Each builder calls the real constructor directly; a ValueError or TypeError raised inside is
re-raised once, at the builder's boundary, as a `ConfigError` naming the config section.
"""

from __future__ import annotations

import contextlib
import os

from retinanet.config import ConfigError


@contextlib.contextmanager
def config_section(field: str):
    """Re-raises ValueError / TypeError from the block as ConfigError(`"{field}: ..."`)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{field}: {error}") from None


def build_anchor_generator(config):
    from retinanet.anchors import AnchorGenerator

    anchors = config.model.anchors
    with config_section("config.model.anchors"):
        return AnchorGenerator(min_level=3, max_level=anchors.max_level,
                               anchor_size=anchors.anchor_size, scales=tuple(anchors.scales),
                               aspect_ratios=tuple(anchors.aspect_ratios))


def build_label_encoder(config, anchor_generator=None):
    from retinanet.matching import ATSSMatcher, IoUMatcher, LabelEncoder

    matching = config.model.matching
    anchor_generator = anchor_generator or build_anchor_generator(config)
    with config_section("config.model.matching"):
        if matching.method == "atss":
            matcher = ATSSMatcher(top_k=matching.atss_top_k)
        else:
            matcher = IoUMatcher(positive_iou=matching.positive_iou,
                                 negative_iou=matching.negative_iou,
                                 allow_low_quality_matches=matching.allow_low_quality_matches)
        return LabelEncoder(anchor_generator=anchor_generator, matcher=matcher)


def build_postprocessor(config, anchor_generator, label_encoder):
    from retinanet.model.postprocess import DetectionPostprocessor

    post = config.model.postprocess
    with config_section("config.model.postprocess"):
        return DetectionPostprocessor(
            anchor_generator=anchor_generator, box_coder=label_encoder.box_coder,
            score_threshold=post.score_threshold,
            pre_nms_topk_per_level=post.pre_nms_topk_per_level,
            iou_threshold=post.iou_threshold, max_detections=post.max_detections,
            name="postprocessor")


def _backbone(model):
    """The `backbone` argument of `RetinaNet` and the keyword arguments of named backbones."""
    from retinanet.config import check_choice
    from retinanet.model.backbone import BACKBONES, build_simple_backbone

    check_choice("config.model.backbone", model.backbone, (*sorted(BACKBONES), "simple"))
    weights = model.backbone_weights or None
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise ConfigError(f"config.model.backbone_weights: file not found: {weights}")
    if model.backbone != "simple":
        from retinanet.model.backbone import follow_weights

        pretrained = bool(weights) or bool(model.init_from)
        return model.backbone, {
            "backbone_weights": weights,
            "frozen_batchnorm": follow_weights(model.frozen_batchnorm, pretrained),
            "frozen_early_stages": follow_weights(model.frozen_early_stages, pretrained),
            "fused_batchnorm": bool(model.fused_batchnorm)}
    if weights:
        raise ConfigError("config.model.backbone_weights: the simple backbone has no "
                          "pretrained weights; leave it empty")
    with config_section("config.model (simple_widths, simple_blocks)"):
        return build_simple_backbone(widths=tuple(model.simple_widths),
                                     blocks=model.simple_blocks,
                                     fused_batchnorm=bool(model.fused_batchnorm)), {}


OFFLINE_WEIGHTS_HINT = (
    "offline, pass a local weights file (--config.model.backbone_weights=PATH.weights.h5, "
    "e.g. a copy of ~/.keras/models/ from a machine that downloaded them) or '' for random "
    "weights (--config.model.backbone_weights=)")


@contextlib.contextmanager
def _imagenet_download(weights: str):
    """Turns Keras's failed download of the ImageNet weights into one ConfigError line."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - keras.utils.get_file raises a bare Exception
        if weights != "imagenet" or isinstance(error, (ValueError, TypeError)):
            raise
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"config.model.backbone_weights='imagenet': the ImageNet weights "
                          f"could not be downloaded ({reason}); {OFFLINE_WEIGHTS_HINT}") \
            from None


def _pretrained_model(config, num_classes: int):
    """`config.model.init_from`'s network and weights with the config's matching and decoding.

    The source's backbone, FPN, heads and anchors are kept (`config.model.backbone`, the
    widths and `config.model.anchors` do not apply). A torchvision ResNet backbone gets
    `frozen_batchnorm` / `frozen_early_stages` (both on by default, as torchvision
    fine-tunes its COCO detectors); other backbones keep the flags saved with them.
    """
    from retinanet.model.pretrained import load_pretrained
    from retinanet.model.retinanet import RetinaNet
    from retinanet.model.backbone import follow_weights
    from retinanet.model.torchvision_resnet import RESNET_BLOCKS, set_frozen_layers

    model = config.model
    with config_section("config.model.init_from"):
        source = load_pretrained(model.init_from, num_classes)
    anchor_generator = source.anchor_generator
    if anchor_generator.max_level != model.anchors.max_level:
        raise ConfigError(f"config.model.anchors.max_level: must be the init_from model's "
                          f"{anchor_generator.max_level}, got {model.anchors.max_level}")
    if source.backbone.name in RESNET_BLOCKS:
        set_frozen_layers(source.backbone.get_layer(f"{source.backbone.name}_features"),
                          follow_weights(model.frozen_batchnorm, pretrained=True),
                          follow_weights(model.frozen_early_stages, pretrained=True))
    label_encoder = build_label_encoder(config, anchor_generator)
    with config_section("config.model"):
        return RetinaNet(
            num_classes=num_classes, backbone=source.backbone,
            freeze_backbone=model.freeze_backbone, anchor_generator=anchor_generator,
            label_encoder=label_encoder, fpn=source.fpn,
            classification_head=source.classification_head, box_head=source.box_head,
            postprocessor=build_postprocessor(config, anchor_generator, label_encoder),
            class_names=source.class_names if source.num_classes == num_classes else None,
            preprocessing=model.preprocessing or source.preprocessing,
            recompute_backbone=model.recompute_backbone,
            test_time_flip=model.test_time_flip,
        )


def build_model(config, num_classes: int, num_replicas: int = 1):
    """A `RetinaNet` with the configured backbone, widths, anchors, matching and decoding.

    With `config.model.init_from` set, the network and its weights come from that preset or
    `.keras` file instead (see `_pretrained_model`).

    Args:
        config: the ConfigDict.
        num_classes: K.
        num_replicas: replicas of the distribution strategy the model is built under; above
            1, `model.sync_batchnorm` synchronises the backbone's batch statistics.
    """
    import keras

    from retinanet import _keras_compat
    from retinanet.model.retinanet import RetinaNet

    model = config.model
    if model.batchnorm_momentum and not 0.0 < model.batchnorm_momentum < 1.0:
        raise ConfigError("config.model.batchnorm_momentum: must be in (0, 1), got "
                          f"{model.batchnorm_momentum}")
    if model.init_from:
        retinanet = _pretrained_model(config, num_classes)
    else:
        anchor_generator = build_anchor_generator(config)
        label_encoder = build_label_encoder(config, anchor_generator)
        postprocessor = build_postprocessor(config, anchor_generator, label_encoder)
        backbone, backbone_options = _backbone(model)
        with config_section("config.model"), _imagenet_download(model.backbone_weights):
            retinanet = RetinaNet(
                num_classes=num_classes, backbone=backbone, **backbone_options,
                freeze_backbone=model.freeze_backbone,
                fpn_filters=model.fpn_filters, head_convs=model.head_convs,
                head_filters=model.head_filters, use_group_norm=model.use_group_norm,
                anchor_generator=anchor_generator, label_encoder=label_encoder,
                postprocessor=postprocessor, preprocessing=model.preprocessing or "retinanet",
                recompute_backbone=model.recompute_backbone,
                test_time_flip=model.test_time_flip,
            )
    for layer in _keras_compat.all_layers(retinanet.backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            # Both are read at call time and saved by get_config().
            if model.batchnorm_momentum:
                layer.momentum = float(model.batchnorm_momentum)
            if num_replicas > 1 and model.sync_batchnorm:
                layer.synchronized = True
    return retinanet


def build_learning_rate(config, total_steps: int):
    """A float or a `LearningRateSchedule` over `total_steps` optimiser steps.

    The warm-up lasts `train.warmup_steps`, capped at `MAX_WARMUP_SHARE` of `total_steps`.
    """
    import keras

    from retinanet.schedules import MAX_WARMUP_SHARE, WarmupStepDecay

    train = config.train
    rate = float(train.learning_rate)
    # Warm-up takes at most a tenth of the run: a short run must reach its learning rate.
    warmup = min(int(train.warmup_steps), int(total_steps * MAX_WARMUP_SHARE))
    if train.schedule == "constant":
        if warmup:
            return WarmupStepDecay(rate, [], warmup_steps=warmup,
                                   warmup_factor=train.warmup_factor)
        return rate
    if train.schedule == "step":
        boundaries = [int(total_steps * share) for share in train.decay_boundaries]
        with config_section("config.train"):
            return WarmupStepDecay(base_learning_rate=rate, boundaries=boundaries,
                                   decay_factor=train.decay_factor, warmup_steps=warmup,
                                   warmup_factor=train.warmup_factor)
    # cosine: linear warm-up from warmup_factor * rate, then cosine to cosine_alpha * rate.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=rate * (train.warmup_factor if warmup else 1.0),
        decay_steps=max(total_steps - warmup, 1), alpha=train.cosine_alpha,
        warmup_target=rate if warmup else None, warmup_steps=warmup)


def build_optimizer(config, total_steps: int):
    """The configured Keras optimiser; "reference" is `retinanet.training.reference_optimizer`."""
    import keras

    from retinanet.fused_adam import FusedAdam
    from retinanet.schedules import reference_optimizer

    train = config.train
    if not 0 <= train.ema_momentum < 1:
        raise ConfigError(f"config.train.ema_momentum: must be in [0, 1) (0 = off), got "
                          f"{train.ema_momentum}")
    options = {"clipnorm": float(train.clipnorm) or None}
    if train.ema_momentum:
        options.update(use_ema=True, ema_momentum=float(train.ema_momentum))
    if train.optimizer == "reference":
        return reference_optimizer(total_steps, config.data.batch_size, **options)
    learning_rate = build_learning_rate(config, total_steps)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=train.momentum,
                                    weight_decay=train.weight_decay or None, **options)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=train.weight_decay, **options)
    # Keras's Adam with TensorFlow's fused update kernel (same variables and config).
    return FusedAdam(learning_rate, weight_decay=train.weight_decay or None, **options)


def compile_model(model, config, total_steps: int):
    """`model.compile` with the configured optimiser, losses and XLA setting."""
    from retinanet.losses import FocalLoss, IoULoss, QualityFocalLoss, SmoothL1Loss

    train = config.train
    with config_section("config.train"):
        box_loss = SmoothL1Loss(beta=train.smooth_l1_beta) if train.box_loss == "smooth_l1" \
            else IoULoss(train.box_loss)
        classification_loss = QualityFocalLoss(beta=train.quality_focal_beta) \
            if train.classification_loss == "quality_focal" \
            else FocalLoss(alpha=train.focal_alpha, gamma=train.focal_gamma)
        model.compile(
            optimizer=build_optimizer(config, total_steps),
            classification_loss=classification_loss,
            box_loss=box_loss,
            box_loss_weight=train.box_loss_weight,
            jit_compile=train.jit_compile,
            steps_per_execution=train.steps_per_execution,
        )
    return model
