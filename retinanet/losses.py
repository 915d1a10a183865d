"""RetinaNet losses: sigmoid focal loss, smooth L1 and the IoU family (GIoU, DIoU, CIoU),
normalised by positive anchors.

Both take per-anchor targets from `retinanet.LabelEncoder` and an `anchor_states` tensor
(1 positive, 0 negative, -1 ignored). They return the sum over anchors divided by the number
of positive anchors in the batch (at least 1). Ignored anchors contribute nothing. All math
runs in float32, whatever the compute dtype of the predictions.
"""

import math

import keras
import tensorflow as tf

from retinanet import ops
from retinanet.matching import IGNORED, POSITIVE


def _sum_over_positives(loss, anchor_states):
    """Per-anchor `loss` [B, A] summed over positive anchors, divided by their number."""
    loss = tf.where(tf.equal(anchor_states, POSITIVE), loss, 0.0)
    return tf.reduce_sum(loss) / _num_positives(anchor_states)


def _num_positives(anchor_states):
    positives = tf.reduce_sum(tf.cast(tf.equal(anchor_states, POSITIVE), tf.float32))
    return tf.maximum(positives, 1.0)


@keras.saving.register_keras_serializable(package="retinanet")
class FocalLoss:
    """Sigmoid focal loss (Lin et al., 2017).

    `FL(p_t) = -alpha_t * (1 - p_t)**gamma * log(p_t)`, with `alpha_t = alpha` on positive
    targets and `1 - alpha` on negative ones, summed over anchors and classes.

    Call with:
        cls_logits: float Tensor `[B, A, K]`, raw logits.
        cls_targets: int Tensor `[B, A]`, the matched class of positive anchors (any value
            elsewhere).
        anchor_states: int Tensor `[B, A]`: 1 positive, 0 negative, -1 ignored.

    Returns:
        float32 scalar: the summed loss divided by max(1, number of positive anchors).
    """

    def __init__(self, alpha=0.25, gamma=2.0):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
        if gamma < 0:
            raise ValueError(f"`gamma` must be non-negative, got {gamma}.")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def elementwise(self, logits, targets):
        """The unnormalised loss for one-hot `targets` of the same shape as `logits`."""
        logits = tf.cast(logits, tf.float32)
        targets = tf.cast(targets, tf.float32)
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        probs = tf.sigmoid(logits)
        p_t = targets * probs + (1.0 - targets) * (1.0 - probs)
        alpha_t = targets * self.alpha + (1.0 - targets) * (1.0 - self.alpha)
        return alpha_t * tf.pow(1.0 - p_t, self.gamma) * cross_entropy

    def __call__(self, cls_logits, cls_targets, anchor_states):
        num_classes = tf.shape(cls_logits)[-1]
        positive = tf.equal(anchor_states, POSITIVE)
        one_hot = tf.one_hot(tf.where(positive, cls_targets, -1), num_classes)
        loss = tf.reduce_sum(self.elementwise(cls_logits, one_hot), axis=-1)
        loss = tf.where(tf.equal(anchor_states, IGNORED), 0.0, loss)
        return tf.reduce_sum(loss) / _num_positives(anchor_states)

    def get_config(self):
        return {"alpha": self.alpha, "gamma": self.gamma}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="retinanet")
class SmoothL1Loss:
    """Smooth L1 (Huber divided by `beta`) over the box deltas of positive anchors.

    `0.5 * x**2 / beta` for `|x| < beta`, else `|x| - 0.5 * beta`; summed over the four
    deltas and the positive anchors. `beta=0` gives plain L1.

    Call with:
        box_deltas: float Tensor `[B, A, 4]`, predicted (t_x, t_y, t_w, t_h).
        box_targets: float Tensor `[B, A, 4]`, encoded targets.
        anchor_states: int Tensor `[B, A]`: 1 positive, 0 negative, -1 ignored.

    Returns:
        float32 scalar: the summed loss divided by max(1, number of positive anchors).
    """

    def __init__(self, beta=1.0 / 9.0):
        if beta < 0:
            raise ValueError(f"`beta` must be non-negative, got {beta}.")
        self.beta = float(beta)

    def elementwise(self, predictions, targets):
        diff = tf.abs(tf.cast(predictions, tf.float32) - tf.cast(targets, tf.float32))
        if self.beta == 0.0:
            return diff
        return tf.where(diff < self.beta, 0.5 * diff**2 / self.beta, diff - 0.5 * self.beta)

    def __call__(self, box_deltas, box_targets, anchor_states):
        loss = tf.reduce_sum(self.elementwise(box_deltas, box_targets), axis=-1)
        return _sum_over_positives(loss, anchor_states)

    def get_config(self):
        return {"beta": self.beta}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


IOU_LOSSES = ("giou", "diou", "ciou")
_EPS = 1e-7


def iou_loss(boxes1, boxes2, kind="giou"):
    """`1 - IoU` plus the penalty of GIoU, DIoU or CIoU, for boxes paired row by row.

    - GIoU (Rezatofighi et al., 2019): `1 - IoU + (C - U) / C`, C the area of the smallest
      box enclosing both, U their union; in [0, 2).
    - DIoU (Zheng et al., 2020): `1 - IoU + d**2 / c**2`, d the distance of the centres, c
      the diagonal of the enclosing box; in [0, 2).
    - CIoU: DIoU `+ alpha * v`, `v = 4 / pi**2 * (atan(w2 / h2) - atan(w1 / h1))**2`,
      `alpha = v / (1 - IoU + v)` (no gradient through alpha, as the paper's code).

    Zero-area boxes, boxes far apart and huge boxes give finite values and gradients: every
    division has a floor of 1e-7.

    Args:
        boxes1, boxes2: float Tensor `[..., 4]`, xyxy, the same shape.
        kind: one of `IOU_LOSSES`.

    Returns:
        float32 Tensor `[...]`; 0 for identical boxes.
    """
    if kind not in IOU_LOSSES:
        raise ValueError(f"`kind` must be one of {IOU_LOSSES}, got {kind!r}.")
    a = tf.cast(boxes1, tf.float32)
    b = tf.cast(boxes2, tf.float32)
    # Misordered corners (x2 < x1) count as empty rather than negative sizes.
    a = tf.concat([a[..., :2], tf.maximum(a[..., 2:], a[..., :2])], axis=-1)
    b = tf.concat([b[..., :2], tf.maximum(b[..., 2:], b[..., :2])], axis=-1)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    inter_w = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_h = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = inter_w * inter_h
    union = wa * ha + wb * hb - inter
    iou = inter / (union + _EPS)
    enclose_w = tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0])
    enclose_h = tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1])
    if kind == "giou":
        enclosing = enclose_w * enclose_h
        return 1.0 - iou + (enclosing - union) / (enclosing + _EPS)
    centre_distance = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2 +
                       (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2) / 4.0
    diagonal = enclose_w**2 + enclose_h**2
    loss = 1.0 - iou + centre_distance / (diagonal + _EPS)
    if kind == "ciou":
        v = (4.0 / math.pi**2) * (tf.atan(wb / (hb + _EPS)) - tf.atan(wa / (ha + _EPS))) ** 2
        alpha = tf.stop_gradient(v / (1.0 - iou + v + _EPS))
        loss = loss + alpha * v
    return loss


@keras.saving.register_keras_serializable(package="retinanet")
class IoULoss:
    """GIoU, DIoU or CIoU loss of positive anchors, on boxes decoded from the deltas.

    The model decodes predicted and target deltas on their anchors with its box coder
    (`retinanet.BoxCoder`, whose clamps keep extreme deltas finite) and passes both as
    `decoded`; the loss is `iou_loss` summed over positive anchors and divided by their
    number (at least 1).

    Args:
        kind: one of `IOU_LOSSES`.

    Call with `box_deltas`, `box_targets` `[B, A, 4]`, `anchor_states` `[B, A]` and
    `decoded={"predicted": [B, A, 4], "target": [B, A, 4]}` xyxy boxes.
    """

    needs_decoded_boxes = True

    def __init__(self, kind="giou"):
        if kind not in IOU_LOSSES:
            raise ValueError(f"`kind` must be one of {IOU_LOSSES}, got {kind!r}.")
        self.kind = kind

    def __call__(self, box_deltas, box_targets, anchor_states, decoded=None):
        if decoded is None:
            raise ValueError("IoULoss needs the decoded boxes (`decoded=`), which "
                             "RetinaNet.compute_loss passes.")
        loss = iou_loss(decoded["predicted"], decoded["target"], self.kind)
        return _sum_over_positives(loss, anchor_states)

    def get_config(self):
        return {"kind": self.kind}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("box_weights", None)  # now the model's box coder's
        return cls(**config)


@keras.saving.register_keras_serializable(package="retinanet")
class QualityFocalLoss:
    """Quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020).

    The class score learns the localisation quality: at a positive anchor the target of its
    class is the IoU `q` of the anchor's predicted box with its ground-truth box (no
    gradient through `q`), elsewhere 0, and each term is the binary cross-entropy against
    that soft target, weighted by `|q - sigmoid(logit)| ** beta`. A well-placed box then
    scores higher than a loose one, and NMS keeps it. Decoding is unchanged: the score is
    still `sigmoid(logit)`.

    Args:
        beta: the focusing exponent (2 in the paper).

    Call with `cls_logits` `[B, A, K]`, `cls_targets` and `anchor_states` `[B, A]` (as
    `FocalLoss`) and `quality` float `[B, A]` in [0, 1]; returns the summed loss divided
    by max(1, positive anchors).
    """

    needs_quality = True

    def __init__(self, beta=2.0):
        if beta < 0:
            raise ValueError(f"`beta` must be non-negative, got {beta}.")
        self.beta = float(beta)

    def __call__(self, cls_logits, cls_targets, anchor_states, quality=None):
        if quality is None:
            raise ValueError("QualityFocalLoss needs `quality`, which RetinaNet.compute_loss "
                             "passes.")
        logits = tf.cast(cls_logits, tf.float32)
        positive = tf.equal(anchor_states, POSITIVE)
        one_hot = tf.one_hot(tf.where(positive, cls_targets, -1), tf.shape(logits)[-1])
        soft = one_hot * tf.cast(quality, tf.float32)[..., None]
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=soft, logits=logits)
        loss = cross_entropy * tf.pow(tf.abs(soft - tf.sigmoid(logits)), self.beta)
        loss = tf.where(tf.equal(anchor_states, IGNORED), 0.0, tf.reduce_sum(loss, axis=-1))
        return tf.reduce_sum(loss) / _num_positives(anchor_states)

    def get_config(self):
        return {"beta": self.beta}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def loss_inputs(classification_loss, box_loss, box_deltas, box_targets, box_coder, anchors):
    """The keyword arguments the two losses ask for, with the boxes decoded once for both.

    A classification loss with `needs_quality` gets `quality` `[B, A]`: the IoU of each
    anchor's predicted box with its target box, without gradient (the class score's target at
    positives). A box loss with `needs_decoded_boxes` gets `decoded`: `{"predicted",
    "target"}` `[B, A, 4]` xyxy pixels.

    Args:
        box_deltas, box_targets: `[B, A, 4]` encoded deltas (predicted and target).
        box_coder: the `BoxCoder` that encoded them.
        anchors: callable returning the `[A, 4]` anchors (called only when needed).

    Returns:
        `(classification_options, box_options)`, dicts (empty for the paper's losses).
    """
    needs_quality = getattr(classification_loss, "needs_quality", False)
    needs_boxes = getattr(box_loss, "needs_decoded_boxes", False)
    if not (needs_quality or needs_boxes):
        return {}, {}
    batch_anchors = anchors()[None]
    decoded = {"predicted": box_coder.decode(tf.cast(box_deltas, tf.float32), batch_anchors),
               "target": box_coder.decode(box_targets, batch_anchors)}
    quality = ({"quality": tf.stop_gradient(ops.aligned_iou(decoded["predicted"],
                                                            decoded["target"]))}
               if needs_quality else {})
    return quality, ({"decoded": decoded} if needs_boxes else {})
