"""RetinaNet losses: sigmoid focal loss and smooth L1, normalised by positive anchors.

Both take per-anchor targets from `retinanet.LabelEncoder` and an `anchor_states` tensor
(1 positive, 0 negative, -1 ignored). They return the sum over anchors divided by the number
of positive anchors in the batch (at least 1). Ignored anchors contribute nothing. All math
runs in float32, whatever the compute dtype of the predictions.
"""

import keras
import tensorflow as tf

from retinanet.matching import IGNORED, POSITIVE


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
        loss = tf.where(tf.equal(anchor_states, POSITIVE), loss, 0.0)
        return tf.reduce_sum(loss) / _num_positives(anchor_states)

    def get_config(self):
        return {"beta": self.beta}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
