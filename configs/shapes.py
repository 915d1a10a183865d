"""The CPU demo (`make demo`): a small detector trained from scratch on the built-in shapes set.

MobileNetV3-Small from random init (frozen_batchnorm=False: its batch norms must learn their
statistics), narrow FPN and heads, 128 px images, anchors half the default size since the
shapes are 12-64 px. Tuned to reach COCO AP >= 0.60 and AP50 >= 0.90 on the validation split
within the 15-minute budget of `make demo` on a 2-core CPU (see README for measured figures).

    retinanet train --config=configs/shapes.py --workdir=runs/shapes
"""

from retinanet.config import default_config


def get_config():
    config = default_config()
    config.name = "shapes"

    config.model.backbone = "mobilenet_v3_small"
    config.model.frozen_batchnorm = False
    config.model.fpn_filters = 64
    config.model.head_convs = 2
    config.model.head_filters = 64
    config.model.batchnorm_momentum = 0.9  # moving statistics that keep up with training
    config.model.anchors.anchor_size = 2.0  # 16 px on P3: the smallest shapes are 12 px

    config.data.format = "shapes"
    config.data.shapes.num_train = 1000
    config.data.shapes.num_val = 200
    config.data.shapes.image_size = 128
    config.data.image_size = 128
    config.data.max_boxes = 8  # max_objects + margin: fewer padded boxes to match
    config.data.batch_size = 8
    config.data.eval_batch_size = 16
    config.data.cache = True

    config.train.epochs = 12
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.schedule = "cosine"
    config.train.warmup_steps = 150
    config.train.eval_every_n_epochs = 4
    return config
