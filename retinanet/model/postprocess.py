"""From raw head outputs to padded, per-image detections."""

import keras
import tensorflow as tf

from retinanet import ops
from retinanet.anchors import AnchorGenerator
from retinanet.box_coder import BoxCoder


@keras.saving.register_keras_serializable(package="retinanet")
class DetectionPostprocessor(keras.layers.Layer):
    """Decodes boxes and runs class-aware NMS, as in the RetinaNet paper.

    Per image and per pyramid level, keep the `pre_nms_topk_per_level` highest-scoring
    (anchor, class) pairs; decode only those boxes and clip them to the image; drop scores
    at or below `score_threshold`; then class-aware NMS at `iou_threshold` keeps at most
    `max_detections`. Only the kept candidates are decoded, which is what keeps this cheap
    next to the network itself.

    Call with:
        cls_logits: float `[B, A, K]`; box_deltas: float `[B, A, 4]`.
        anchor_image_size: `(height, width)` the anchors tile (the padded input).
        clip_size: `(height, width)` to clip boxes to (the unpadded input), or `[B, 2]`, one
            per image.

    Returns:
        `{"boxes": float32 [B, D, 4] xyxy pixels, "scores": float32 [B, D],
        "classes": int32 [B, D], "num_detections": int32 [B]}` with `D = max_detections`,
        padded with zeros (classes with -1), best score first.
    """

    def __init__(
        self,
        anchor_generator=None,
        box_coder=None,
        score_threshold=0.05,
        pre_nms_topk_per_level=1000,
        iou_threshold=0.5,
        max_detections=100,
        **kwargs,
    ):
        # Decoding stays in float32 under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"`score_threshold` must be in [0, 1], got {score_threshold}.")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"`iou_threshold` must be in [0, 1], got {iou_threshold}.")
        if pre_nms_topk_per_level < 1 or max_detections < 1:
            raise ValueError(
                "`pre_nms_topk_per_level` and `max_detections` must be positive, got "
                f"{pre_nms_topk_per_level} and {max_detections}."
            )
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.box_coder = box_coder or BoxCoder()
        self.score_threshold = float(score_threshold)
        self.pre_nms_topk_per_level = int(pre_nms_topk_per_level)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)

    def _candidates(self, cls_logits, anchor_image_size):
        """Top-k (anchor, class) pairs per level: indices [B, C], classes [B, C], logits [B, C]."""
        num_classes = tf.shape(cls_logits)[-1]
        height, width = anchor_image_size
        level_sizes = [
            tf.shape(level_anchors)[0]
            for level_anchors in self.anchor_generator.anchors_per_level(height, width)
        ]
        anchor_indices, classes, logits = [], [], []
        offset = 0
        for size in level_sizes:
            level_logits = cls_logits[:, offset : offset + size, :]
            flat = tf.reshape(level_logits, [tf.shape(cls_logits)[0], -1])  # [B, A_l * K]
            k = tf.minimum(self.pre_nms_topk_per_level, tf.shape(flat)[1])
            top_logits, top_indices = tf.math.top_k(flat, k=k, sorted=False)
            anchor_indices.append(top_indices // num_classes + offset)
            classes.append(top_indices % num_classes)
            logits.append(top_logits)
            offset += size
        return (
            tf.concat(anchor_indices, axis=1),
            tf.concat(classes, axis=1),
            tf.concat(logits, axis=1),
        )

    def call(self, cls_logits, box_deltas, anchor_image_size, clip_size):
        cls_logits = tf.cast(cls_logits, tf.float32)
        box_deltas = tf.cast(box_deltas, tf.float32)
        anchors = self.anchor_generator(*anchor_image_size)
        anchor_indices, classes, logits = self._candidates(cls_logits, anchor_image_size)
        scores = tf.sigmoid(logits)
        deltas = tf.gather(box_deltas, anchor_indices, batch_dims=1)  # [B, C, 4]
        boxes = self.box_coder.decode(deltas, tf.gather(anchors, anchor_indices))
        size = tf.cast(clip_size, tf.float32)  # [2] or [B, 2]: (height, width)
        bounds = tf.reshape(tf.gather(size, [1, 0, 1, 0], axis=-1), [-1, 1, 4])
        boxes = tf.minimum(tf.maximum(boxes, 0.0), bounds)

        def per_image(args):
            image_boxes, image_scores, image_classes = args
            keep = ops.batched_nms(
                image_boxes,
                image_scores,
                image_classes,
                iou_threshold=self.iou_threshold,
                max_output_size=self.max_detections,
                score_threshold=self.score_threshold,
            )
            return pad_detections(tf.gather(image_boxes, keep), tf.gather(image_scores, keep),
                                  tf.gather(image_classes, keep), self.max_detections)

        return map_images(per_image, (boxes, scores, classes), self.max_detections)

    def get_config(self):
        return {
            **super().get_config(),
            "anchor_generator": keras.saving.serialize_keras_object(self.anchor_generator),
            "box_coder": keras.saving.serialize_keras_object(self.box_coder),
            "score_threshold": self.score_threshold,
            "pre_nms_topk_per_level": self.pre_nms_topk_per_level,
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["anchor_generator"] = keras.saving.deserialize_keras_object(
            config["anchor_generator"]
        )
        if "box_weights" in config:  # saved before the box coder was its own object
            config["box_coder"] = BoxCoder(config.pop("box_weights"))
        elif config.get("box_coder") is not None:
            config["box_coder"] = keras.saving.deserialize_keras_object(config["box_coder"])
        return cls(**config)


def pad_detections(boxes, scores, classes, max_detections):
    """One image's `[n, 4]`, `[n]`, `[n]` detections (n <= max_detections) padded to
    `max_detections` with zeros (classes with -1); returns them and n."""
    count = tf.shape(scores)[0]
    padding = max_detections - count
    return (tf.pad(boxes, [[0, padding], [0, 0]]), tf.pad(scores, [[0, padding]]),
            tf.pad(classes, [[0, padding]], constant_values=-1), count)


def map_images(per_image, batch, max_detections):
    """`per_image(tensors of one image) -> pad_detections(...)` over a batch of tensors;
    returns the padded detection dict `{"boxes", "scores", "classes", "num_detections"}`."""
    if batch[0].shape[0] == 1:
        # A batch known to be 1 (LiteRT's fixed input) needs no loop; the LiteRT int8
        # calibrator crashes on map_fn's While loop.
        found = [value[None] for value in per_image(tuple(tensor[0] for tensor in batch))]
    else:
        found = tf.map_fn(per_image, batch, fn_output_signature=(
            tf.TensorSpec([max_detections, 4], tf.float32),
            tf.TensorSpec([max_detections], tf.float32),
            tf.TensorSpec([max_detections], tf.int32),
            tf.TensorSpec([], tf.int32)))
    return dict(zip(("boxes", "scores", "classes", "num_detections"), found))


def unpad_detections(detections) -> list:
    """Per-image detections without padding, from the padded batch `DetectionPostprocessor`
    (and so `model.predict`) returns.

    Args:
        detections: `{"boxes" [B, D, 4], "scores" [B, D], "classes" [B, D]}` (numpy or
            tensors), and `"num_detections" [B]`; without it, entries with class >= 0 count.

    Returns:
        A list of B dicts `{"boxes" [n, 4], "scores" [n], "classes" [n]}` of numpy arrays.
    """
    import numpy as np

    arrays = {key: np.asarray(detections[key]) for key in ("boxes", "scores", "classes")}
    if "num_detections" in detections:
        counts = np.asarray(detections["num_detections"]).reshape(-1)
    else:
        counts = np.count_nonzero(arrays["classes"] >= 0, axis=-1)
    return [{key: value[index][:int(count)] for key, value in arrays.items()}
            for index, count in enumerate(counts)]
