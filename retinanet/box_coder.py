"""The box coder: one set of weights for encoding training targets and decoding predictions."""

import keras

from retinanet import ops


@keras.saving.register_keras_serializable(package="retinanet")
class BoxCoder:
    """Boxes to regression deltas against anchors and back, with fixed (wx, wy, ww, wh).

    `encode` is `retinanet.ops.encode_boxes` and `decode` is `retinanet.ops.decode_boxes`
    (which clamps dw, dh at log(1000/16)) with this coder's weights. The model's label
    encoder, losses on decoded boxes and postprocessor share one coder, so targets and
    predictions can never be coded with different weights.

    Args:
        weights: four positive numbers; (1, 1, 1, 1) is the RetinaNet paper's.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0)):
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"`weights` must be 4 positive numbers, got {weights}.")
        self.weights = tuple(float(w) for w in weights)

    def encode(self, boxes, anchors):
        """Deltas `[..., 4]` of xyxy `boxes` against xyxy `anchors` (broadcastable)."""
        return ops.encode_boxes(boxes, anchors, self.weights)

    def decode(self, deltas, anchors):
        """xyxy boxes `[..., 4]` from `deltas` on xyxy `anchors` (broadcastable)."""
        return ops.decode_boxes(deltas, anchors, self.weights)

    def __eq__(self, other):
        return isinstance(other, BoxCoder) and other.weights == self.weights

    def __hash__(self):
        return hash(self.weights)

    def get_config(self):
        return {"weights": list(self.weights)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
