"""Your own data, from scratch, on one ordinary machine: a 16-minute CPU recipe.

For a few hundred labelled photos and no GPU and no pretrained weights (offline). With
ImageNet weights available, `configs/custom.py` (a ResNet50) is the better start.

    retinanet train --config=configs/scratch_cpu.py --workdir=runs/mine \
        --config.data.format=csv --config.data.train=PATH --config.data.val=PATH

The data section is `configs/custom.py`'s (same formats and paths; without a val path,
--config.data.val_fraction=0.1 holds out 10% of train). What each choice is for:

- a 16-minute time budget (`train.time_budget_minutes`; `epochs` is then ignored): the run
  measures its step time, trains as many steps as fit and stretches the learning-rate
  schedule over exactly those steps; --config.train.time_budget_minutes=0 and
  --config.train.epochs=N train by epochs instead;
- the "simple" backbone, a plain residual CNN: from random weights plain convolutions learn
  far more per CPU second than depthwise ones (MobileNetV3) or a ResNet50;
- BatchNorm momentum 0.9, so the moving statistics used at evaluation keep up with a short
  run, and GroupNorm in the (narrow: 2 convs of 64) heads, as detectors trained from scratch
  use;
- the default anchors (anchor_size 4: 32 px on P3), which fit photos' objects; for small
  objects run `retinanet debug-anchors` and lower model.anchors.anchor_size;
- 384 px and batch 4: small images keep a step cheap, so the run sees many more of them.
  384, not 320: canvases are rounded up to a multiple of 128 (the stride of P7), so a 320 px
  image is padded to 384 and costs the same step time with fewer pixels of photo in it;
- Adam 1e-3 with a linear warm-up (200 steps from 1%) and cosine decay to 1% of the rate.

Measured and left off: colour jitter (data.color_jitter), wider scale jitter, an EMA of the
weights (train.ema_momentum), mosaic (data.mosaic) and XLA did not help on the raccoon photos
at this budget (docs/LEARNING.md); they stay off here.

On the raccoon photos (160 training images, 40 test images, an idle 2-core machine) this
recipe reached COCO AP 0.438, AP50 0.885 in 16 minutes (median of two seeds);
keras-cv's RetinaNet (ResNet18-shaped) reached 0.198 / 0.468 in the same CPU time
(docs/LEARNING.md).
"""

from retinanet.config import default_config


def get_config():
    config = default_config()
    config.name = "scratch_cpu"

    config.data.format = "voc"  # coco, voc, yolo, csv or tfds
    config.data.train = ""  # required
    config.data.val = ""
    config.data.val_fraction = 0.0
    config.data.image_size = 384
    config.data.batch_size = 4
    config.data.eval_batch_size = 8
    config.data.skip_invalid = False  # True: skip and count bad images/boxes

    config.model.backbone = "simple"
    config.model.simple_widths = (16, 32, 64, 96, 128)
    config.model.simple_blocks = 1
    config.model.batchnorm_momentum = 0.9
    config.model.fpn_filters = 64
    config.model.head_convs = 2
    config.model.head_filters = 64
    config.model.use_group_norm = True

    config.train.time_budget_minutes = 16.0
    config.train.epochs = 100  # used only with time_budget_minutes=0
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.schedule = "cosine"
    config.train.warmup_steps = 200
    config.train.warmup_factor = 0.01
    config.train.eval_every_n_epochs = 0  # evaluation costs budget; the final one is kept
    return config
