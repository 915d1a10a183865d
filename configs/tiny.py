"""A seconds-long config for tests: a few 128 px shapes images and a tiny plain CNN.

Not a useful detector; it exercises every code path of `retinanet train` quickly. (The
"simple" backbone traces and compiles in a quarter of the CPU time MobileNetV3 needs, which
is most of a short run.)
"""

from retinanet.config import default_config


def get_config():
    config = default_config()
    config.name = "tiny"
    config.model.backbone = "simple"
    config.model.simple_widths = (8, 16, 16, 32, 32)
    config.model.simple_blocks = 0
    config.model.fpn_filters = 16
    config.model.head_convs = 1
    config.model.head_filters = 16
    config.model.batchnorm_momentum = 0.9
    config.model.anchors.anchor_size = 2.0
    config.model.postprocess.max_detections = 20

    config.data.format = "shapes"
    config.data.shapes.num_train = 8
    config.data.shapes.num_val = 4
    config.data.shapes.size = 128
    config.data.shapes.max_objects = 3
    config.data.image_size = 128
    config.data.max_boxes = 4
    config.data.batch_size = 4
    config.data.eval_batch_size = 4

    config.train.epochs = 2
    config.train.steps_per_epoch = 2
    config.train.learning_rate = 1e-3
    config.train.eval_every_n_epochs = 1
    return config
