"""Deterministic torchvision RetinaNet state dicts, built in numpy alone.

Shared by `make_torchvision_reference.py` (which loads them into torchvision, with torch) and
the parity test (which loads the same arrays through `RetinaNet.from_torchvision`, without
torch). The names and shapes are torchvision's `retinanet_resnet50_fpn` (v1) and
`retinanet_resnet50_fpn_v2` (v2) state dicts; the values are seeded per name, scaled so
that activations stay in range through the 50 layers, with class biases that leave hundreds
of detections above torchvision's 0.05 score threshold.
"""

import zlib

import numpy as np

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (width, blocks) of layer1..layer4
NUM_ANCHORS = 9
CLASS_PRIOR = 0.03  # sigmoid of the class bias: most anchors near it, some above 0.05


def state_dict_shapes(version: str, num_classes: int) -> dict:
    """{name: shape} of torchvision's RetinaNet state dict, without `num_batches_tracked`."""
    shapes = {}

    def conv(name, out, inp, k, bias=False):
        shapes[f"{name}.weight"] = (out, inp, k, k)
        if bias:
            shapes[f"{name}.bias"] = (out,)

    def norm(name, channels, batch=True):
        for part in ("weight", "bias") + (("running_mean", "running_var") if batch else ()):
            shapes[f"{name}.{part}"] = (channels,)

    conv("backbone.body.conv1", 64, 3, 7)
    norm("backbone.body.bn1", 64)
    channels = 64
    for stage, (width, blocks) in enumerate(STAGES, start=1):
        for block in range(blocks):
            prefix = f"backbone.body.layer{stage}.{block}"
            conv(f"{prefix}.conv1", width, channels, 1)
            norm(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            norm(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", 4 * width, width, 1)
            norm(f"{prefix}.bn3", 4 * width)
            if block == 0:
                conv(f"{prefix}.downsample.0", 4 * width, channels, 1)
                norm(f"{prefix}.downsample.1", 4 * width)
            channels = 4 * width
    for index, inputs in enumerate((512, 1024, 2048)):
        conv(f"backbone.fpn.inner_blocks.{index}.0", 256, inputs, 1, bias=True)
        conv(f"backbone.fpn.layer_blocks.{index}.0", 256, 256, 3, bias=True)
    conv("backbone.fpn.extra_blocks.p6", 256, 2048 if version == "v2" else 256, 3, bias=True)
    conv("backbone.fpn.extra_blocks.p7", 256, 256, 3, bias=True)
    for head, output, outputs in (("classification_head", "cls_logits", num_classes),
                                  ("regression_head", "bbox_reg", 4)):
        for index in range(4):
            conv(f"head.{head}.conv.{index}.0", 256, 256, 3, bias=version == "v1")
            if version == "v2":
                norm(f"head.{head}.conv.{index}.1", 256, batch=False)
        conv(f"head.{head}.{output}", NUM_ANCHORS * outputs, 256, 3, bias=True)
    return shapes


def make_state_dict(version: str, num_classes: int, seed: int = 0) -> dict:
    """{name: float32 array} for `version` ("v1" or "v2"), the same on every machine."""
    state = {}
    for name, shape in state_dict_shapes(version, num_classes).items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        part = name.rsplit(".", 1)[-1]
        if len(shape) == 4:  # conv: unit gain, or small for the outputs
            fan_in = shape[1] * shape[2] * shape[3]
            gain = 0.1 if name.endswith(("cls_logits.weight", "bbox_reg.weight")) else 1.0
            value = rng.normal(0.0, gain / np.sqrt(fan_in), shape)
        elif name.endswith("cls_logits.bias"):
            value = np.log(CLASS_PRIOR / (1 - CLASS_PRIOR)) + rng.normal(0.0, 0.5, shape)
        elif part == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif part == "weight":  # batch or group norm scale; small on a residual branch's end
            value = rng.uniform(0.5, 1.0, shape) * (0.3 if ".bn3." in name else 1.0)
        else:  # biases, running means
            value = rng.normal(0.0, 0.1, shape)
        state[name] = value.astype(np.float32)
    return state


# The reference images: two odd sizes, as (height, width).
IMAGE_SIZES = ((333, 517), (600, 800))
# torchvision's (min_size, max_size) for the batch that goes through its whole transform:
# 333 x 517 becomes 320 x 496 and 600 x 800 becomes 320 x 426, on a 320 x 512 canvas.
RESIZE = (320, 512)
NUM_CLASSES = 5
SAMPLES = 256  # sampled values per FPN level and per head output


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB test image: smooth colour blobs over noise (edges and flat areas)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = rng.uniform(0, 40, (height, width, 3))
    for _ in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(20, 150)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(0, 215, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_positions(shape, count: int, seed: int) -> np.ndarray:
    """`count` seeded index tuples into an array of `shape`, as int64 `[count, len(shape)]`."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, side, count) for side in shape], axis=1)
