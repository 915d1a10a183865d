"""Data sources."""


def own_data(config):
    """Your own labelled images: the format (default voc) and paths come from the command
    line.

    Formats and what the paths are (`--config.data.format`, `.train`, `.val`):
      coco  train/val: instances JSON; train_images/val_images: the image folders (default:
            the JSON's folder).
      voc   train/val: a devkit year folder (Annotations/, JPEGImages/, ImageSets/Main/) or a
            folder with annotations/*.xml and images/; train_split/val_split: an ImageSets
            name.
      yolo  train/val: a folder with images/ and labels/ (and classes.txt or data.yaml);
            train_split/val_split: a subfolder of both.
      csv   train/val: a CSV file (filename,width,height,class,xmin,ymin,xmax,ymax); images
            in train_images/val_images (default: the CSV's folder).
      tfds  train/val: a TFDS name with an optional split, e.g. voc/2007:train.

    Without a val path, --config.data.val_fraction=0.1 holds out 10% of train;
    --config.data.skip_invalid=true skips and counts bad images and boxes.
    """
    config.data.format = "voc"


def short_side_resize(config, min_side, max_side):
    """Detectron's and torchvision's resize: the short side to `min_side`, the long side at
    most `max_side`."""
    config.data.image_size = 0
    config.data.min_side = min_side
    config.data.max_side = max_side
