"""The built-in synthetic dataset: circles, squares and triangles on a noisy background.

`make_shapes` writes a small COCO-format instance-segmentation dataset that any machine can
generate in seconds, so the demo and the tests need nothing downloaded:

    output_dir/images/000000.png, 000001.png, ...   RGB, image_size x image_size
    output_dir/annotations.json                      COCO: images, annotations, categories

Shapes are rasterized with NumPy by testing each pixel centre (x + 0.5, y + 0.5) against the
shape, with no anti-aliasing, so every mask is exact and the image pixels of an object are the
mask pixels. Objects drawn later occlude earlier ones; masks hold only the visible pixels. An
object left less than 30% visible is dropped and erased from the image, so that no unlabelled
fragment stays.
"""

import os

import numpy as np

from mask_rcnn_tf.data.synthetic import (
    MIN_VISIBLE_FRACTION, instance_annotation, noisy_background, random_colour,
    write_coco_dataset)

CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
)
# `make-shapes --shape-set extra`: four other shapes, the fine-tuning target of the demo model
# (configs/shapes_finetune.yaml): other classes, another class count, the same kind of images.
EXTRA_CATEGORIES = (
    {"id": 1, "name": "ring", "supercategory": "shape"},
    {"id": 2, "name": "cross", "supercategory": "shape"},
    {"id": 3, "name": "hexagon", "supercategory": "shape"},
    {"id": 4, "name": "diamond", "supercategory": "shape"},
)
SHAPE_SETS = {"basic": CATEGORIES, "extra": EXTRA_CATEGORIES}
# Rotation period of each shape: rotations beyond it repeat the shape.
_PERIODS = {"circle": 0.0, "square": np.pi / 2.0, "triangle": 2.0 * np.pi / 3.0,
            "ring": 0.0, "cross": np.pi / 2.0, "hexagon": np.pi / 3.0, "diamond": np.pi}
# The cross's arms are a third of its size wide; the diamond is half as wide as it is long.
_CROSS_ARM = 1.0 / 3.0
_DIAMOND_ASPECT = 0.5
MIN_SIZE = 16.0
MAX_SIZE = 48.0
MAX_OBJECTS = 4
# Centres keep 3/4 of the circumradius inside the image: at most ~14% of a shape (in a corner)
# falls outside, so the last-drawn object always survives the visibility rule.
CENTRE_MARGIN = 0.75
MIN_IMAGE_SIZE = int(np.ceil(2 * CENTRE_MARGIN * MAX_SIZE / np.sqrt(2.0)))


def _circumradius(kind, size):
    """Distance from a shape's centre to its farthest point."""
    if kind in ("circle", "ring", "hexagon", "diamond"):
        return size / 2.0
    if kind == "square":
        return size / np.sqrt(2.0)
    if kind == "cross":
        return size / 2.0 * np.hypot(1.0, _CROSS_ARM)
    return 2.0 * size / 3.0  # equilateral triangle of height `size`, centred on its centroid


def _shape_mask(kind, size, angle, cy, cx):
    """Rasterizes one shape on an unclipped grid around it.

    Returns:
        (mask bool [h, w] over rows y0..y0+h-1 and columns x0..x0+w-1, y0, x0). The grid may
        extend past the image so that the shape's full area can be counted.
    """
    radius = _circumradius(kind, size)
    y0, x0 = int(np.floor(cy - radius)) - 1, int(np.floor(cx - radius)) - 1
    y1, x1 = int(np.ceil(cy + radius)) + 1, int(np.ceil(cx + radius)) + 1
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    if kind in ("circle", "ring"):
        inside = py * py + px * px <= (size / 2.0) ** 2
        if kind == "ring":  # inner radius: half the outer
            inside &= py * py + px * px >= (size / 4.0) ** 2
        return inside, y0, x0
    # Coordinates in the shape's own frame (rotated by -angle): u right, v down.
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * px + sin * py
    v = -sin * px + cos * py
    half = size / 2.0
    if kind == "square":
        return (np.abs(u) <= half) & (np.abs(v) <= half), y0, x0
    if kind == "cross":
        arm = half * _CROSS_ARM
        return (((np.abs(u) <= half) & (np.abs(v) <= arm))
                | ((np.abs(u) <= arm) & (np.abs(v) <= half))), y0, x0
    if kind == "hexagon":  # regular, circumradius `half`, vertices on the u axis
        apothem = half * np.sqrt(3.0) / 2.0
        return ((np.abs(v) <= apothem)
                & (np.sqrt(3.0) * np.abs(u) + np.abs(v) <= np.sqrt(3.0) * half)), y0, x0
    if kind == "diamond":
        return np.abs(u) / half + np.abs(v) / (half * _DIAMOND_ASPECT) <= 1.0, y0, x0
    # Apex at v = -2h/3, base at v = h/3; half-width grows from 0 at the apex to h/sqrt(3).
    return (v <= size / 3.0) & (np.abs(u) * np.sqrt(3.0) <= v + 2.0 * size / 3.0), y0, x0


def _make_image(rng, image_size, categories=CATEGORIES):
    """Draws one image.

    Returns:
        (image uint8 [S, S, 3], list of (category_id, visible mask bool [S, S]), num_dropped):
        objects in drawing order, those under the visibility threshold left out and counted.
    """
    background, canvas = noisy_background(rng, image_size)
    image = canvas.copy()
    # owner[y, x] = index of the object visible at that pixel, -1 for background.
    owner = np.full((image_size, image_size), -1, dtype=np.int32)
    objects = []
    for index in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        category_id = int(rng.integers(1, len(categories) + 1))
        kind = categories[category_id - 1]["name"]
        size = rng.uniform(MIN_SIZE, MAX_SIZE)
        # One angle drawn for every rotating shape of the set, in order, whichever is drawn:
        # the random stream (and so the basic dataset) stays that of the first generator.
        angles = {c["name"]: rng.uniform(0.0, _PERIODS[c["name"]])
                  for c in categories if _PERIODS[c["name"]]}
        angle = angles.get(kind, 0.0)
        margin = CENTRE_MARGIN * _circumradius(kind, size)
        cy, cx = rng.uniform(margin, image_size - margin, size=2)
        colour = random_colour(rng, background)
        shape, y0, x0 = _shape_mask(kind, size, angle, cy, cx)
        full_area = int(shape.sum())
        ys, xs = np.nonzero(shape)
        ys, xs = ys + y0, xs + x0
        inside = (ys >= 0) & (ys < image_size) & (xs >= 0) & (xs < image_size)
        ys, xs = ys[inside], xs[inside]
        owner[ys, xs] = index
        image[ys, xs] = colour
        objects.append((category_id, full_area))
    kept = []
    for index, (category_id, full_area) in enumerate(objects):
        visible = owner == index
        if visible.sum() >= MIN_VISIBLE_FRACTION * full_area:
            kept.append((category_id, visible))
        else:
            # A dropped object vanishes from the image too: no unlabelled fragments remain.
            image[visible] = canvas[visible]
    return image, kept, len(objects) - len(kept)


def make_shapes(output_dir, num_images, seed, image_size=128, overwrite=False,
                shape_set="basic"):
    """Writes the synthetic shapes dataset in COCO format.

    Image `i` is `images/{i:06d}.png` with image id `i`; annotation ids start at 1 because
    pycocotools' COCOeval uses id 0 to mean "unmatched". Categories: 1 circle, 2 square,
    3 triangle. Each image holds 1 to 4 objects of size 16 to 48 px (circle diameter, square
    side, triangle height), squares and triangles randomly rotated; objects less than 30%
    visible (visible pixels / all the shape's pixels) are dropped and erased. bbox is the tight
    integer box of the visible mask, area its pixel count, segmentation a compressed RLE. The
    same arguments give byte-identical files. The dataset is built in a temporary folder next
    to `output_dir` and renamed into place.

    Args:
        output_dir: folder to create; must not exist or be empty unless `overwrite`.
        num_images: number of images, >= 1.
        seed: seed of numpy.random.default_rng.
        image_size: side of the square images in pixels, >= MIN_IMAGE_SIZE (51).
        overwrite: replace a non-empty `output_dir`.
        shape_set: "basic" (circle, square, triangle) or "extra" (EXTRA_CATEGORIES: ring,
            cross, hexagon, diamond), the fine-tuning dataset.

    Returns:
        dict with "output_dir", "annotations_path", "num_images", "num_annotations",
        "num_dropped" (objects under the visibility threshold) and "instances_per_category"
        ({name: count}).
    """
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"--shape-set must be one of {', '.join(SHAPE_SETS)}, got {shape_set!r}")
    categories = SHAPE_SETS[shape_set]

    def draw(rng, size, image_id, first_annotation_id):
        image, objects, dropped = _make_image(rng, size, categories)
        annotations = [instance_annotation(first_annotation_id + i, image_id, category_id, visible)
                       for i, (category_id, visible) in enumerate(objects)]
        return image, annotations, dropped

    annotations, num_dropped = write_coco_dataset(
        output_dir, num_images=num_images, seed=seed, image_size=image_size,
        min_image_size=MIN_IMAGE_SIZE, overwrite=overwrite, categories=categories, draw=draw)
    counts = {c["name"]: 0 for c in categories}
    for annotation in annotations:
        counts[categories[annotation["category_id"] - 1]["name"]] += 1
    return {
        "output_dir": os.fspath(output_dir),
        "annotations_path": os.path.join(os.fspath(output_dir), "annotations.json"),
        "num_images": int(num_images),
        "num_annotations": len(annotations),
        "num_dropped": num_dropped,
        "instances_per_category": counts,
    }
