"""Draws detections on an image: translucent masks, box outlines, "name score" labels.

Layers are drawn in order masks, boxes, keypoint skeletons, labels, so labels stay readable on
top.
"""

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_MASK_ALPHA = 0.5
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_color(class_id):
    """Returns the fixed RGB colour of a class: (r, g, b) ints in 0..255.

    Hues step by the golden ratio, so neighbouring class ids get well separated colours.
    """
    hue = (int(class_id) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95))


def _class_name(class_names, class_id):
    try:
        return str(class_names[class_id])
    except (KeyError, IndexError) as e:
        raise ValueError(f"class_names has no entry for class {class_id}") from e


def _blend_masks(image, masks, colors):
    """Alpha-blends each mask's colour over a float32 [H, W, 3] copy of the image."""
    canvas = image.astype(np.float32)
    for mask, color in zip(masks, colors):
        region = mask if mask.dtype == bool else mask >= 0.5
        canvas[region] = (1.0 - _MASK_ALPHA) * canvas[region] + _MASK_ALPHA * np.float32(color)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _text_color(background):
    """Black or white, whichever contrasts more with an RGB background (ITU-R 601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _draw_skeletons(draw, keypoints, colors, skeleton, line_width):
    """Limbs in the detection's colour, joints as white-rimmed dots."""
    radius = line_width + 1
    for points, color in zip(keypoints, colors):
        for a, b in skeleton:
            (xa, ya, va), (xb, yb, vb) = points[a - 1], points[b - 1]
            if va > 0 and vb > 0:
                draw.line([(xa, ya), (xb, yb)], fill=color, width=line_width + 1)
        for x, y, v in points:
            if v > 0:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color,
                             outline=(255, 255, 255))


def draw_detections(image, boxes, classes, scores, masks, class_names, score_threshold=0.5,
                    keypoints=None, skeleton=()):
    """Returns a copy of `image` with the detections scoring at least `score_threshold` drawn.

    Line width and font size grow with the image, so drawings stay readable from 128x128 to
    full-size COCO images.

    Args:
        image: uint8 [H, W, 3], RGB.
        boxes: float [N, 4], [y1, x1, y2, x2], pixels of this image.
        classes: int [N], class ids (keys of `class_names`).
        scores: float [N].
        masks: bool or float [N, H, W] masks in this image (floats are cut at 0.5), or None.
        class_names: dict {class id: name}, or a list indexed by class id (index 0 is background).
        score_threshold: float, lower-scoring detections are not drawn.
        keypoints: float [N, Kp, 3] (x, y, v) in COCO's pixel-index frame (the point drawn at
            (x, y) is the keypoint), or None; points with v <= 0 are not drawn.
        skeleton: 1-based (a, b) keypoint pairs joined by a line.

    Returns:
        uint8 [H, W, 3].
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if not len(boxes) == len(classes) == len(scores):
        raise ValueError(f"boxes, classes, scores disagree in length: "
                         f"{len(boxes)}, {len(classes)}, {len(scores)}")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (len(boxes), height, width):
            raise ValueError(f"masks must be [N, H, W] = {(len(boxes), height, width)}, "
                             f"got {masks.shape}")

    keep = np.flatnonzero(scores >= score_threshold)
    colors = [class_color(classes[i]) for i in keep]
    if masks is not None:
        image = _blend_masks(image, masks[keep], colors)

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    line_width = max(1, round(max(height, width) / 400))
    font = ImageFont.load_default(size=max(10, round(max(height, width) / 50)))
    for i, color in zip(keep, colors):
        y1, x1, y2, x2 = boxes[i]
        # Pixel i spans [i, i + 1) and PIL's rectangle includes both corners: the last pixel
        # covered by the box is x2 - 1.
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color,
                       width=line_width)
    if keypoints is not None:
        _draw_skeletons(draw, np.asarray(keypoints, np.float32)[keep], colors, skeleton,
                        line_width)
    for i, color in zip(keep, colors):
        y1, x1 = boxes[i][:2]
        label = f"{_class_name(class_names, classes[i])} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left, bottom - top
        pad = line_width
        # Above the box when there is room, otherwise just inside its top edge; kept in frame.
        label_x = min(max(float(x1), 0.0), max(width - text_w - 2 * pad, 0))
        label_y = float(y1) - text_h - 2 * pad
        if label_y < 0:
            label_y = min(max(float(y1), 0.0), max(height - text_h - 2 * pad, 0))
        draw.rectangle([label_x, label_y, label_x + text_w + 2 * pad - 1,
                        label_y + text_h + 2 * pad - 1], fill=color)
        draw.text((label_x + pad - left, label_y + pad - top), label, fill=_text_color(color),
                  font=font)
    return np.array(canvas)
