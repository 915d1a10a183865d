"""`retinanet debug-anchors`: how many ground-truth boxes the configured anchors can learn."""

from __future__ import annotations

import os

from retinanet.training import builders, datasets


def anchor_coverage(config, dataset, num_images_to_draw=0, output=None, verbose=1):
    """How many ground-truth boxes get a positive anchor at the configured thresholds.

    Runs the configured `LabelEncoder` on evaluation-style batches (resized as in training,
    without augmentation). A box counts as matched when some anchor's IoU with it reaches
    `positive_iou`; with `allow_low_quality_matches` every box also claims its best anchor,
    reported separately, since such a box trains on an anchor that covers it poorly.

    Returns:
        A dict: num_boxes, matched (share with an IoU >= positive_iou anchor),
        matched_with_low_quality (share with any positive anchor), by_size (COCO small /
        medium / large by area in the resized image: num_boxes, matched), best_iou
        percentiles, and the lists of drawn image files.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from retinanet import ops, visualization

    anchor_generator = builders.build_anchor_generator(config)
    encoder = builders.build_label_encoder(config, anchor_generator)
    batches = datasets.eval_pipeline(config, dataset)
    sizes = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, np.inf)}
    counts = {name: [0, 0] for name in sizes}
    best_ious, matched_all, low_quality_all, drawn = [], [], [], []
    progbar = keras.utils.Progbar(len(dataset), verbose=verbose, unit_name="image")
    done = 0
    for images, targets in batches:
        height, width = int(images.shape[1]), int(images.shape[2])
        anchors = anchor_generator(height, width)
        matched_index, states = encoder.match(anchors, targets["boxes"], targets["classes"])
        for index in range(int(images.shape[0])):
            valid = targets["classes"][index].numpy() >= 0
            boxes = targets["boxes"][index].numpy()[valid]
            iou = ops.box_iou(tf.constant(boxes), anchors).numpy() if len(boxes) else \
                np.zeros((0, 1))
            best = iou.max(axis=1) if len(boxes) else np.zeros(0)
            positive = states[index].numpy() == 1
            claimed = matched_index[index].numpy()[positive]
            low_quality = np.isin(np.arange(len(boxes)), claimed)
            matched = best >= encoder.positive_iou
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for name, (low, high) in sizes.items():
                in_range = (areas >= low) & (areas < high)
                counts[name][0] += int(in_range.sum())
                counts[name][1] += int((matched & in_range).sum())
            best_ious.extend(best.tolist())
            matched_all.extend(matched.tolist())
            low_quality_all.extend(low_quality.tolist())
            if output and len(drawn) < num_images_to_draw:
                best_anchor = anchors.numpy()[iou.argmax(axis=1)] if len(boxes) else None
                picture = visualization.draw_anchor_matches(
                    images[index].numpy(), boxes, matched, best_anchor)
                image_id = targets["image_id"][index].numpy().decode()
                path = os.path.join(output, f"{len(drawn):03d}_{image_id.replace('/', '_')}.png")
                visualization.save_image(picture, path)
                drawn.append(path)
            done += 1
        progbar.update(done)
    total = len(matched_all)
    share = (lambda values: float(np.mean(values)) if values else float("nan"))
    percentiles = np.percentile(best_ious, [5, 25, 50]).tolist() if best_ious else []
    return {
        "num_images": done,
        "num_boxes": total,
        "positive_iou": encoder.positive_iou,
        "negative_iou": encoder.negative_iou,
        "matched": share(matched_all),
        "matched_with_low_quality": share(low_quality_all),
        "by_size": {name: {"num_boxes": n, "matched": (m / n if n else float("nan"))}
                    for name, (n, m) in counts.items()},
        "best_iou_percentiles": dict(zip(("p5", "p25", "p50"), percentiles)),
        "images": drawn,
    }
