"""`retinanet debug-anchors`: how many ground-truth boxes the configured anchors can learn,
with drawings of the images whose boxes they miss."""

from __future__ import annotations

import os

import numpy as np

from retinanet import atomic, config as rconfig
from retinanet.diagnostics import anchor_coverage
from retinanet.training import builders


def debug_anchors(config, dataset, output: str, num_images_to_draw: int = 16, verbose: int = 1):
    """Writes `report.json` (the coverage summary) and drawings into `output`.

    The drawings show the images with the most boxes no anchor reaches (then the first ones)
    at the training size: green boxes have an anchor at IoU >= the positive threshold, red
    ones do not, and each box's best anchor is drawn thin in yellow.

    Returns:
        The summary dict of `retinanet.diagnostics.Coverage` plus `images`, the drawings.
    """
    import keras
    import tensorflow as tf

    from retinanet import visualization

    anchor_generator = builders.build_anchor_generator(config)
    matching = config.model.matching
    progbar = keras.utils.Progbar(len(dataset), verbose=verbose, unit_name="image")
    coverage = anchor_coverage(dataset, anchor_generator, rconfig.image_size(config),
                               matching.positive_iou, matching.negative_iou,
                               progress=progbar.update)
    chosen = coverage.worst_images(num_images_to_draw)
    chosen += [i for i in range(len(dataset)) if i not in chosen][:num_images_to_draw - len(chosen)]
    os.makedirs(output, exist_ok=True)
    drawn = []
    for number, (index, example) in enumerate(
            (i, next(iter(dataset.examples.skip(i).take(1)))) for i in chosen):
        found = coverage.image(index)
        size = np.maximum(np.round(np.array(example["image"].shape[:2]) * found["scale"]), 1)
        image = tf.image.resize(example["image"], size.astype(np.int32)).numpy()
        picture = visualization.draw_anchor_matches(image, found["boxes"], found["covered"],
                                                    found["best_anchors"])
        image_id = example["image_id"].numpy().decode().replace("/", "_")
        path = os.path.join(output, f"{number:03d}_{image_id}.png")
        visualization.save_image(picture, path)
        drawn.append(path)
    report = {**coverage.summary, "images": drawn}
    atomic.write_json(os.path.join(output, "report.json"), report)
    return report
