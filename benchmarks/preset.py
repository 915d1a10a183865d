"""The converted COCO preset's `predict` against keras-hub's own, same architecture.

    python benchmarks/preset.py                       # v1, 512 px, batch 1, 5 rounds
    python benchmarks/preset.py --image_size=800 --architecture=v2 --rounds=3

keras-hub's `RetinaNetObjectDetector` is built as its `retinanet_resnet50_fpn_coco` preset is
(ResNet50, P3-P7, 91 classes, its image converter with ImageNet mean/std), with random
weights, nothing downloaded; `retinanet.model.presets.from_keras_hub` converts it. Each
round times one `predict` call of each model over `--batches` batches of random
`image_size` x `image_size` RGB images (alternating which goes first), after one untimed
warm-up call each (tracing). Both include their own input normalisation, decoding and NMS;
keras-hub's also runs its preprocessor's resize (a no-op size here). Ours pads the input to
a multiple of 128 (800 -> 896), keras-hub does not.

Prints per-call medians (and the fastest call of each), the median of per-round ratios ours / keras-hub, and the
1-minute load average before and after (other work on the machine skews both alike, which
the per-round ratio mostly cancels). `--json PATH` also writes the figures.
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def keras_hub_detector(architecture, image_size):
    """keras-hub's RetinaNet as in its COCO presets (random weights)."""
    import keras_hub
    from keras_hub.src.models.retinanet.retinanet_image_converter import (
        RetinaNetImageConverter,
    )
    from keras_hub.src.models.retinanet.retinanet_object_detector_preprocessor import (
        RetinaNetObjectDetectorPreprocessor,
    )

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False,
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=architecture == "v2")
    converter = RetinaNetImageConverter(
        image_size=(image_size, image_size), pad_to_aspect_ratio=True,
        crop_to_aspect_ratio=False, scale=[1.0 / 255.0 / s for s in STD],
        offset=[-m / s for m, s in zip(MEAN, STD)])
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=91,
        preprocessor=RetinaNetObjectDetectorPreprocessor(image_converter=converter),
        use_prediction_head_norm=architecture == "v2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=("v1", "v2"), default="v1")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    import keras
    import numpy as np

    from retinanet.model import presets

    load_before = os.getloadavg()[0]
    keras.utils.set_random_seed(0)
    detector = keras_hub_detector(args.architecture, args.image_size)
    ours = presets.from_keras_hub(detector)
    count = args.batch_size * args.batches
    images = np.random.default_rng(0).uniform(
        0, 255, (count, args.image_size, args.image_size, 3)).astype("float32")
    systems = {"ours": ours, "keras-hub": detector}

    def call(name):
        start = time.perf_counter()
        systems[name].predict(images, batch_size=args.batch_size, verbose=0)
        return (time.perf_counter() - start) / args.batches

    warmup = {name: call(name) for name in systems}
    times = {name: [] for name in systems}
    for round_index in range(args.rounds):
        order = list(systems) if round_index % 2 == 0 else list(systems)[::-1]
        for name in order:
            times[name].append(call(name))
    ratios = [a / b for a, b in zip(times["ours"], times["keras-hub"])]
    result = {
        "architecture": args.architecture, "image_size": args.image_size,
        "batch_size": args.batch_size, "batches_per_call": args.batches,
        "rounds": args.rounds, "cpu_count": os.cpu_count(),
        "first_call_s": warmup,
        "median_s_per_batch": {name: statistics.median(t) for name, t in times.items()},
        # The least disturbed call of each: on a loaded machine the fairer single figure.
        "min_s_per_batch": {name: min(t) for name, t in times.items()},
        "ratio_ours_over_keras_hub": statistics.median(ratios),
        "per_round_s": times,
        "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    medians = result["median_s_per_batch"]
    print(f"{args.architecture} {args.image_size} px, batch {args.batch_size}, "
          f"{args.rounds} rounds: ours {medians['ours']:.3f} s/batch, keras-hub "
          f"{medians['keras-hub']:.3f} s/batch, ratio {result['ratio_ours_over_keras_hub']:.2f} "
          f"(fastest calls: ours {result['min_s_per_batch']['ours']:.3f}, keras-hub "
          f"{result['min_s_per_batch']['keras-hub']:.3f}); "
          f"load average {load_before:.1f} -> {result['loadavg_1min']['after']:.1f} "
          f"on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
