"""Anchor-to-ground-truth matching: the training targets of RetinaNet."""

import keras
import tensorflow as tf

from retinanet import ops
from retinanet.anchors import AnchorGenerator

# Anchor states, made here and read by the losses.
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@keras.saving.register_keras_serializable(package="retinanet")
class LabelEncoder:
    """Matches anchors to ground-truth boxes by IoU and encodes the targets.

    For each anchor, take its highest IoU over the image's ground-truth boxes:

    - IoU >= `positive_iou`: positive, trained on that box's class and deltas;
    - IoU < `negative_iou`: negative (background);
    - in between: ignored, no loss at all.

    With `allow_low_quality_matches`, every ground-truth box also claims the anchor(s) with
    its highest IoU (ties included, IoU > 0), even below `positive_iou`, so that no object
    goes untrained. A claimed anchor is matched to the claiming box.

    Worked example, one 10x10 box `[0, 0, 10, 10]` and three anchors:
    `[0, 0, 10, 10]` (IoU 1.0) is positive, `[0, 0, 10, 22]` (IoU 0.4545) is ignored and
    `[20, 20, 30, 30]` (IoU 0) is negative. If the first anchor were missing, the second
    would be the box's best anchor and become positive as a low-quality match.

    Args:
        anchor_generator: an `AnchorGenerator`; built with defaults when None.
        positive_iou, negative_iou: the thresholds, `0 <= negative_iou <= positive_iou <= 1`.
        allow_low_quality_matches: see above.
        box_weights: the (x, y, w, h) weights of `retinanet.ops.encode_boxes`.
    """

    def __init__(
        self,
        anchor_generator=None,
        positive_iou=0.5,
        negative_iou=0.4,
        allow_low_quality_matches=True,
        box_weights=(1.0, 1.0, 1.0, 1.0),
    ):
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError(
                "`negative_iou` and `positive_iou` need 0 <= negative_iou <= positive_iou <= 1, "
                f"got negative_iou={negative_iou}, positive_iou={positive_iou}."
            )
        if len(box_weights) != 4 or any(w <= 0 for w in box_weights):
            raise ValueError(f"`box_weights` must be 4 positive numbers, got {box_weights}.")
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.box_weights = tuple(float(w) for w in box_weights)

    def match(self, anchors, boxes, classes):
        """Matches anchors to boxes.

        Args:
            anchors: float Tensor `[A, 4]`, xyxy absolute pixels.
            boxes: float Tensor `[B, N, 4]`, xyxy absolute pixels, padded with -1.
            classes: int Tensor `[B, N]`, padded with -1 (negative entries are padding).

        Returns:
            `(matched_index [B, A] int32, anchor_states [B, A] int32)`: the index of each
            anchor's best box in `[0, N]`, only meaningful for positive anchors (an image
            without boxes gives 0 everywhere; its anchors are all negative), and 1 / 0 / -1
            for positive / negative / ignored.
        """
        boxes = tf.cast(boxes, tf.float32)
        valid = tf.greater_equal(classes, 0)  # [B, N]
        batch_size = tf.shape(boxes)[0]
        anchors = tf.broadcast_to(anchors[None], [batch_size, tf.shape(anchors)[0], 4])
        # [B, A, N]; padding columns get -1 so they never win a max. One extra padding
        # column keeps the reductions defined when N is 0.
        iou = tf.where(valid[:, None, :], ops.box_iou(anchors, boxes), -1.0)
        iou = tf.pad(iou, [[0, 0], [0, 0], [0, 1]], constant_values=-1.0)
        valid = tf.pad(valid, [[0, 0], [0, 1]], constant_values=False)

        max_iou = tf.reduce_max(iou, axis=-1)
        matched_index = tf.argmax(iou, axis=-1, output_type=tf.int32)
        states = tf.where(
            max_iou >= self.positive_iou,
            POSITIVE,
            tf.where(max_iou < self.negative_iou, NEGATIVE, IGNORED),
        )
        if self.allow_low_quality_matches:
            best_iou_per_box = tf.reduce_max(iou, axis=1, keepdims=True)  # [B, 1, N]
            claims = (
                tf.equal(iou, best_iou_per_box) & (best_iou_per_box > 0.0) & valid[:, None, :]
            )
            claimed = tf.reduce_any(claims, axis=-1)  # [B, A]
            claiming_index = tf.argmax(
                tf.where(claims, iou, -1.0), axis=-1, output_type=tf.int32
            )
            matched_index = tf.where(claimed, claiming_index, matched_index)
            states = tf.where(claimed, POSITIVE, states)
        return matched_index, tf.cast(states, tf.int32)

    def encode(self, boxes, classes, height, width):
        """Per-anchor training targets for a batch.

        Args:
            boxes: float Tensor `[B, N, 4]`, xyxy absolute pixels, padded with -1.
            classes: int Tensor `[B, N]`, padded with -1.
            height, width: the (padded) image size the anchors cover.

        Returns:
            A dict with
            `"cls_targets"`: int32 `[B, A]`, the matched class, -1 where not positive;
            `"box_targets"`: float32 `[B, A, 4]`, encoded deltas, 0 where not positive;
            `"anchor_states"`: int32 `[B, A]`, 1 positive, 0 negative, -1 ignored.
        """
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        classes = tf.cast(classes, tf.int32)
        if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"`boxes` must have shape [B, N, 4], got {boxes.shape}.")
        if classes.shape.rank != 2:
            raise ValueError(f"`classes` must have shape [B, N], got {classes.shape}.")
        anchors = self.anchor_generator(height, width)
        matched_index, states = self.match(anchors, boxes, classes)
        positive = tf.equal(states, POSITIVE)

        # The extra padding row makes index N (no box at all) safe to gather.
        boxes = tf.pad(boxes, [[0, 0], [0, 1], [0, 0]], constant_values=-1.0)
        classes = tf.pad(classes, [[0, 0], [0, 1]], constant_values=-1)
        matched_boxes = tf.gather(boxes, matched_index, batch_dims=1)  # [B, A, 4]
        matched_classes = tf.gather(classes, matched_index, batch_dims=1)  # [B, A]
        # Non-positive anchors get a harmless box, so the targets stay finite everywhere.
        matched_boxes = tf.where(positive[..., None], matched_boxes, anchors[None])
        box_targets = ops.encode_boxes(matched_boxes, anchors[None], weights=self.box_weights)
        return {
            "cls_targets": tf.where(positive, matched_classes, -1),
            "box_targets": tf.where(positive[..., None], box_targets, 0.0),
            "anchor_states": states,
        }

    def __call__(self, boxes, classes, height, width):
        return self.encode(boxes, classes, height, width)

    def get_config(self):
        return {
            "anchor_generator": keras.saving.serialize_keras_object(self.anchor_generator),
            "positive_iou": self.positive_iou,
            "negative_iou": self.negative_iou,
            "allow_low_quality_matches": self.allow_low_quality_matches,
            "box_weights": list(self.box_weights),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["anchor_generator"] = keras.saving.deserialize_keras_object(
            config["anchor_generator"]
        )
        return cls(**config)
