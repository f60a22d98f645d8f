"""MultiLevelRoIAlign: each box is pooled from the FPN level of its size,
k = floor(k0 + log2(sqrt(w h) / s0)) clamped to [min_level, max_level], which is checked by
pooling every box on its expected level with ops.roi_align and comparing."""

import math

import numpy as np
import pytest

from mask_rcnn_tf.layers.multilevel_roi_align import MultiLevelRoIAlign
from mask_rcnn_tf.ops import roi_align

IMAGE = 256

# (box, level by hand with the canonical 224 -> P4), sides chosen away from level boundaries.
BOXES_AND_LEVELS = [
    ([10, 20, 30, 40], 2),  # side 20: 4 + log2(20/224) = 0.5 -> clamped to 2
    ([0, 0, 80, 100], 2),  # sqrt(8000) = 89: 2.67
    ([30, 40, 150, 160], 3),  # side 120: 3.10
    ([0, 0, 100, 200], 3),  # sqrt(20000) = 141: 3.34
    ([16, 16, 240, 240], 4),  # side 224 exactly: 4
    ([0, 0, 256, 256], 4),  # side 256: 4.19
    ([-100, -50, 300, 400], 4),  # sqrt(400 * 450) = 424: 4.92
    ([-100, -50, 400, 450], 5),  # side 500, beyond the image: 5.16
    ([0, 0, 256, 1024], 5),  # side 512: 5.19
    ([0, 0, 2000, 2000], 5),  # side 2000: 7.16 -> clamped to 5
    ([5, 5, 5, 5], 2),  # empty box: -inf, clamped to the lowest level
]


def _np_level(box, min_level, max_level, canonical_size=224.0, canonical_level=4):
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    if area == 0:
        return min_level
    level = math.floor(canonical_level + math.log2(math.sqrt(area) / canonical_size) + 1e-6)
    return min(max(level, min_level), max_level)


def _features(rng, levels, channels=3, batch=2):
    return {f"p{l}": rng.normal(size=(batch, IMAGE // 2**l, IMAGE // 2**l, channels))
            .astype(np.float32) for l in levels}


def test_hand_computed_levels():
    for box, level in BOXES_AND_LEVELS:
        assert _np_level(box, 2, 5) == level, box


@pytest.mark.parametrize("min_level, max_level, aligned, output_size", [
    (2, 5, True, 7),
    (3, 5, False, 4),  # P3..P5 only: small boxes clamp to P3, list index = level - 3
])
def test_pools_each_box_from_its_level(min_level, max_level, aligned, output_size):
    rng = np.random.default_rng(0)
    levels = range(min_level, max_level + 1)
    features = _features(rng, levels)
    boxes = np.array([[b for b, _ in BOXES_AND_LEVELS],
                      [b for b, _ in reversed(BOXES_AND_LEVELS)]], np.float32)
    layer = MultiLevelRoIAlign(output_size, min_level=min_level, max_level=max_level,
                               sampling_ratio=2, aligned=aligned)
    pooled = layer(features, boxes).numpy()
    assert pooled.shape == (2, len(BOXES_AND_LEVELS), output_size, output_size, 3)
    for b in range(2):
        for n, box in enumerate(boxes[b]):
            level = _np_level(box, min_level, max_level)
            want = roi_align.roi_align(
                [features[f"p{level}"][b:b + 1]], box[None, None], np.zeros((1, 1), np.int32),
                strides=[2**level], output_size=output_size, sampling_ratio=2, aligned=aligned)
            np.testing.assert_allclose(pooled[b, n], want.numpy()[0, 0], rtol=1e-5, atol=1e-5,
                                       err_msg=f"image {b} box {box} level {level}")


def test_canonical_size_and_level_are_used():
    rng = np.random.default_rng(1)
    features = _features(rng, range(2, 6), batch=1)
    # Side 60 with canonical 56 -> level 3 + log2(60 / 56) = 3.1 -> P3 (P2 with the default 224).
    box = np.array([[[20, 20, 80, 80]]], np.float32)
    layer = MultiLevelRoIAlign(5, canonical_size=56.0, canonical_level=3)
    want = roi_align.roi_align([features["p3"]], box, np.zeros((1, 1), np.int32), strides=[8],
                               output_size=5)
    np.testing.assert_allclose(layer(features, box).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_get_config_round_trip():
    layer = MultiLevelRoIAlign(14, min_level=3, max_level=5, sampling_ratio=1, aligned=False,
                               canonical_size=112.0, canonical_level=3)
    clone = MultiLevelRoIAlign.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
