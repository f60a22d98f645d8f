"""What the built-in synthetic datasets (shapes, stick figures) share: noisy backgrounds,
colours that stand out, COCO annotations of visible masks, and the atomic dataset writer."""

import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

MIN_VISIBLE_FRACTION = 0.3
MIN_COLOUR_DISTANCE = 100.0  # Euclidean RGB distance of an object's colour to the background
NOISE_SIGMA = 5.0  # grey levels of Gaussian noise on the background


def noisy_background(rng, image_size):
    """(background colour int [3], image uint8 [S, S, 3] of that colour plus mild noise)."""
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0.0, NOISE_SIGMA, size=(image_size, image_size, 3))
    return background, np.clip(np.rint(background + noise), 0, 255).astype(np.uint8)


def random_colour(rng, background):
    """A random RGB colour at least MIN_COLOUR_DISTANCE from `background`."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - background) >= MIN_COLOUR_DISTANCE:
            return colour


def instance_annotation(annotation_id, image_id, category_id, visible):
    """COCO annotation of a visible mask bool [S, S]: tight integer bbox, pixel area, RLE."""
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


def write_coco_dataset(output_dir, *, num_images, seed, image_size, min_image_size, overwrite,
                       categories, draw):
    """Draws and writes a synthetic COCO dataset atomically: `output_dir/images/{i:06d}.png`
    (image id i) and `output_dir/annotations.json` (sorted keys: byte-identical per seed).

    Args:
        draw: callable (rng, image_size, image_id, first_annotation_id) ->
            (image uint8 [S, S, 3], list of annotation dicts, number of objects dropped).

    Returns:
        (annotations list, total number dropped).
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if int(image_size) != image_size or image_size < min_image_size:
        raise ValueError(f"image_size must be an integer >= {min_image_size}, got {image_size!r}")
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
            image, image_annotations, dropped = draw(rng, image_size, image_id,
                                                     len(annotations) + 1)
            num_dropped += dropped
            annotations += image_annotations
            Image.fromarray(image).save(
                os.path.join(staging, "images", file_name), format="PNG", compress_level=6)
            images.append({"id": image_id, "file_name": file_name,
                           "height": image_size, "width": image_size})
        coco = {"images": images, "annotations": annotations, "categories": list(categories)}
        with open(os.path.join(staging, "annotations.json"), "w", encoding="utf-8") as f:
            json.dump(coco, f, sort_keys=True, separators=(",", ":"))
        _move_into_place(staging, output_dir, parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return annotations, num_dropped
