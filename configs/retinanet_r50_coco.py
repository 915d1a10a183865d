"""The RetinaNet paper's COCO recipe (Lin et al. 2017, "1x" schedule), for GPUs or a TPU.

ResNet50-FPN from ImageNet weights (frozen batch norm), 4 convs of 256 in each subnet,
anchors 32-512 px with 3 scales x 3 ratios, focal loss (alpha 0.25, gamma 2) and smooth L1.
SGD with momentum 0.9, weight decay 1e-4, lr 0.01 at batch 16 with a linear warm-up, 90k
iterations with 10x decays at 60k and 80k. Images resized so the short side is 800 and the
long side at most 1333, horizontal flips; or set --config.data.image_size=640 for the 640
square of TF Model Garden (faster, about 2 AP lower).

    retinanet train --config=configs/retinanet_r50_coco.py --workdir=gs://.../r50_coco \
        --strategy=tpu --tpu=NAME --precision=mixed_bfloat16 \
        --config.data.train=coco/2017:train --config.data.val=coco/2017:validation

The data defaults to TFDS ``coco/2017``; for files, use --config.data.format=coco with
--config.data.train=annotations/instances_train2017.json --config.data.train_images=train2017
(and the same for val).
"""

from retinanet.config import default_config


def get_config():
    config = default_config()
    config.name = "retinanet_r50_coco"

    config.model.backbone = "resnet50"
    config.model.backbone_weights = "imagenet"
    config.model.frozen_batchnorm = True
    config.model.frozen_early_stages = True  # stem and res2, as Detectron's FREEZE_AT=2
    config.model.fpn_filters = 256
    config.model.head_convs = 4
    config.model.head_filters = 256

    config.data.format = "tfds"
    config.data.train = "coco/2017:train"
    config.data.val = "coco/2017:validation"
    config.data.image_size = 0  # shortest edge 800, longest at most 1333
    config.data.min_side = 800
    config.data.max_side = 1333
    config.data.scale_range = (1.0, 1.0)  # the paper trains without scale jitter
    config.data.batch_size = 16
    config.data.eval_batch_size = 8
    config.data.max_boxes = 100

    config.train.optimizer = "reference"  # SGD 0.01 * batch / 16, warm-up, decay at 2/3, 8/9
    config.train.epochs = 12
    config.train.steps_per_epoch = 7500  # 12 x 7500 = 90k iterations at batch 16
    config.train.clipnorm = 0.0
    config.train.eval_every_n_epochs = 2
    return config
