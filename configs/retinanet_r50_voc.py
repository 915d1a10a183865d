"""RetinaNet ResNet50-FPN on Pascal VOC (train on 2007+2012 trainval, test on 2007 test).

The COCO recipe scaled to VOC's size, as in detectron2/mmdetection's VOC configs: ImageNet
weights, short side 600 / long side at most 1000, batch 16, SGD lr 0.01 with warm-up, about
18k iterations (24 epochs of 07+12 trainval's 16.5k images) with 10x decays at 2/3 and 8/9.

    retinanet train --config=retinanet_r50_voc --workdir=runs/r50_voc \
        --strategy=mirrored --precision=mixed_float16 \
        --config.data.train=/data/VOCdevkit/VOC2012 --config.data.train_split=trainval \
        --config.data.val=/data/VOCdevkit/VOC2007 --config.data.val_split=test

With TFDS instead: --config.data.format=tfds --config.data.train=voc/2007:train+validation
--config.data.val=voc/2007:test.
"""

from retinanet.config import default_config
from retinanet.configs.common import data, models, schedules
from retinanet.data import VOC_CLASSES


def get_config():
    config = default_config()
    config.name = "retinanet_r50_voc"
    models.resnet50_imagenet(config)

    config.data.format = "voc"
    config.data.train_split = "trainval"
    config.data.val_split = "test"
    config.data.class_names = ",".join(VOC_CLASSES)  # fixed ids across 2007 and 2012
    data.short_side_resize(config, min_side=600, max_side=1000)
    config.data.batch_size = 16

    schedules.reference_sgd(config, epochs=24, steps_per_epoch=750)  # 18k steps at batch 16
    config.train.eval_every_n_epochs = 4
    config.eval.voc_method = "11_points"  # the VOC2007 test protocol
    return config
