"""Writes tests/reference/torchvision_reference.npz from torchvision itself (run by hand).

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch torchvision numpy
    /tmp/torch/bin/python tests/reference/make_torchvision_reference.py

No download: torchvision's `retinanet_resnet50_fpn` and `_v2` are built without weights and
given the seeded numpy weights of `torchvision_weights.make_state_dict`; the reference images
come from `make_image`. For each version and image the file holds samples of every FPN level
(NCHW positions and values), of the head outputs (anchor, channel and value) and the final
detections in the image's pixels. torchvision's transform gets `min_size` = the image's
shorter side, so it resizes by 1 (the identity) and pads the normalised image with zeros to
a multiple of 32: the test feeds the package's model the same canvas (the image padded with
the mean colour) and compares stage by stage.

Then v1 detects both images as one batch with `RESIZE` (min_size, max_size): torchvision's
whole transform (a float scale, sizes floored, boxes scaled per axis, the batch padded with
zeros after normalising, boxes clipped to each resized image, mapped back to the image's
pixels), and then each image alone (on its own canvas); the test runs the same images
through the package's data pipeline (the batch) and its serving graph and exports (alone).
Commit the file (under 2 MB).
"""

import os
import sys

import numpy as np
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_weights import (IMAGE_SIZES, NUM_CLASSES, RESIZE, SAMPLES,  # noqa: E402
                                 make_image, make_state_dict, sample_positions)


def main():
    out = {}
    for version, build in (("v1", retinanet_resnet50_fpn), ("v2", retinanet_resnet50_fpn_v2)):
        model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
        state = {k: torch.from_numpy(v) for k, v in make_state_dict(version, NUM_CLASSES).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert all(k.endswith("num_batches_tracked") for k in missing) and not unexpected
        model.eval()
        for index, (height, width) in enumerate(IMAGE_SIZES):
            key = f"{version}_image{index}"
            image = make_image(height, width, seed=index)
            tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
            model.transform.min_size = (min(height, width),)
            with torch.no_grad():
                images, _ = model.transform([tensor])
                assert tuple(images.image_sizes[0]) == (height, width)  # resized by 1
                features = list(model.backbone(images.tensors).values())
                head = model.head(features)
                detections = model([tensor])[0]
            out[f"{key}_canvas"] = np.array(images.tensors.shape[2:])
            for level, feature in enumerate(features):
                positions = sample_positions(feature.shape[1:], SAMPLES, seed=100 + level)
                values = feature[0].numpy()[tuple(positions.T)]
                out[f"{key}_p{level + 3}_positions"] = positions  # channel, row, column
                out[f"{key}_p{level + 3}_values"] = values
                out[f"{key}_p{level + 3}_scale"] = np.abs(feature.numpy()).mean()
            for name in ("cls_logits", "bbox_regression"):
                output = head[name][0].numpy()
                positions = sample_positions(output.shape, SAMPLES, seed=200)
                out[f"{key}_{name}_positions"] = positions  # anchor, channel
                out[f"{key}_{name}_values"] = output[tuple(positions.T)]
            out[f"{key}_boxes"] = detections["boxes"].numpy()
            out[f"{key}_scores"] = detections["scores"].numpy()
            out[f"{key}_labels"] = detections["labels"].numpy()
            print(key, "canvas", tuple(images.tensors.shape[2:]), "detections",
                  len(detections["scores"]), "feature scales",
                  [round(float(np.abs(f.numpy()).mean()), 3) for f in features])
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                   min_size=RESIZE[0], max_size=RESIZE[1])
    state = {k: torch.from_numpy(v) for k, v in make_state_dict("v1", NUM_CLASSES).items()}
    model.load_state_dict(state, strict=False)
    model.eval()
    tensors = [torch.from_numpy(make_image(height, width, seed=index)).permute(2, 0, 1).float()
               / 255 for index, (height, width) in enumerate(IMAGE_SIZES)]
    with torch.no_grad():
        images, _ = model.transform(tensors)
        batch = model(tensors)
    out["resized_canvas"] = np.array(images.tensors.shape[2:])
    out["resized_sizes"] = np.array(images.image_sizes)
    for index, detections in enumerate(batch):
        for name in ("boxes", "scores", "labels"):
            out[f"resized_image{index}_{name}"] = detections[name].numpy()
    print("resized", out["resized_sizes"].tolist(), "canvas", out["resized_canvas"].tolist(),
          "detections", [len(d["scores"]) for d in batch])
    for index, tensor in enumerate(tensors):  # alone: each on its own canvas
        with torch.no_grad():
            (detections,) = model([tensor])
        for name in ("boxes", "scores", "labels"):
            out[f"alone_image{index}_{name}"] = detections[name].numpy()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_reference.npz")
    np.savez_compressed(path, **out)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
