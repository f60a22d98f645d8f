"""The training mask branch runs on the foreground rows only: as many as the image with the most
foreground RoIs (at least one), never dropping one, so the mask loss is the loss over all of
them."""

import numpy as np

from tests.modeling.test_mask_rcnn import _batch, tiny  # noqa: F401  (tiny is a fixture)


def test_mask_branch_rows_are_the_foreground_rows(tiny):  # noqa: F811
    _, model = tiny
    outputs = model(_batch(), training=True)
    roi_fg = np.asarray(outputs["roi_is_foreground"])
    mask_fg = np.asarray(outputs["mask_is_foreground"])
    rows = int(roi_fg.sum(axis=1).max())
    assert rows >= 1
    assert outputs["mask_logits"].shape[1] == mask_fg.shape[1] == rows
    assert outputs["mask_targets"].shape[1] == outputs["mask_classes"].shape[1] == rows
    # Foreground RoIs lead each image's sample, so these rows hold all of them.
    np.testing.assert_array_equal(mask_fg, roi_fg[:, :rows])
    assert mask_fg.sum() == roi_fg.sum()


def test_mask_branch_keeps_one_row_without_objects(tiny):  # noqa: F811
    _, model = tiny
    outputs = model(_batch(with_objects=False), training=True)
    assert not np.asarray(outputs["roi_is_foreground"]).any()
    assert outputs["mask_logits"].shape[1] == 1
    assert float(model.compute_losses(outputs)["mask_loss"]) == 0.0
