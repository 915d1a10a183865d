import math

import numpy as np
import pytest

from retinanet import AnchorGenerator


def test_512_image_has_49104_anchors():
    generator = AnchorGenerator()
    anchors = generator(512, 512)
    # 9 anchors on 64^2 + 32^2 + 16^2 + 8^2 + 4^2 locations.
    assert anchors.shape == (49104, 4)
    assert generator.num_anchors(512, 512) == 49104
    assert generator.num_anchors_per_location == 9


def test_tiny_grid_by_hand():
    generator = AnchorGenerator(min_level=3, max_level=3, scales=(1.0,), aspect_ratios=(1.0,))
    anchors = generator(16, 16).numpy()
    # Stride 8, size 32, centres at 4 and 12; rows (y) outer, columns (x) inner.
    expected = [
        [-12, -12, 20, 20],
        [-4, -12, 28, 20],
        [-12, -4, 20, 28],
        [-4, -4, 28, 28],
    ]
    np.testing.assert_allclose(anchors, expected, atol=1e-5)


def test_docstring_example_anchor_matches_hand_values():
    anchors = AnchorGenerator(min_level=3, max_level=3)(16, 16).numpy()
    np.testing.assert_allclose(anchors[0], [-18.627, -7.314, 26.627, 15.314], atol=1e-3)


def test_aspect_ratio_is_height_over_width_and_keeps_area():
    generator = AnchorGenerator(min_level=4, max_level=4, scales=(1.0,), aspect_ratios=(0.5, 1.0, 2.0))
    anchors = generator(16, 16).numpy()[:3]
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    np.testing.assert_allclose(heights / widths, [0.5, 1.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(widths * heights, [64.0**2] * 3, rtol=1e-5)


def test_levels_are_ordered_and_sized():
    generator = AnchorGenerator()
    per_level = generator.anchors_per_level(256, 384)
    assert [a.shape[0] for a in per_level] == [
        9 * math.ceil(256 / 2**l) * math.ceil(384 / 2**l) for l in range(3, 8)
    ]
    for level, anchors in zip(range(3, 8), per_level):
        anchors = anchors.numpy()
        sides = np.sqrt((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]))
        base = 4 * 2**level
        np.testing.assert_allclose(sides.min(), base, rtol=1e-5)
        np.testing.assert_allclose(sides.max(), base * 2 ** (2 / 3), rtol=1e-5)
        centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
        np.testing.assert_allclose(centres_x[0], 2**level / 2, rtol=1e-6)


def test_non_square_grid_order():
    generator = AnchorGenerator(min_level=3, max_level=3, scales=(1.0,), aspect_ratios=(1.0,))
    anchors = generator(8, 24).numpy()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(centres, [[4, 4], [12, 4], [20, 4]])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_level": 5, "max_level": 4}, "min_level"),
        ({"anchor_size": 0}, "anchor_size"),
        ({"scales": ()}, "scales"),
        ({"aspect_ratios": (1.0, -2.0)}, "aspect_ratios"),
    ],
)
def test_invalid_levels_sizes_scales_and_ratios_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AnchorGenerator(**kwargs)
