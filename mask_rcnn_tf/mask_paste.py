"""Pasting a box-relative mask into its full image, in NumPy (no TensorFlow needed).

Same semantics as ops/mask_ops.paste_masks: image pixel centre (y + 0.5, x + 0.5) is sampled in
the mask's frame, bilinear between mask cell centres, with the mask padded by one zero cell, so
values fade to 0 across the box edge and are exactly 0 from half a mask cell outside the box.
Mask cell k of a side-S mask covers [y1 + k h / S, y1 + (k + 1) h / S) of its box.

It sits outside ops/ and serving/ because both use it: the serving client (serving/detections.py),
which must run without the model, and evaluation through ops/mask_ops, which must not load the
client (grpc).
"""

import numpy as np


def _zero_padded_weights(coords, size):
    """[n, size] bilinear weights of index coordinates `coords` on `size` cells, zero outside."""
    low = np.floor(coords)
    frac = coords - low
    low = low.astype(np.int64)
    cells = np.arange(size)
    return ((cells[None, :] == low[:, None]) * (1.0 - frac)[:, None]
            + (cells[None, :] == low[:, None] + 1) * frac[:, None])


def paste_mask(mask, box, image_size):
    """Resamples one box-relative mask onto the full image.

    Args:
        mask: float [Mh, Mw] NumPy array, probabilities inside the box.
        box: 4 floats [y1, x1, y2, x2], pixels of the target image.
        image_size: (h, w) Python ints.

    Returns:
        float32 [h, w] NumPy array; zero outside the box's neighbourhood and for an empty box.
    """
    mask = np.asarray(mask, np.float64)
    y1, x1, y2, x2 = (float(v) for v in box)
    height, width = image_size
    out = np.zeros((height, width), np.float32)
    if not (y2 > y1 and x2 > x1):
        return out
    cell_h = (y2 - y1) / mask.shape[0]
    cell_w = (x2 - x1) / mask.shape[1]
    # Only pixels within one mask cell of the box can be non-zero.
    row0, row1 = max(int(np.floor(y1 - cell_h)), 0), min(int(np.ceil(y2 + cell_h)), height)
    col0, col1 = max(int(np.floor(x1 - cell_w)), 0), min(int(np.ceil(x2 + cell_w)), width)
    if row0 >= row1 or col0 >= col1:
        return out
    mask_rows = (np.arange(row0, row1) + 0.5 - y1) / cell_h - 0.5
    mask_cols = (np.arange(col0, col1) + 0.5 - x1) / cell_w - 0.5
    weights_y = _zero_padded_weights(mask_rows, mask.shape[0])
    weights_x = _zero_padded_weights(mask_cols, mask.shape[1])
    out[row0:row1, col0:col1] = weights_y @ mask @ weights_x.T
    return out
