"""The built-in synthetic keypoint dataset: stick figures with seven named keypoints.

`make_figures` writes a small COCO keypoint dataset, as `make_shapes` writes the instance
segmentation one, following the stick-figure spec (`SYNTHETIC_FIGURES.md`):

    output_dir/images/000000.png, 000001.png, ...   RGB, image_size x image_size
    output_dir/annotations.json                      COCO: images, annotations, categories

Geometry is built in COCO's pixel-index frame (the centre of pixel i at i), the frame the
keypoints are written in; a pixel belongs to a figure when its centre lies in the head disc or
within 1.5 px of one of the six limb segments (3 px lines with round ends, so the pixel nearest
to every keypoint is part of its figure). No anti-aliasing: masks are exact. Figures drawn later
occlude earlier ones; a figure left less than 30% visible is dropped and the image is drawn
again without it, so no unlabelled fragment stays and the figures it covered get their pixels
back.
"""

import os

import numpy as np

from mask_rcnn_tf.data.synthetic import (
    MIN_VISIBLE_FRACTION, instance_annotation, noisy_background, random_colour,
    write_coco_dataset)

KEYPOINT_NAMES = ("head", "neck", "left_hand", "right_hand", "hip", "left_foot", "right_foot")
# Limbs as 1-based keypoint ids (COCO's skeleton convention).
SKELETON = ((1, 2), (2, 3), (2, 4), (2, 5), (5, 6), (5, 7))
# Keypoint k becomes FLIP_MAP[k] under a horizontal flip (0-based): hands swap, feet swap.
FLIP_MAP = (0, 1, 3, 2, 4, 6, 5)
# About the mean of COCO's 17 per-keypoint OKS sigmas; every keypoint gets it.
OKS_SIGMA = 0.07
CATEGORY = {
    "id": 1, "name": "figure", "supercategory": "figure",
    "keypoints": list(KEYPOINT_NAMES), "skeleton": [list(limb) for limb in SKELETON],
}
MIN_HEIGHT = 40.0
MAX_HEIGHT = 90.0
MAX_FIGURES = 3
HEAD_RADIUS = 0.12
NECK = 0.2
HIP = 0.6
ARM = 0.35
LEG = 0.4
ARM_ANGLES = (20.0, 160.0)
LEG_ANGLES = (10.0, 40.0)
MAX_ROTATION = 30.0
LIMB_HALF_WIDTH = 1.5
# The largest figure (H = 90) spans at most 102.5 px along either axis in any pose (head disc
# included; found by a dense search over the pose ranges), and every keypoint must fit in
# [0, image_size - 1].
MIN_IMAGE_SIZE = 104
# Limb ends reach 1.5 px past a keypoint: the unclipped grid extends this far past the image.
GRID_MARGIN = 2


def _figure_keypoints(rng):
    """Draws one figure's pose: keypoints float64 [7, 2] (x, y) relative to its hip, height H."""
    height = rng.uniform(MIN_HEIGHT, MAX_HEIGHT)
    arm_left, arm_right = np.deg2rad(rng.uniform(*ARM_ANGLES, size=2))
    leg_left, leg_right = np.deg2rad(rng.uniform(*LEG_ANGLES, size=2))
    rotation = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    # Figure frame: y down, origin at the head; the figure's left is negative x.
    points = height * np.array([
        [0.0, 0.0],
        [0.0, NECK],
        [-ARM * np.sin(arm_left), NECK + ARM * np.cos(arm_left)],
        [ARM * np.sin(arm_right), NECK + ARM * np.cos(arm_right)],
        [0.0, HIP],
        [-LEG * np.sin(leg_left), HIP + LEG * np.cos(leg_left)],
        [LEG * np.sin(leg_right), HIP + LEG * np.cos(leg_right)],
    ])
    cos, sin = np.cos(rotation), np.sin(rotation)
    return (points - points[4]) @ np.array([[cos, sin], [-sin, cos]]), height


def _place(rng, points, height, image_size):
    """Translates hip-relative keypoints so that they and the head disc lie in [0, size - 1]."""
    radius = HEAD_RADIUS * height
    low = np.minimum(points.min(axis=0), points[0] - radius)
    high = np.maximum(points.max(axis=0), points[0] + radius)
    return points + rng.uniform(-low, image_size - 1 - high)


def _segment_distance(px, py, start, end):
    """Distance from grid points (px, py) to the segment start-end, float64 like px."""
    direction = end - start
    length_sq = float(direction @ direction)
    t = ((px - start[0]) * direction[0] + (py - start[1]) * direction[1]) / length_sq
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px - start[0] - t * direction[0], py - start[1] - t * direction[1])


def _figure_mask(points, height, image_size):
    """Pixels of one figure on the unclipped grid: bool [S + 2m, S + 2m], pixel (i, j) of the
    image at [i + m, j + m] with m = GRID_MARGIN."""
    coords = np.arange(-GRID_MARGIN, image_size + GRID_MARGIN, dtype=np.float64)
    py, px = coords[:, None], coords[None, :]
    mask = np.hypot(px - points[0, 0], py - points[0, 1]) <= HEAD_RADIUS * height
    for first, second in SKELETON:
        mask |= _segment_distance(px, py, points[first - 1], points[second - 1]) <= LIMB_HALF_WIDTH
    return mask


def _owners(masks, image_size):
    """owner int32 [S, S]: index of the last mask covering each pixel, -1 for background."""
    owner = np.full((image_size, image_size), -1, dtype=np.int32)
    inside = slice(GRID_MARGIN, GRID_MARGIN + image_size)
    for index, mask in enumerate(masks):
        owner[mask[inside, inside]] = index
    return owner


def _make_image(rng, image_size):
    """Draws one image.

    Returns:
        (image uint8 [S, S, 3], list of (keypoints float64 [7, 2] pixel-index (x, y), visible
        mask bool [S, S], owner index), owner int32 [S, S], num_dropped): figures in drawing
        order, those under the visibility threshold left out and counted.
    """
    background, image = noisy_background(rng, image_size)
    figures = []
    for _ in range(int(rng.integers(1, MAX_FIGURES + 1))):
        points, height = _figure_keypoints(rng)
        points = _place(rng, points, height, image_size)
        figures.append((points, _figure_mask(points, height, image_size),
                        random_colour(rng, background)))
    owner = _owners([mask for _, mask, _ in figures], image_size)
    kept = [figure for index, figure in enumerate(figures)
            if (owner == index).sum() >= MIN_VISIBLE_FRACTION * figure[1].sum()]
    # Without the dropped figures the others can only gain pixels, so none falls below the
    # threshold in the redrawn image.
    owner = _owners([mask for _, mask, _ in kept], image_size)
    objects = []
    for index, (points, _, colour) in enumerate(kept):
        visible = owner == index
        image[visible] = colour
        objects.append((points, visible, index))
    return image, objects, owner, len(figures) - len(kept)


def _keypoints(points, owner, index):
    """COCO [x, y, v] * 7: v = 2 where the pixel nearest the point is the figure's, else 1."""
    values = []
    for x, y in np.round(points, 2):
        column, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        # + 0.0 turns a rounded -0.0 into 0.0.
        values += [float(x) + 0.0, float(y) + 0.0, 2 if owner[row, column] == index else 1]
    return values


def make_figures(output_dir, num_images, seed, image_size=128, overwrite=False):
    """Writes the synthetic stick-figure keypoint dataset in COCO format.

    Image `i` is `images/{i:06d}.png` with image id `i`; annotation ids start at 1 (COCOeval's
    id 0 means "unmatched"). One category, 1 "figure", with the seven keypoints of
    KEYPOINT_NAMES and the SKELETON. Each image holds 1 to 3 figures of height 40 to 90 px;
    figures less than 30% visible (visible pixels / all the figure's pixels) are dropped. bbox
    is the tight integer box of the visible mask, area the bbox's width times height (OKS's
    object scale), segmentation a compressed RLE, keypoints [x, y, v] in pixel-index
    coordinates rounded to 0.01 px with v in {1, 2} (every keypoint lies in the image), and
    num_keypoints 7. The same arguments give byte-identical files. The dataset is built in a
    temporary folder next to `output_dir` and renamed into place.

    Args:
        output_dir: folder to create; must not exist or be empty unless `overwrite`.
        num_images: number of images, >= 1.
        seed: seed of numpy.random.default_rng.
        image_size: side of the square images in pixels, >= MIN_IMAGE_SIZE (104).
        overwrite: replace a non-empty `output_dir`.

    Returns:
        dict with "output_dir", "annotations_path", "num_images", "num_annotations",
        "num_dropped" (figures under the visibility threshold), "num_visible_keypoints" (v = 2)
        and "num_occluded_keypoints" (v = 1).
    """
    def draw(rng, size, image_id, first_annotation_id):
        image, objects, owner, dropped = _make_image(rng, size)
        annotations = []
        for i, (points, visible, index) in enumerate(objects):
            annotation = instance_annotation(first_annotation_id + i, image_id, CATEGORY["id"],
                                             visible)
            keypoints = _keypoints(points, owner, index)
            _, _, width, height = annotation["bbox"]
            annotation.update(area=width * height, keypoints=keypoints,
                              num_keypoints=sum(v > 0 for v in keypoints[2::3]))
            annotations.append(annotation)
        return image, annotations, dropped

    annotations, num_dropped = write_coco_dataset(
        output_dir, num_images=num_images, seed=seed, image_size=image_size,
        min_image_size=MIN_IMAGE_SIZE, overwrite=overwrite, categories=[CATEGORY], draw=draw)
    visibilities = [v for annotation in annotations for v in annotation["keypoints"][2::3]]
    return {
        "output_dir": os.fspath(output_dir),
        "annotations_path": os.path.join(os.fspath(output_dir), "annotations.json"),
        "num_images": int(num_images),
        "num_annotations": len(annotations),
        "num_dropped": num_dropped,
        "num_visible_keypoints": visibilities.count(2),
        "num_occluded_keypoints": visibilities.count(1),
    }
