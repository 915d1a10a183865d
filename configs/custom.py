"""Template for your own data: pick the format and the train/val paths, keep the rest.

    retinanet train --config=configs/custom.py --workdir=runs/mine \
        --config.data.format=voc --config.data.train=PATH --config.data.val=PATH

Formats and what the paths are:
  coco  train/val: instances JSON; train_images/val_images: the image folders (default: the
        JSON's folder).
  voc   train/val: a devkit year folder (Annotations/, JPEGImages/, ImageSets/Main/) or a
        folder with annotations/*.xml and images/; train_split/val_split: an ImageSets name.
  yolo  train/val: a folder with images/ and labels/ (and classes.txt or data.yaml);
        train_split/val_split: a subfolder of both.
  csv   train/val: a CSV file (filename,width,height,class,xmin,ymin,xmax,ymax); images in
        train_images/val_images (default: the CSV's folder).
  tfds  train/val: a TFDS name with an optional split, e.g. voc/2007:train.

Without a val path, --config.data.val_fraction=0.1 holds out 10% of train. The model is a
ResNet50-FPN from ImageNet weights at 512 px, fine-tuned with Adam: a good start for a few
hundred to a few thousand images. For small objects run `retinanet debug-anchors` first and
lower model.anchors.anchor_size if many boxes go unmatched.
"""

from retinanet.config import default_config


def get_config():
    config = default_config()
    config.name = "custom"

    config.data.format = "voc"  # coco, voc, yolo, csv or tfds
    config.data.train = ""  # required
    config.data.val = ""
    config.data.val_fraction = 0.0
    config.data.image_size = 512
    config.data.batch_size = 8
    config.data.skip_invalid = False  # True: skip and count bad images/boxes

    config.model.backbone = "resnet50"
    config.model.backbone_weights = "imagenet"
    config.model.freeze_backbone = False

    config.train.epochs = 30
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-4
    config.train.schedule = "cosine"
    config.train.warmup_steps = 200
    config.train.eval_every_n_epochs = 5
    return config
