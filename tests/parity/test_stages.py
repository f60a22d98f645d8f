"""Stage-by-stage parity with torchvision's maskrcnn_resnet50_fpn on the same input and weights.

Each stage gets the same input on both sides (the previous stage's torchvision output, converted
to this project's layout) and must agree to a max relative error (max |ours - theirs| / max
|theirs|) under 1e-4.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torchvision.models.detection.image_list import ImageList  # noqa: E402

from mask_rcnn_tf.ops.anchors import generate_anchors  # noqa: E402
from tests.parity.reference import (  # noqa: E402
    LEVELS,
    max_relative_error,
    rpn_outputs_ours_layout,
    swap_xy,
    to_nhwc,
    to_torch,
)

TOLERANCE = 1e-4
IMAGE_SIZE = (400, 600)  # the photo inside the 448 x 640 padded input


def _reference_levels(reference_features):
    return [reference_features[key] for key in ("0", "1", "2", "3", "pool")]


def test_backbone_and_fpn_levels(reference_features, our_features):
    for name, theirs in zip(LEVELS, _reference_levels(reference_features)):
        theirs = to_nhwc(theirs)
        assert our_features[name].shape == theirs.shape, name
        assert max_relative_error(our_features[name], theirs) < TOLERANCE, name


def test_rpn_objectness_and_deltas_per_level(reference, reference_features, ours, our_features):
    with torch.no_grad():
        objectness, box_regression = reference.rpn.head(_reference_levels(reference_features))
    their_logits, their_deltas = rpn_outputs_ours_layout(objectness, box_regression)
    # Same input features on both sides: the head alone is compared.
    our_logits, our_deltas = ours.rpn_head(
        [to_nhwc(level) for level in _reference_levels(reference_features)])
    for level, name in enumerate(LEVELS):
        assert max_relative_error(our_logits[level], their_logits[level]) < TOLERANCE, name
        assert max_relative_error(our_deltas[level], their_deltas[level]) < TOLERANCE, name


def _our_anchors(config, levels):
    anchors = config.model.anchors
    return generate_anchors([tuple(level.shape[2:]) for level in levels], [4, 8, 16, 32, 64],
                            anchors.sizes, anchors.aspect_ratios, anchors.offset)


def test_anchors_match_torchvision_layout(reference, reference_features, padded_image, config):
    levels = _reference_levels(reference_features)
    image_list = ImageList(to_torch(padded_image), [IMAGE_SIZE])
    theirs = reference.rpn.anchor_generator(image_list, levels)[0].numpy()
    np.testing.assert_array_equal(np.concatenate(_our_anchors(config, levels)), swap_xy(theirs))


def test_proposals_match(reference, reference_features, padded_image, ours, config):
    levels = _reference_levels(reference_features)
    with torch.no_grad():
        theirs, _ = reference.rpn(ImageList(to_torch(padded_image), [IMAGE_SIZE]),
                                  reference_features)
        logits, deltas = rpn_outputs_ours_layout(*reference.rpn.head(levels))
    theirs = swap_xy(theirs[0].numpy())
    # The same head outputs on both sides: decoding, clipping, NMS and top-k are compared.
    boxes, _, valid = ours.proposal_generator(
        logits, deltas, _our_anchors(config, levels), np.array([IMAGE_SIZE], np.float32),
        training=False)
    boxes = np.asarray(boxes[0])[np.asarray(valid[0])]
    assert len(theirs) > 500
    assert abs(len(boxes) - len(theirs)) <= len(theirs) // 200
    # Both are sorted by score; near-equal scores may swap neighbours, so match as sets.
    distance = np.abs(theirs[:, None, :] - boxes[None, :, :]).max(axis=-1)
    matched = distance.min(axis=1) < 1e-2
    assert matched.mean() > 0.995, f"{(~matched).sum()} of {len(theirs)} proposals unmatched"
    np.testing.assert_allclose(boxes[:100], theirs[:100], atol=1e-2)


def _boxes_with_borders(height, width, count, seed=0):
    """[count, 4] yxyx boxes of 0.3 .. 700 px covering every level, about a third crossing the
    border, a few under one pixel (torchvision's aligned=False widens them to one cell)."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(0.3), np.log(700.0), (count, 2)))
    centres = rng.uniform(-0.1, 1.1, (count, 2)) * np.array([height, width])
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    return boxes.astype(np.float32)


@pytest.mark.parametrize("pool", ["box", "mask"])
def test_multilevel_roi_align_with_borders(pool, reference, reference_features, ours,
                                           our_features, padded_image):
    height, width = padded_image.shape[1:3]
    boxes = _boxes_with_borders(height, width, 300)
    roi_pool = getattr(reference.roi_heads, f"{pool}_roi_pool")
    with torch.no_grad():
        theirs = roi_pool(reference_features, [torch.from_numpy(swap_xy(boxes))],
                          [(height, width)])
    layer = getattr(ours, f"{pool}_roi_align")
    levels = {name: to_nhwc(level) for name, level in zip(
        LEVELS, _reference_levels(reference_features))}
    pooled = np.asarray(layer(levels, boxes[None]))[0]
    assert max_relative_error(pooled, to_nhwc(theirs)) < TOLERANCE


def test_box_head_on_same_rois(reference, reference_features, ours, padded_image):
    height, width = padded_image.shape[1:3]
    boxes = _boxes_with_borders(height, width, 200, seed=1)
    heads = reference.roi_heads
    with torch.no_grad():
        pooled = heads.box_roi_pool(reference_features, [torch.from_numpy(swap_xy(boxes))],
                                    [(height, width)])
        their_logits, their_deltas = heads.box_predictor(heads.box_head(pooled))
    their_deltas = their_deltas.numpy().reshape(len(boxes), -1, 4)[..., [1, 0, 3, 2]]
    our_logits, our_deltas = ours.box_head(to_nhwc(pooled)[None])
    assert max_relative_error(our_logits[0], their_logits.numpy()) < TOLERANCE
    assert max_relative_error(our_deltas[0], their_deltas) < TOLERANCE


def test_mask_head_on_same_boxes(reference, reference_features, ours, padded_image):
    height, width = padded_image.shape[1:3]
    boxes = _boxes_with_borders(height, width, 60, seed=2)
    heads = reference.roi_heads
    with torch.no_grad():
        pooled = heads.mask_roi_pool(reference_features, [torch.from_numpy(swap_xy(boxes))],
                                     [(height, width)])
        theirs = heads.mask_predictor(heads.mask_head(pooled))
    our_logits = ours.mask_head(to_nhwc(pooled)[None])
    assert max_relative_error(our_logits[0], to_nhwc(theirs)) < TOLERANCE
