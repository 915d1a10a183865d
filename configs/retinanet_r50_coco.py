"""The RetinaNet paper's COCO recipe (Lin et al. 2017, "1x" schedule), for GPUs or a TPU.

ResNet50-FPN from ImageNet weights (frozen batch norm), 4 convs of 256 in each subnet,
anchors 32-512 px with 3 scales x 3 ratios, focal loss (alpha 0.25, gamma 2) and smooth L1.
SGD with momentum 0.9, weight decay 1e-4, lr 0.01 at batch 16 with a linear warm-up, 90k
iterations with 10x decays at 60k and 80k. Images resized so the short side is 800 and the
long side at most 1333, horizontal flips; or set --config.data.image_size=640 for the 640
square of TF Model Garden (faster, about 2 AP lower).

    retinanet train --config=retinanet_r50_coco --workdir=gs://.../r50_coco \
        --strategy=tpu --tpu=NAME --precision=mixed_bfloat16 \
        --config.data.train=coco/2017:train --config.data.val=coco/2017:validation

The data defaults to TFDS ``coco/2017``; for files, use --config.data.format=coco with
--config.data.train=annotations/instances_train2017.json --config.data.train_images=train2017
(and the same for val).
"""

from retinanet.config import default_config
from retinanet.configs.common import data, models, schedules


def get_config():
    config = default_config()
    config.name = "retinanet_r50_coco"
    models.resnet50_imagenet(config, frozen=True)  # 256-wide FPN, 4 x 256 subnets

    config.data.format = "tfds"
    config.data.train = "coco/2017:train"
    config.data.val = "coco/2017:validation"
    data.short_side_resize(config, min_side=800, max_side=1333)
    config.data.scale_range = (1.0, 1.0)  # the paper trains without scale jitter
    config.data.batch_size = 16

    schedules.reference_sgd(config, epochs=12, steps_per_epoch=7500)  # 90k steps at batch 16
    config.train.eval_every_n_epochs = 2
    return config
