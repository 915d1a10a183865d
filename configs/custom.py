"""Your own data from ImageNet weights: a ResNet50-FPN at 512 px, fine-tuned with Adam.

    retinanet train --config=custom --workdir=runs/mine \
        --config.data.format=voc --config.data.train=PATH --config.data.val=PATH

A good start for a few hundred to a few thousand images; the formats and paths are in
`retinanet.configs.common.data.own_data` (or the README). Offline, or without a GPU,
`scratch_cpu` trains from random weights in 16 minutes. For small objects run
`retinanet doctor` first and lower model.anchors.anchor_size if many boxes go unmatched.
"""

from retinanet.config import default_config
from retinanet.configs.common import data, models, schedules


def get_config():
    config = default_config()
    config.name = "custom"
    data.own_data(config)
    config.data.image_size = 512
    config.data.batch_size = 8
    models.resnet50_imagenet(config)
    schedules.adam_cosine(config, learning_rate=1e-4, warmup_steps=200)
    config.train.epochs = 30
    config.train.eval_every_n_epochs = 5
    return config
