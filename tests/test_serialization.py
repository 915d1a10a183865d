"""Every registered class survives the round trip a `.keras` file makes.

`keras.saving.serialize_keras_object` then `deserialize_keras_object` must give an object of
the same class with the same config, and, for the objects with a behaviour we can compare
cheaply, the same outputs. One helper for all of them replaces per-class round-trip tests.
"""

import keras
import numpy as np
import pytest

from retinanet.anchors import AnchorGenerator
from retinanet.box_coder import BoxCoder
from retinanet.losses import FocalLoss, QualityFocalLoss, SmoothL1Loss
from retinanet.matching import ATSSMatcher, IoUMatcher, LabelEncoder
from retinanet.model.backbone import CaffePreprocessing
from retinanet.model.fpn import FeaturePyramid
from retinanet.model.heads import RetinaNetHead
from retinanet.model.postprocess import DetectionPostprocessor
from retinanet.model.torchvision_resnet import TorchvisionNormalization
from retinanet.schedules import WarmupStepDecay


def round_trip(obj):
    """`obj` serialised as a `.keras` file does and read back; checks class and config."""
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(clone) is type(obj)
    assert clone.get_config() == obj.get_config()
    return clone


CASES = {
    "anchors": lambda: AnchorGenerator(3, 6, anchor_size=3, aspect_ratios=(1.0, 2.0)),
    "anchors_torchvision": lambda: AnchorGenerator(convention="torchvision"),
    "label_encoder": lambda: LabelEncoder(AnchorGenerator(max_level=6), IoUMatcher(0.6),
                                          BoxCoder((10, 10, 5, 5))),
    "label_encoder_atss": lambda: LabelEncoder(matcher=ATSSMatcher(top_k=5)),
    "quality_focal_loss": lambda: QualityFocalLoss(beta=1.5),
    "focal_loss": lambda: FocalLoss(alpha=0.5, gamma=1.5),
    "smooth_l1": lambda: SmoothL1Loss(beta=0.2),
    "schedule": lambda: WarmupStepDecay(0.01, [10, 20], decay_factor=0.5, warmup_steps=5),
    "fpn": lambda: FeaturePyramid(16, 6, p6_input="p5"),
    "head": lambda: RetinaNetHead(5, 9, 2, 16, prior_probability=0.02, use_group_norm=True),
    "postprocessor": lambda: DetectionPostprocessor(AnchorGenerator(max_level=6),
                                                    score_threshold=0.2, max_detections=7),
    "caffe": lambda: CaffePreprocessing(),
    "torchvision_normalization": lambda: TorchvisionNormalization(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip(name):
    round_trip(CASES[name]())


def test_round_tripped_anchors_and_schedule_compute_the_same_values():
    generator = CASES["anchors"]()
    np.testing.assert_array_equal(round_trip(generator)(128, 256), generator(128, 256))
    schedule = CASES["schedule"]()
    clone = round_trip(schedule)
    for step in (0, 3, 10, 25):
        assert float(clone(step)) == pytest.approx(float(schedule(step)))
