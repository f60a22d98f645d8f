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

import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
)
MIN_SIZE = 16.0
MAX_SIZE = 48.0
MAX_OBJECTS = 4
MIN_VISIBLE_FRACTION = 0.3
MIN_COLOUR_DISTANCE = 100.0
NOISE_SIGMA = 5.0
# Centres keep 3/4 of the circumradius inside the image: at most ~14% of a shape (in a corner)
# falls outside, so the last-drawn object always survives the visibility rule.
CENTRE_MARGIN = 0.75
MIN_IMAGE_SIZE = int(np.ceil(2 * CENTRE_MARGIN * MAX_SIZE / np.sqrt(2.0)))


def _circumradius(category_id, size):
    """Distance from a shape's centre to its farthest point."""
    if category_id == 1:
        return size / 2.0
    if category_id == 2:
        return size / np.sqrt(2.0)
    return 2.0 * size / 3.0  # equilateral triangle of height `size`, centred on its centroid


def _shape_mask(category_id, size, angle, cy, cx):
    """Rasterizes one shape on an unclipped grid around it.

    Returns:
        (mask bool [h, w] over rows y0..y0+h-1 and columns x0..x0+w-1, y0, x0). The grid may
        extend past the image so that the shape's full area can be counted.
    """
    radius = _circumradius(category_id, size)
    y0, x0 = int(np.floor(cy - radius)) - 1, int(np.floor(cx - radius)) - 1
    y1, x1 = int(np.ceil(cy + radius)) + 1, int(np.ceil(cx + radius)) + 1
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    if category_id == 1:
        return (py * py + px * px <= (size / 2.0) ** 2), y0, x0
    # Coordinates in the shape's own frame (rotated by -angle): u right, v down.
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * px + sin * py
    v = -sin * px + cos * py
    if category_id == 2:
        half = size / 2.0
        return (np.abs(u) <= half) & (np.abs(v) <= half), y0, x0
    # Apex at v = -2h/3, base at v = h/3; half-width grows from 0 at the apex to h/sqrt(3).
    return (v <= size / 3.0) & (np.abs(u) * np.sqrt(3.0) <= v + 2.0 * size / 3.0), y0, x0


def _random_colour(rng, background):
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - background) >= MIN_COLOUR_DISTANCE:
            return colour


def _make_image(rng, image_size):
    """Draws one image.

    Returns:
        (image uint8 [S, S, 3], list of (category_id, visible mask bool [S, S]), num_dropped):
        objects in drawing order, those under the visibility threshold left out and counted.
    """
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0.0, NOISE_SIGMA, size=(image_size, image_size, 3))
    canvas = np.clip(np.rint(background + noise), 0, 255).astype(np.uint8)
    image = canvas.copy()
    # owner[y, x] = index of the object visible at that pixel, -1 for background.
    owner = np.full((image_size, image_size), -1, dtype=np.int32)
    objects = []
    for index in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        size = rng.uniform(MIN_SIZE, MAX_SIZE)
        # Rotations beyond the shape's symmetry period (90 deg, 120 deg) repeat themselves.
        angle = {1: 0.0, 2: rng.uniform(0.0, np.pi / 2.0),
                 3: rng.uniform(0.0, 2.0 * np.pi / 3.0)}[category_id]
        margin = CENTRE_MARGIN * _circumradius(category_id, size)
        cy, cx = rng.uniform(margin, image_size - margin, size=2)
        colour = _random_colour(rng, background)
        shape, y0, x0 = _shape_mask(category_id, size, angle, cy, cx)
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


def _annotation(annotation_id, image_id, category_id, visible):
    ys, xs = np.nonzero(visible)
    x, y = int(xs.min()), int(ys.min())
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y],
        "area": int(visible.sum()),
        "segmentation": {"size": [int(v) for v in rle["size"]],
                         "counts": rle["counts"].decode("ascii")},
        "iscrowd": 0,
    }


def _prepare_output(output_dir, overwrite):
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise ValueError(f"{output_dir}: output_dir exists and is not a directory")
        if os.listdir(output_dir) and not overwrite:
            raise ValueError(f"{output_dir}: output_dir exists and is not empty "
                             "(use --overwrite, or overwrite=True, to replace it)")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    return parent


def _move_into_place(staging, output_dir, parent):
    if not os.path.exists(output_dir):
        os.replace(staging, output_dir)
        return
    # os.replace cannot replace a non-empty directory: move the old one aside first.
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
    os.replace(output_dir, os.path.join(old, "data"))
    os.replace(staging, output_dir)
    shutil.rmtree(old)


def make_shapes(output_dir, num_images, seed, image_size=128, overwrite=False):
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

    Returns:
        dict with "output_dir", "annotations_path", "num_images", "num_annotations",
        "num_dropped" (objects under the visibility threshold) and "instances_per_category"
        ({name: count}).
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    num_images, image_size = int(num_images), int(image_size)
    output_dir = os.fspath(output_dir)
    parent = _prepare_output(output_dir, overwrite)
    rng = np.random.default_rng(seed)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        os.mkdir(os.path.join(staging, "images"))
        images, annotations, num_dropped = [], [], 0
        for image_id in range(num_images):
            file_name = f"{image_id:06d}.png"
            image, objects, dropped = _make_image(rng, image_size)
            num_dropped += dropped
            Image.fromarray(image).save(
                os.path.join(staging, "images", file_name), format="PNG", compress_level=6)
            images.append({"id": image_id, "file_name": file_name,
                           "height": image_size, "width": image_size})
            for category_id, visible in objects:
                annotations.append(
                    _annotation(len(annotations) + 1, image_id, category_id, visible))
        coco = {"images": images, "annotations": annotations, "categories": list(CATEGORIES)}
        with open(os.path.join(staging, "annotations.json"), "w", encoding="utf-8") as f:
            json.dump(coco, f, sort_keys=True, separators=(",", ":"))
        _move_into_place(staging, output_dir, parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    counts = {c["name"]: 0 for c in CATEGORIES}
    for annotation in annotations:
        counts[CATEGORIES[annotation["category_id"] - 1]["name"]] += 1
    return {
        "output_dir": output_dir,
        "annotations_path": os.path.join(output_dir, "annotations.json"),
        "num_images": num_images,
        "num_annotations": len(annotations),
        "num_dropped": num_dropped,
        "instances_per_category": counts,
    }
