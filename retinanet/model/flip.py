"""Horizontal-flip test-time augmentation: detect on the image and its mirror, fuse the two.

Fusion is box voting across the two views: class-aware NMS over both views' detections picks
each object's best box, which becomes the score-weighted mean of every box of its class that
overlaps it by more than the NMS threshold, from either view. Its score is the mean over the
views of each view's best overlapping score, so a box that one view missed counts that view
as 0 (as weighted box fusion does); objects both views agree on rank first.
"""

import tensorflow as tf

from retinanet import ops
from retinanet.model.postprocess import map_images, pad_detections


def flip_images(images, widths):
    """Mirrors each image left-right within its own width, leaving right padding in place.

    Args:
        images: `[B, H, W, C]`, each image in its top-left `widths[i]` columns.
        widths: int `[B]`, the images' widths (W for unpadded images).

    Returns:
        `[B, H, W, C]`; equal to `tf.image.flip_left_right` where `widths == W`.
    """
    # A gather, not tf.reverse_sequence: LiteRT has no kernel for the latter.
    columns = tf.expand_dims(tf.range(tf.shape(images)[2]), 0)
    widths = tf.expand_dims(tf.cast(widths, tf.int32), 1)
    index = tf.where(columns < widths, widths - 1 - columns, columns)  # [B, W]
    return tf.gather(images, index, axis=2, batch_dims=1)


def mirror_boxes(boxes, widths):
    """xyxy pixel boxes `[B, N, 4]` in images of `widths` `[B]` -> their mirror images."""
    widths = tf.expand_dims(tf.cast(widths, boxes.dtype), 1)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return tf.stack([widths - x2, y1, widths - x1, y2], axis=-1)


def _fuse_image(boxes, scores, classes, views, num_views, iou_threshold, max_detections):
    """One image's detections from all views (`[N, 4]`, `[N]`, `[N]` with -1 padding, view
    index `[N]`) -> fused `boxes [D, 4], scores [D], classes [D], count`, padded."""
    valid = classes >= 0
    scores = tf.where(valid, scores, 0.0)
    keep = ops.batched_nms(boxes, scores, classes, iou_threshold=iou_threshold,
                           max_output_size=max_detections, score_threshold=0.0)
    kept_classes = tf.gather(classes, keep)
    # expand_dims, not [:, None] slices: LiteRT's converter refused one such slice here.
    column, row = (lambda x: tf.expand_dims(x, 1)), (lambda x: tf.expand_dims(x, 0))
    members = ((ops.box_iou(tf.gather(boxes, keep), boxes) > iou_threshold)
               | (column(keep) == row(tf.range(tf.shape(boxes)[0]))))  # zero-area kept box
    members &= column(kept_classes) == row(classes)  # kept classes are >= 0: no padding
    weights = tf.where(members, row(scores), 0.0)  # [K, N]
    fused_boxes = tf.matmul(weights, boxes) / tf.reduce_sum(weights, axis=1, keepdims=True)
    by_view = tf.expand_dims(weights, 2) * row(tf.one_hot(views, num_views))  # [K, N, V]
    fused_scores = tf.reduce_mean(tf.reduce_max(by_view, axis=1), axis=1)
    order = tf.argsort(fused_scores, direction="DESCENDING", stable=True)
    return pad_detections(tf.gather(fused_boxes, order), tf.gather(fused_scores, order),
                          tf.gather(kept_classes, order), max_detections)


def fuse_views(views, iou_threshold=0.5, max_detections=100):
    """Fuses the padded detections of several views of the same images (box voting).

    Args:
        views: list of detection dicts `{"boxes": [B, D, 4] xyxy pixels, "scores": [B, D],
            "classes": [B, D] (-1 padding)}`, all in the same image's coordinates.
        iou_threshold: the NMS threshold; boxes overlapping a kept box by more vote for it.
        max_detections: D of the result.

    Returns:
        `{"boxes" [B, D, 4], "scores" [B, D], "classes" [B, D], "num_detections" [B]}`, best
        fused score first, padded like `DetectionPostprocessor`'s.
    """
    boxes = tf.concat([view["boxes"] for view in views], axis=1)
    scores = tf.concat([view["scores"] for view in views], axis=1)
    classes = tf.concat([view["classes"] for view in views], axis=1)
    view_index = tf.concat([tf.fill(tf.shape(view["scores"])[1:], index)
                            for index, view in enumerate(views)], axis=0)

    def per_image(args):
        return _fuse_image(*args, view_index, len(views), iou_threshold, max_detections)

    return map_images(per_image, (boxes, scores, classes), max_detections)


def detect_with_flip(detect, images, image_sizes, iou_threshold, max_detections):
    """`detect(images, image_sizes)` on the images and their mirrors, fused by `fuse_views`.

    Args:
        detect: callable `(images, image_sizes) -> detections` of the model (one view).
        images: `[B, H, W, C]`; image_sizes: int `[B, 2]` or `[2]` (height, width).
    """
    batch = tf.shape(images)[0]
    widths = tf.broadcast_to(tf.gather(tf.reshape(image_sizes, [-1, 2]), 1, axis=1), [batch])
    plain = detect(images, image_sizes)
    mirrored = detect(flip_images(images, widths), image_sizes)
    mirrored = dict(mirrored, boxes=mirror_boxes(mirrored["boxes"], widths))
    return fuse_views([plain, mirrored], iou_threshold, max_detections)
