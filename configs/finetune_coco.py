"""Template: fine-tune torchvision's COCO RetinaNet (a keras-hub preset) on your own data.

    pip install 'retinanet[pretrained]'        # keras-hub, for the preset
    retinanet train --config=finetune_coco --workdir=runs/mine \
        --config.data.format=voc --config.data.train=PATH --config.data.val=PATH

Pick the format and paths as for `custom`; keep the rest. The first run downloads the
preset from Kaggle through keras-hub (which caches it); offline, point
`--config.model.init_from` at a preset directory (a copy of keras-hub's cache entry, or one
written by `save_to_preset`) or at a `.keras` file.

What the preset expects, and why the values below:

- Input size: torchvision trained and evaluated it with the short side resized to 800 and
  the long side at most 1333 (`image_size=0`, `min_side=800`, `max_side=1333`). keras-hub's
  preset converter uses an 800 x 800 square instead (`--config.data.image_size=800`). Smaller
  sizes (e.g. 512) train faster and cost AP on small objects.
- Normalisation: inside the model (torchvision's ImageNet mean and std on RGB / 255), like
  every RetinaNet of this package: feed raw 0-255 images, nothing to configure. Resizing and
  padding follow torchvision's transform (the preset's `preprocessing="torchvision"`: sides
  floored, padding with the mean colour) in training, evaluation and predict;
  `--config.model.preprocessing=retinanet` would switch to the package's own.
- Architecture and anchors: the preset's (ResNet50 v1.5 FPN, torchvision's anchors); the
  `model.backbone`, widths and `model.anchors` fields do not apply. A dataset with another
  number of classes gets a new last layer of the class subnet; everything else is COCO's.
  Batch norm and the stem and res2 stay frozen (`frozen_batchnorm`, `frozen_early_stages`),
  as torchvision fine-tunes it.
- Learning rate: torchvision trained it with SGD 0.01 at batch 16 (momentum 0.9, weight decay
  1e-4, warm-up). Fine-tuning starts from a trained detector, so the step must not wreck the
  features it has: Adam 1e-4 (this template; the rate does not scale with the batch) or SGD
  at 0.01 x batch / 16 with warm-up (`--config.train.optimizer=sgd
  --config.train.learning_rate=0.005 --config.train.weight_decay=1e-4` for batch 8). Lower
  it (3e-5) for a few hundred images, where the new class layer overfits fast.
- Augmentation: torchvision's recipe is horizontal flips only (`scale_range=(1, 1)`).

`--config.model.init_from=retinanet_resnet50_fpn_v2_coco` starts from the v2 model (41.5 COCO
AP against v1's 36.4, at about the same cost).
"""

from retinanet.config import default_config
from retinanet.configs.common import data, schedules


def get_config():
    config = default_config()
    config.name = "finetune_coco"

    config.model.init_from = "retinanet_resnet50_fpn_coco"
    config.model.frozen_batchnorm = True
    config.model.frozen_early_stages = True
    # torchvision's decoding: score_thresh 0.05 and nms_thresh 0.5 (the defaults), and up to
    # 300 detections per image.
    config.model.postprocess.max_detections = 300

    data.own_data(config)
    data.short_side_resize(config, min_side=800, max_side=1333)
    config.data.scale_range = (1.0, 1.0)  # torchvision's recipe: flips only
    config.data.batch_size = 8
    config.data.eval_batch_size = 4

    schedules.adam_cosine(config, learning_rate=1e-4, warmup_steps=100)
    config.train.epochs = 12
    config.train.eval_every_n_epochs = 3
    return config
