"""The CPU demo (`make demo`): a small detector trained from scratch on the built-in shapes set.

What makes it train in minutes on two CPU cores:

- the small CNN of `common.models.small_cnn` (no pretrained weights exist offline);
- 128 px images (the shapes are drawn at 128 px, 12-64 px across), anchors half the
  default size (16 px on P3) to fit them, and max_boxes 8 instead of 100, which makes
  anchor matching 12x cheaper;
- Adam 1e-3 with warm-up and cosine decay.

    retinanet train --config=shapes --workdir=runs/shapes
"""

from retinanet.config import default_config
from retinanet.configs.common import models, schedules


def get_config():
    config = default_config()
    config.name = "shapes"
    models.small_cnn(config)
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
    schedules.adam_cosine(config, learning_rate=1e-3, warmup_steps=300, warmup_factor=0.01)
    config.train.eval_every_n_epochs = 4
    return config
