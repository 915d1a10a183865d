"""`retinanet predict`: detections for image files, as COCO results and annotated copies."""

from __future__ import annotations

import os

import numpy as np

from retinanet import atomic

# Drawings show detections from this score up when the user sets no threshold.
DRAWING_SCORE_THRESHOLD = 0.3


def image_records(images: str, stop_on_bad_image: bool = False, on_bad_image=None):
    """Records (size only, no boxes) for an image file or every image under a folder.

    Args:
        images: an image file or a folder (searched recursively).
        stop_on_bad_image: raise at the first unreadable file; otherwise skip it.
        on_bad_image: called as `on_bad_image(name, problem)` for each skipped file.

    Returns:
        `(records, names, skipped)`: `retinanet.data.Record`s, the paths relative to `images`
        and the names of the files skipped as unreadable.

    Raises:
        ValueError: naming `--images` when there is nothing to read, when the one file given or
            every file of the folder is not a readable image, or (`stop_on_bad_image`) at the
            first unreadable file.
    """
    from retinanet.data import Record
    from retinanet.data.image_files import (IMAGE_EXTENSIONS, ImageProblem, list_images,
                                            probe_image)

    if os.path.isdir(images):
        names = list_images(images)
        paths = [os.path.join(images, name) for name in names]
        if not paths:
            raise ValueError(f"--images={images}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    elif os.path.isfile(images):
        names, paths = [os.path.basename(images)], [images]
    else:
        raise ValueError(f"--images={images}: file or folder not found")
    records, kept, skipped = [], [], []
    for name, path in zip(names, paths):
        try:
            height, width = probe_image(path)
        except ImageProblem as problem:
            if stop_on_bad_image or len(paths) == 1:
                raise ValueError(f"--images: {problem}") from None
            skipped.append(name)
            if on_bad_image is not None:
                on_bad_image(name, problem)
            continue
        kept.append(name)
        records.append(Record(image_id=os.path.splitext(name)[0], path=path, height=height,
                              width=width, boxes=np.zeros((0, 4), np.float32),
                              classes=np.zeros(0, np.int32), is_crowd=np.zeros(0, bool),
                              difficult=np.zeros(0, bool)))
    if not records:
        raise ValueError(f"--images={images}: none of its {len(paths)} files is a readable image")
    return records, kept, skipped


def coco_result(image_id, file_name, box, score, class_index, class_names, category_ids):
    """One detection in the COCO results format (bbox xywh), with the file and class name."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "image_id": image_id,
        "file_name": file_name,
        "category_id": int(category_ids[class_index]) if category_ids else int(class_index),
        "category_name": class_names[class_index],
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        "score": round(float(score), 5),
    }


def predict_images(model, batches, records, names, output, class_names, category_ids=None,
                   score_threshold=None, verbose=1):
    """Runs `model` over evaluation `batches` of `records`; writes the results.

    Writes `output/detections.json` (COCO results) and one annotated copy per image
    (`output/<name>`, JPEG for JPEG inputs, PNG otherwise).

    Args:
        model: a `retinanet.RetinaNet`.
        batches: evaluation batches of the records, in order (`retinanet.data.pipeline`).
        records, names: from `image_records`.
        output: the folder to write to (created).
        class_names: names per class; category_ids: the dataset's ids or None.
        score_threshold: keep detections with at least this score (None: all the model
            returns; the drawings then start at `DRAWING_SCORE_THRESHOLD`).
        verbose: progress bar (0 silent, 1 bar, 2 one line at the end).

    Returns:
        `(path of detections.json, number of detections, number of images)`.
    """
    import keras
    import tensorflow as tf

    from retinanet import visualization
    from retinanet.evaluation import split_batch
    from retinanet.evaluation.runner import detect_batch

    os.makedirs(output, exist_ok=True)
    results = []
    progbar = keras.utils.Progbar(len(records), verbose=verbose, unit_name="image")
    done = 0
    for batch_images, targets in batches:
        detections = detect_batch(model, batch_images, targets)
        for found in split_batch(targets, detections, tuple(batch_images.shape[1:3]),
                                 first_index=done):
            record, name = records[done], names[done]
            scores = found["det_scores"]
            keep = scores >= (score_threshold if score_threshold is not None else -np.inf)
            boxes, scores, classes = found["det_boxes"][keep], scores[keep], \
                found["det_classes"][keep]
            results += [coco_result(record.image_id, name, box, score, cls, class_names,
                                    category_ids)
                        for box, score, cls in zip(boxes, scores, classes)]
            pixels = tf.io.decode_image(tf.io.read_file(record.path), channels=3,
                                        expand_animations=False).numpy()
            drawn = visualization.draw_detections(
                pixels, boxes, classes, scores, class_names,
                score_threshold=DRAWING_SCORE_THRESHOLD if score_threshold is None
                else score_threshold)
            stem, extension = os.path.splitext(name)
            extension = ".jpg" if extension.lower() in (".jpg", ".jpeg") else ".png"
            visualization.save_image(drawn, os.path.join(output, stem + extension))
            done += 1
            progbar.update(done)
    path = os.path.join(output, "detections.json")
    atomic.write_json(path, results)
    return path, len(results), done
