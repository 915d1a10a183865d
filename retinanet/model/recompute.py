"""Activation recomputation for a backbone: keep a few tensors, recompute the rest.

A training step keeps every activation of the forward pass until the backward pass needs
it; in a ResNet50 RetinaNet most of them are the backbone's. `recomputed_backbone` runs the
backbone as a chain of segments, cut where a single tensor carries everything forward (a
residual block's output). Each segment keeps only its input; its inner activations are
recomputed from that input during the backward pass. The cost is about one more backbone
forward per step.

Batch norm in training mode updates its moving statistics in the forward pass; the
recomputation must not update them a second time. `FusedBatchNormalization` skips its
update while `recomputing()` is true, and `recomputed_backbone` refuses backbones with other
batch-norm layers that train.
"""

import contextlib
import math

import keras
import tensorflow as tf

_STATE = {"recomputing": False}


def recomputing():
    """True while a segment's forward pass is being recomputed (read at trace time)."""
    return _STATE["recomputing"]


@contextlib.contextmanager
def _recomputation():
    previous, _STATE["recomputing"] = _STATE["recomputing"], True
    try:
        yield
    finally:
        _STATE["recomputing"] = previous


def recompute(fn):
    """`fn` (one tensor to one tensor) whose activations are recomputed for its gradient.

    Like `tf.recompute_grad`, but the recomputation runs under `recomputing()`, so that
    stateful layers (batch norm's moving statistics) update once per step, not twice.
    """

    @tf.custom_gradient
    def call(x):
        def grad(dy, variables=None):
            variables = list(variables or [])
            # Tied to the incoming gradient, so that graph optimisation can't merge the
            # recomputation with the forward pass (which would keep the activations).
            with tf.control_dependencies([dy]):
                x_again = tf.identity(x)
            with _recomputation(), tf.GradientTape() as tape:
                tape.watch(x_again)
                y = fn(x_again)
            dx, *dvariables = tape.gradient(y, [x_again, *variables], output_gradients=dy)
            return dx, dvariables

        return fn(x), grad

    return call


def layer_nodes(model):
    """{layer: its node in `model`'s graph} (KerasTensors read and written); a layer called
    more than once in the graph can't be cut around."""
    nodes = {}
    for depth_nodes in model._nodes_by_depth.values():
        for node in depth_nodes:
            if node.operation in nodes:
                raise ValueError(f"`backbone` layer {node.operation.name!r} is called more than "
                                 "once; recomputation needs each layer called once.")
            nodes[node.operation] = node
    return nodes


def _segments(model, min_layers):
    """Cuts a single-input functional `model` into a chain of sub-models.

    A cut follows layer i where exactly one tensor made so far is read after i; every output
    of `model` must sit at a cut (or be its last layer's). Consecutive cuts are merged until a
    segment holds at least `min_layers` layers.

    Returns:
        `(segments, emitted)`: functional sub-models, each one tensor to one tensor, and for
        each the index into `model.outputs` of its output, or None.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    made, last_read = {id(model.inputs[0]): -1}, {}
    tensors = {id(model.inputs[0]): model.inputs[0]}
    nodes = layer_nodes(model)
    for index, layer in enumerate(layers):
        node = nodes[layer]
        for tensor in node.input_tensors:
            last_read[id(tensor)] = index
        for tensor in node.output_tensors:
            made[id(tensor)], tensors[id(tensor)] = index, tensor
    outputs = {id(tensor): position for position, tensor in enumerate(model.outputs)}
    cuts = []  # (layer index, tensor id)
    for index in range(len(layers)):
        live = [key for key, at in made.items() if at <= index < last_read.get(key, -1)]
        if len(live) == 1:
            cuts.append((index, live[0]))
    final = made[id(model.outputs[-1])]
    kept, start = [], -1
    for index, key in cuts:
        if key in outputs or (index - start >= min_layers and final - index >= min_layers):
            kept.append((index, key))
            start = index
    missing = [tensor.name for tensor in model.outputs[:-1]
               if id(tensor) not in {key for _, key in kept}]
    if missing or final != len(layers) - 1:
        raise ValueError(f"`backbone` {model.name!r} can't be cut into a chain at its outputs "
                         f"({missing or 'its last output is not made last'}).")
    boundaries = [id(model.inputs[0])] + [key for _, key in kept] + [id(model.outputs[-1])]
    segments = [keras.Model(tensors[a], tensors[b], name=f"{model.name}_segment_{i}")
                for i, (a, b) in enumerate(zip(boundaries[:-1], boundaries[1:]))]
    return segments, [outputs.get(key) for key in boundaries[1:]]


def _check_batchnorm(model):
    from retinanet.model.fused_batchnorm import FusedBatchNormalization

    for layer in model._flatten_layers(include_self=False):
        # Only the fused layer's own update knows to skip the recomputation.
        fused = (isinstance(layer, FusedBatchNormalization) and not layer.synchronized
                 and not layer.renorm)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and not fused:
            raise ValueError(
                f"`backbone` layer {layer.name!r} ({type(layer).__name__}, synchronized="
                f"{layer.synchronized}) trains its statistics outside the fused kernel: they "
                "would update twice per step under recomputation. Use fused_batchnorm=True "
                "without sync_batchnorm, or frozen batch norm.")


def recomputed_backbone(backbone, min_layers=None):
    """A function `images -> features` that equals `backbone(images, training=True)` with
    its segments' activations recomputed in the backward pass (see the module docstring).

    Args:
        backbone: a functional `keras.Model` from raw images to `[C3, C4, C5]`: either one
            whose layers are all single-input in a chain, or (as `build_backbone` makes) a
            chain of preprocessing layers ending in such a functional feature model.
        min_layers: the fewest layers per segment; default the square root of the layer
            count (the classic trade: about sqrt(n) kept tensors, sqrt(n) layers recomputed).

    Returns:
        A Python function; the segments share the backbone's layers and variables.
    """
    if not isinstance(backbone, keras.Model) or not hasattr(backbone, "_inbound_nodes") \
            or not getattr(backbone, "_is_graph_network", True) or not backbone.inputs:
        raise ValueError("`backbone` must be a functional keras.Model for recomputation.")
    _check_batchnorm(backbone)
    inner = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    features = inner[-1] if isinstance(inner[-1], keras.Model) else backbone
    prefix = inner[:-1] if features is not backbone else []
    if prefix or features is not backbone:
        previous, nodes = backbone.inputs[0], layer_nodes(backbone)
        for layer in inner:
            node = nodes[layer]
            if len(node.input_tensors) != 1 or node.input_tensors[0] is not previous:
                raise ValueError(f"`backbone` {backbone.name!r}: {layer.name!r} does not read "
                                 "the layer before it; recomputation needs a chain.")
            previous = node.output_tensors[0]
    count = len(features.layers)
    segments, emitted = _segments(features, min_layers or max(2, math.isqrt(count)))

    def run(images):
        _check_batchnorm(backbone)  # again at trace time: `synchronized` may be set later
        x = images
        for layer in prefix:
            x = layer(x)
        outputs = [None] * len(features.outputs)
        for segment, position in zip(segments, emitted):
            x = recompute(lambda t, segment=segment: segment(t, training=True))(x)
            if position is not None:
                outputs[position] = x
        return outputs

    return run
