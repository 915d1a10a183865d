"""torchvision RetinaNet checkpoints (`.safetensors` or `.npz`) into `RetinaNet`, without torch.

A model trained with torchvision (`retinanet_resnet50_fpn` or `_v2`, any number of classes)
comes to Keras, SavedModel and LiteRT through its state dict, saved with torchvision's own
names by two lines of PyTorch:

    from safetensors.torch import save_file
    save_file(model.state_dict(), "retinanet.safetensors")

(or `numpy.savez("retinanet.npz", **{k: v.numpy() for k, v in model.state_dict().items()})`).
`from_torchvision` reads it with numpy alone, tells v1 from v2 by its tensors (v2's P6 reads
C5's 2048 channels, its heads have GroupNorm), builds
`torchvision_detector.build_torchvision_retinanet`
(torchvision's rules) and copies every tensor: convolutions from PyTorch's `[out, in, kh, kw]`
to Keras's `[kh, kw, in, out]`, batch norm's running statistics to Keras's moving ones.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": None, "I64": "<i8",
                       "I32": "<i4", "U8": "u1", "BOOL": "?"}
_MAX_HEADER_BYTES = 100 * 2**20


def read_state_dict(path) -> dict:
    """{name: numpy array} of a `.safetensors` or `.npz` file (no pickles are loaded).

    Raises:
        ValueError: naming the file, when it is missing, of another kind, or malformed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a .safetensors or .npz state dict")
    with open(path, "rb") as file:
        data = file.read()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if length > min(_MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError(f"a header of {length} bytes")
        header = json.loads(data[8:8 + length])
        body = memoryview(data)[8 + length:]
        state = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None or not 0 <= start <= end <= len(body):
                raise ValueError(f"tensor {name!r} ({entry['dtype']}, {start}-{end})")
            state[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(entry["shape"])
        return state
    except (ValueError, KeyError, TypeError, struct.error) as error:
        raise ValueError(f"{path}: not a readable .safetensors file ({error})") from None


def _take(state, name, shape=None):
    if name not in state:
        raise ValueError(f"not a torchvision RetinaNet state dict: no {name!r}")
    value = np.asarray(state.pop(name), np.float32)
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value


def _conv(layer, state, name, bias=True):
    """A PyTorch conv `[out, in, kh, kw]` (and bias) into a Keras Conv2D `[kh, kw, in, out]`."""
    kernel = layer.kernel
    layer.kernel.assign(_take(state, f"{name}.weight", (kernel.shape[3], kernel.shape[2],
                                                        kernel.shape[0], kernel.shape[1]))
                        .transpose(2, 3, 1, 0))
    if layer.use_bias:
        # torchvision's convs before a norm have no bias: zero computes the same.
        layer.bias.assign(_take(state, f"{name}.bias", layer.bias.shape) if bias
                          else np.zeros(layer.bias.shape, np.float32))


def _norm(layer, state, name):
    layer.gamma.assign(_take(state, f"{name}.weight", layer.gamma.shape))
    layer.beta.assign(_take(state, f"{name}.bias", layer.beta.shape))
    if hasattr(layer, "moving_mean"):
        layer.moving_mean.assign(_take(state, f"{name}.running_mean", layer.moving_mean.shape))
        layer.moving_variance.assign(_take(state, f"{name}.running_var",
                                           layer.moving_variance.shape))
        state.pop(f"{name}.num_batches_tracked", None)


def from_torchvision(path, class_names=None):
    """`RetinaNet` with the weights of a torchvision RetinaNet state dict file.

    Args:
        path: a `.safetensors` or `.npz` file of `model.state_dict()` of torchvision's
            `retinanet_resnet50_fpn` or `retinanet_resnet50_fpn_v2`, any number of classes.
        class_names: names of the K classes; default COCO's for 91 logits, else none.

    Returns:
        A built `retinanet.RetinaNet` with torchvision's rules (see
        `torchvision_detector.build_torchvision_retinanet`).

    Raises:
        ValueError: naming the file, when it is not such a state dict (a missing or
            misshapen tensor, or one left over).
    """
    state = dict(read_state_dict(path))
    try:
        return _build(state, class_names)
    except ValueError as error:
        raise ValueError(f"{os.fspath(path)}: {error}") from None


def _build(state, class_names):
    from retinanet.model import torchvision_detector as detector

    p6 = state.get("backbone.fpn.extra_blocks.p6.weight")
    logits = state.get("head.classification_head.cls_logits.weight")
    if p6 is None or logits is None:
        raise ValueError("not a torchvision RetinaNet state dict (no FPN P6 or class logits)")
    v2 = p6.shape[1] == 2048
    num_anchors = state["head.regression_head.bbox_reg.weight"].shape[0] // 4
    num_classes = logits.shape[0] // num_anchors
    if class_names is None and num_classes == len(detector.COCO_CLASS_NAMES):
        class_names = list(detector.COCO_CLASS_NAMES)
    model = detector.build_torchvision_retinanet(
        num_classes, p6_input="c5" if v2 else "p5", use_group_norm=v2,
        class_names=class_names)

    features = model.backbone.get_layer(f"{detector.BACKBONE}_features")
    _conv(features.get_layer("conv1_conv"), state, "backbone.body.conv1")
    _norm(features.get_layer("conv1_bn"), state, "backbone.body.bn1")
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for block in range(blocks):
            ours, theirs = f"stack{stage}_block{block}", f"backbone.body.layer{stage + 1}.{block}"
            for k in (1, 2, 3):
                _conv(features.get_layer(f"{ours}_{k}_conv"), state, f"{theirs}.conv{k}")
                _norm(features.get_layer(f"{ours}_{k}_bn"), state, f"{theirs}.bn{k}")
            if block == 0:
                _conv(features.get_layer(f"{ours}_0_conv"), state, f"{theirs}.downsample.0")
                _norm(features.get_layer(f"{ours}_0_bn"), state, f"{theirs}.downsample.1")
    for index in range(3):
        _conv(model.fpn.lateral_convs[index], state, f"backbone.fpn.inner_blocks.{index}.0")
        _conv(model.fpn.output_convs[index], state, f"backbone.fpn.layer_blocks.{index}.0")
    for index, level in enumerate((6, 7)):
        _conv(model.fpn.extra_convs[index], state, f"backbone.fpn.extra_blocks.p{level}")
    for head, theirs, output in ((model.classification_head, "classification_head",
                                  "cls_logits"),
                                 (model.box_head, "regression_head", "bbox_reg")):
        for index, conv in enumerate(head.convs):
            _conv(conv, state, f"head.{theirs}.conv.{index}.0", bias=not v2)
            if v2:
                _norm(head.norms[index], state, f"head.{theirs}.conv.{index}.1")
        _conv(head.output_conv, state, f"head.{theirs}.{output}")
    left = sorted(name for name in state if not name.endswith("num_batches_tracked"))
    if left:
        raise ValueError(f"tensors with no place in the model: {left[:5]}")
    return model
