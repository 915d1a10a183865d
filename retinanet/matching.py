"""Anchor-to-ground-truth matching and the training targets of RetinaNet.

A matcher assigns every anchor a state (positive, negative or ignored) and, for positives, a
ground-truth box; `LabelEncoder` turns that assignment into class and box targets with the
model's box coder. Matchers are interchangeable: `IoUMatcher` (the paper's thresholds) and
`ATSSMatcher` (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020).
"""

import keras
import tensorflow as tf

from retinanet import ops
from retinanet.anchors import AnchorGenerator
from retinanet.box_coder import BoxCoder

# Anchor states, made here and read by the losses.
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def _masked_iou(anchors, boxes, classes):
    """IoU `[B, A, N + 1]` of anchors `[A, 4]` with boxes `[B, N, 4]`: -1 for padding boxes
    and for one extra padding column, which keeps reductions defined when N is 0; and the
    validity of the boxes `[B, N + 1]`."""
    boxes = tf.cast(boxes, tf.float32)
    valid = tf.greater_equal(classes, 0)
    anchors = tf.broadcast_to(anchors[None], [tf.shape(boxes)[0], tf.shape(anchors)[0], 4])
    iou = tf.where(valid[:, None, :], ops.box_iou(anchors, boxes), -1.0)
    return (tf.pad(iou, [[0, 0], [0, 0], [0, 1]], constant_values=-1.0),
            tf.pad(valid, [[0, 0], [0, 1]], constant_values=False))


@keras.saving.register_keras_serializable(package="retinanet")
class IoUMatcher:
    """The paper's matcher: each anchor's highest IoU over the image's ground-truth boxes.

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
        positive_iou, negative_iou: the thresholds, `0 <= negative_iou <= positive_iou <= 1`.
        allow_low_quality_matches: see above.
    """

    def __init__(self, positive_iou=0.5, negative_iou=0.4, allow_low_quality_matches=True):
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError(
                "`negative_iou` and `positive_iou` need 0 <= negative_iou <= positive_iou <= 1, "
                f"got negative_iou={negative_iou}, positive_iou={positive_iou}."
            )
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, anchors, boxes, classes, level_sizes=None, anchors_per_location=1):
        """Matches anchors to boxes.

        Args:
            anchors: float Tensor `[A, 4]`, xyxy absolute pixels.
            boxes: float Tensor `[B, N, 4]`, xyxy absolute pixels, padded with -1.
            classes: int Tensor `[B, N]`, padded with -1 (negative entries are padding).
            level_sizes, anchors_per_location: the pyramid's layout (unused here; see
                `ATSSMatcher`).

        Returns:
            `(matched_index [B, A] int32, anchor_states [B, A] int32)`: the index of each
            anchor's best box in `[0, N]`, only meaningful for positive anchors (an image
            without boxes gives 0 everywhere; its anchors are all negative), and 1 / 0 / -1
            for positive / negative / ignored.
        """
        iou, valid = _masked_iou(anchors, boxes, classes)
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

    def get_config(self):
        return {
            "positive_iou": self.positive_iou,
            "negative_iou": self.negative_iou,
            "allow_low_quality_matches": self.allow_low_quality_matches,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="retinanet")
class ATSSMatcher:
    """Adaptive training sample selection (ATSS): per-object IoU thresholds.

    For each ground-truth box:

    1. on every pyramid level, the anchors of the `top_k` locations nearest the box's
       centre are candidates (every object has candidates on every level). With one anchor
       per location, as the ATSS authors used, these are the paper's k nearest anchors; with
       RetinaNet's 9 the k nearest anchors would be one location's 9 shapes, so k counts
       locations and each level gives `top_k * anchors_per_location` candidates;
    2. its threshold is the mean plus the standard deviation of the candidates' IoUs (high
       for a box that many anchors fit well, low for an odd-shaped or small one);
    3. candidates with IoU >= the threshold whose centre lies inside the box are positive.

    An anchor that is positive for several boxes goes to the one it overlaps most (highest
    IoU). Every other anchor is negative; ATSS ignores none. An object smaller than every
    anchor still gets the candidates nearest its centre, and keeps those inside it.

    Args:
        top_k: candidate locations per level (9 in the paper).
    """

    def __init__(self, top_k=9):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")
        self.top_k = top_k

    def __call__(self, anchors, boxes, classes, level_sizes=None, anchors_per_location=1):
        """Matches anchors to boxes; arguments and result as `IoUMatcher`'s.

        Args:
            level_sizes: the number of anchors of each pyramid level, in the order of
                `anchors` (Python ints or scalar tensors); required.
            anchors_per_location: a Python int; each level's anchors are ordered location
                by location, this many (sharing one centre) per location, as
                `AnchorGenerator` lays them out.
        """
        if level_sizes is None:
            raise ValueError("ATSSMatcher needs `level_sizes`, the anchors per level.")
        iou, valid = _masked_iou(anchors, boxes, classes)  # [B, A, N + 1], [B, N + 1]
        iou = tf.transpose(iou, [0, 2, 1])  # [B, N + 1, A]
        boxes = tf.pad(tf.cast(boxes, tf.float32), [[0, 0], [0, 1], [0, 0]],
                       constant_values=-1.0)
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2.0  # [A, 2]
        box_centres = (boxes[..., :2] + boxes[..., 2:]) / 2.0  # [B, N + 1, 2]
        distance = tf.norm(box_centres[:, :, None] - anchor_centres[None, None], axis=-1)

        # Candidate indices [B, N + 1, C]: every anchor of the top_k nearest locations on
        # each level (a location's anchors share its centre, so its first one stands for it).
        per_location = int(anchors_per_location)
        candidates, offset = [], 0
        for size in level_sizes:
            level = distance[:, :, offset:offset + size:per_location]  # [B, N + 1, L]
            k = tf.minimum(self.top_k, tf.shape(level)[-1])
            locations = tf.math.top_k(-level, k=k, sorted=False).indices
            indices = locations[..., None] * per_location + tf.range(per_location)
            shape = tf.shape(indices)
            candidates.append(tf.reshape(indices, [shape[0], shape[1], -1]) + offset)
            offset += size
        candidates = tf.concat(candidates, axis=-1)
        candidate_iou = tf.gather(iou, candidates, batch_dims=2)  # [B, N + 1, C]
        count = tf.cast(tf.shape(candidates)[-1], tf.float32)
        mean = tf.reduce_mean(candidate_iou, axis=-1, keepdims=True)
        # The sample standard deviation (n - 1), as the authors' code computes it.
        std = tf.sqrt(tf.reduce_sum(tf.square(candidate_iou - mean), axis=-1, keepdims=True)
                      / tf.maximum(count - 1.0, 1.0))
        selected = candidate_iou >= mean + std

        # Dense [B, N + 1, A] mask of selected candidates, then the centre-inside rule.
        shape = tf.shape(iou, out_type=tf.int64)
        grid = tf.meshgrid(tf.range(shape[0]), tf.range(shape[1]),
                           tf.range(tf.shape(candidates, out_type=tf.int64)[-1]),
                           indexing="ij")
        indices = tf.stack([grid[0], grid[1], tf.cast(candidates, tf.int64)], axis=-1)
        chosen = tf.scatter_nd(tf.reshape(indices, [-1, 3]),
                               tf.reshape(tf.cast(selected, tf.int32), [-1]), shape) > 0
        inside = tf.reduce_min(tf.concat([
            anchor_centres[None, None] - boxes[:, :, None, :2],
            boxes[:, :, None, 2:] - anchor_centres[None, None]], axis=-1), axis=-1) > 0.0
        positive = chosen & inside & valid[:, :, None]

        # Each anchor to its highest-IoU box among those it is positive for.
        scored = tf.where(positive, iou, -1.0)
        matched_index = tf.argmax(scored, axis=1, output_type=tf.int32)  # [B, A]
        states = tf.where(tf.reduce_any(positive, axis=1), POSITIVE, NEGATIVE)
        return matched_index, tf.cast(states, tf.int32)

    def get_config(self):
        return {"top_k": self.top_k}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


MATCHERS = {"iou": IoUMatcher, "atss": ATSSMatcher}


@keras.saving.register_keras_serializable(package="retinanet")
class LabelEncoder:
    """Per-anchor training targets: a matcher's assignment, coded by the box coder.

    Args:
        anchor_generator: the model's `AnchorGenerator`; built with defaults when None.
        matcher: an `IoUMatcher` (default: the paper's 0.5 / 0.4 thresholds) or
            `ATSSMatcher`, or any callable `(anchors, boxes, classes, level_sizes,
            anchors_per_location) -> (matched_index, anchor_states)`.
        box_coder: the model's `BoxCoder` (default weights 1, 1, 1, 1).
    """

    def __init__(self, anchor_generator=None, matcher=None, box_coder=None):
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.matcher = matcher or IoUMatcher()
        self.box_coder = box_coder or BoxCoder()

    def encode(self, boxes, classes, height, width, trim_padding=True):
        """Per-anchor training targets for a batch.

        Args:
            boxes: float Tensor `[B, N, 4]`, xyxy absolute pixels, padded with -1.
            classes: int Tensor `[B, N]`, padded with -1.
            height, width: the (padded) image size the anchors cover.
            trim_padding: match against the boxes up to the batch's last real one only
                (the same targets, much cheaper for batches padded to `max_boxes`; off
                under XLA, which needs static shapes).

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
        if trim_padding:
            # Matching costs A x N, and batches are padded to max_boxes (100) where photos
            # hold a few: drop the columns past the batch's last box.
            positions = tf.range(1, tf.shape(classes)[1] + 1)[None]
            count = tf.reduce_max(tf.where(classes >= 0, positions, 0))
            boxes, classes = boxes[:, :count], classes[:, :count]
        levels = self.anchor_generator.anchors_per_level(height, width)
        anchors = tf.concat(levels, axis=0)
        matched_index, states = self.matcher(
            anchors, boxes, classes, [tf.shape(level)[0] for level in levels],
            anchors_per_location=self.anchor_generator.num_anchors_per_location)
        positive = tf.equal(states, POSITIVE)

        # The extra padding row makes index N (no box at all) safe to gather.
        boxes = tf.pad(boxes, [[0, 0], [0, 1], [0, 0]], constant_values=-1.0)
        classes = tf.pad(classes, [[0, 0], [0, 1]], constant_values=-1)
        matched_boxes = tf.gather(boxes, matched_index, batch_dims=1)  # [B, A, 4]
        matched_classes = tf.gather(classes, matched_index, batch_dims=1)  # [B, A]
        # Non-positive anchors get a harmless box, so the targets stay finite everywhere.
        matched_boxes = tf.where(positive[..., None], matched_boxes, anchors[None])
        box_targets = self.box_coder.encode(matched_boxes, anchors[None])
        return {
            "cls_targets": tf.where(positive, matched_classes, -1),
            "box_targets": tf.where(positive[..., None], box_targets, 0.0),
            "anchor_states": states,
        }

    def __call__(self, boxes, classes, height, width, trim_padding=True):
        return self.encode(boxes, classes, height, width, trim_padding)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "anchor_generator": serialize(self.anchor_generator),
            "matcher": serialize(self.matcher),
            "box_coder": serialize(self.box_coder),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Files saved before matchers were their own objects hold the IoU matcher's fields.
        legacy = {key: config.pop(key) for key in
                  ("positive_iou", "negative_iou", "allow_low_quality_matches") if key in config}
        if "box_weights" in config:
            config["box_coder"] = BoxCoder(config.pop("box_weights"))
        elif config.get("box_coder") is not None:
            config["box_coder"] = keras.saving.deserialize_keras_object(config["box_coder"])
        if legacy:
            config["matcher"] = IoUMatcher(**legacy)
        elif config.get("matcher") is not None:
            config["matcher"] = keras.saving.deserialize_keras_object(config["matcher"])
        config["anchor_generator"] = keras.saving.deserialize_keras_object(
            config["anchor_generator"]
        )
        return cls(**config)
