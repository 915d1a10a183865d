"""Model families."""


def small_cnn(config):
    """A small detector for training from random weights on a CPU.

    - the "simple" backbone, a plain residual CNN: from random init plain convolutions learn
      far more per CPU second than depthwise ones (MobileNetV3: 0.44 vs 0.12 AP on the
      shapes set after the same 1000 steps) or a ResNet50;
    - BatchNorm momentum 0.9, so the moving statistics used at evaluation keep up with a
      short run;
    - narrow heads (2 convs of 64) with GroupNorm, as detectors trained from scratch use.
    """
    config.model.backbone = "simple"
    config.model.simple_widths = (16, 32, 64, 96, 128)
    config.model.simple_blocks = 1
    config.model.batchnorm_momentum = 0.9
    config.model.fpn_filters = 64
    config.model.head_convs = 2
    config.model.head_filters = 64
    config.model.use_group_norm = True


def resnet50_imagenet(config, frozen=None):
    """ResNet50-FPN from ImageNet weights with the paper's 256-wide FPN and 4-conv heads.

    `frozen=True` freezes batch norm and the stem and res2, as Detectron (FREEZE_AT=2) and
    torchvision train their COCO detectors; None follows the weights (frozen, since they
    are pretrained).
    """
    config.model.backbone = "resnet50"
    config.model.backbone_weights = "imagenet"
    config.model.frozen_batchnorm = frozen
    config.model.frozen_early_stages = frozen
