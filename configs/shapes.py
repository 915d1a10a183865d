"""The CPU demo (`make demo`): a small detector trained from scratch on the built-in shapes set.

What makes it train in minutes on two CPU cores:

- the "simple" backbone, a plain residual CNN (no pretrained weights exist offline, and
  from random init plain convolutions learn far faster per CPU second than MobileNetV3's
  depthwise ones: 0.44 vs 0.12 AP after the same 1000 steps in our runs);
- BatchNorm momentum 0.9, so the moving statistics used at evaluation keep up with a short
  run, and GroupNorm in the heads (as detectors trained from scratch use);
- 128 px images (the shapes are drawn at 128 px, 12-64 px across), anchors half the
  default size (16 px on P3) to fit them, and max_boxes 8 instead of 100, which makes
  anchor matching 12x cheaper;
- Adam 1e-3 with warm-up and cosine decay.

    retinanet train --config=configs/shapes.py --workdir=runs/shapes
"""

from retinanet.config import default_config


def get_config():
    config = default_config()
    config.name = "shapes"

    config.model.backbone = "simple"
    config.model.simple_widths = (16, 32, 64, 96, 128)
    config.model.simple_blocks = 1
    config.model.batchnorm_momentum = 0.9
    config.model.fpn_filters = 64
    config.model.head_convs = 2
    config.model.head_filters = 64
    config.model.use_group_norm = True
    config.model.anchors.anchor_size = 2.0  # 16-25 px on P3: the smallest shapes are 12 px

    config.data.format = "shapes"
    config.data.shapes.num_train = 2000
    config.data.shapes.num_val = 200
    config.data.shapes.size = 128
    config.data.image_size = 128
    config.data.max_boxes = 8  # at most 6 shapes per image
    config.data.batch_size = 8
    config.data.eval_batch_size = 16
    config.data.cache = True

    config.train.epochs = 12
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.schedule = "cosine"
    config.train.warmup_steps = 300
    config.train.warmup_factor = 0.01
    config.train.eval_every_n_epochs = 4
    return config
