import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.pipeline import build_dataset

MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
HEIGHT, WIDTH = 60, 100


def _masks():
    """Two instance masks on a 60 x 100 image: a rectangle and an L shape (not mirror-symmetric)."""
    rectangle = np.zeros((HEIGHT, WIDTH), np.uint8)
    rectangle[5:25, 10:40] = 1
    ell = np.zeros((HEIGHT, WIDTH), np.uint8)
    ell[30:55, 60:95] = 1
    ell[30:42, 78:95] = 0
    return [rectangle, ell]


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)


def _sample(mask, y, x):
    """Bilinear value at pixel coordinates (pixel k's centre at k + 0.5), zero beyond the border."""
    padded = np.pad(mask.astype(np.float64), 1)
    yi, xi = y + 0.5, x + 0.5  # index coordinates of the padded map
    y0, x0 = int(np.floor(yi)), int(np.floor(xi))
    value = 0.0
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < padded.shape[0] and 0 <= xx < padded.shape[1]:
                value += (1 - abs(yi - yy)) * (1 - abs(xi - xx)) * padded[yy, xx]
    return value


def _crop(mask, box, size):
    """The mask sampled at the size x size bin centres of box [y1, x1, y2, x2]."""
    y1, x1, y2, x2 = box
    ys = y1 + (np.arange(size) + 0.5) * (y2 - y1) / size
    xs = x1 + (np.arange(size) + 0.5) * (x2 - x1) / size
    return np.array([[_sample(mask, y, x) for x in xs] for y in ys])


def _resize(image, out_h, out_w):
    """Bilinear resize with half-pixel centres and edge clamping (no antialiasing)."""
    def axis(out_size, in_size):
        src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, in_size - 1), src - low

    y0, y1, wy = axis(out_h, image.shape[0])
    x0, x1, wx = axis(out_w, image.shape[1])
    image = image.astype(np.float64)
    top = image[y0][:, x0] * (1 - wx)[None, :, None] + image[y0][:, x1] * wx[None, :, None]
    bottom = image[y1][:, x0] * (1 - wx)[None, :, None] + image[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


@pytest.fixture
def two_images(write_coco):
    """Image 1: 60 x 100 with the two masks of _masks(); image 2: 40 x 40 without instances."""
    annotations = []
    for i, mask in enumerate(_masks()):
        y1, x1, y2, x2 = _tight_box(mask)
        rle = mask_utils.encode(np.asfortranarray(mask))
        annotations.append({"id": i + 1, "image_id": 1, "category_id": 2 - i, "iscrowd": 0,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()),
                            "segmentation": {"size": [HEIGHT, WIDTH],
                                             "counts": rle["counts"].decode("ascii")}})
    path, images_dir = write_coco([{"id": 1, "height": HEIGHT, "width": WIDTH},
                                   {"id": 2, "height": 40, "width": 40}], annotations)
    return load_coco(path, images_dir)


def _first_batch(dataset, **kwargs):
    arguments = dict(training=False, batch_size=2, min_size=80, max_size=120, pad_size=128,
                     max_instances=4, mask_crop_size=14)
    arguments.update(kwargs)
    return {k: v.numpy() for k, v in next(iter(build_dataset(dataset, **arguments))).items()}


def _original_image(dataset, index=0):
    return np.asarray(Image.open(dataset.records[index].path).convert("RGB"))


def test_output_shapes_dtypes_and_padding(two_images):
    batch = _first_batch(two_images)
    expected = {
        "images": ((2, 128, 128, 3), np.float32), "image_sizes": ((2, 2), np.float32),
        "scales": ((2,), np.float32), "original_sizes": ((2, 2), np.int32),
        "image_ids": ((2,), np.int64), "gt_boxes": ((2, 4, 4), np.float32),
        "gt_classes": ((2, 4), np.int32), "gt_masks": ((2, 4, 14, 14), np.float32),
        "num_gt": ((2,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert batch["image_ids"].tolist() == [1, 2]
    assert batch["num_gt"].tolist() == [2, 0]
    assert batch["gt_classes"].tolist() == [[2, 1, -1, -1], [-1, -1, -1, -1]]
    assert not batch["gt_boxes"][0, 2:].any() and not batch["gt_masks"][0, 2:].any()
    assert not batch["gt_boxes"][1].any() and not batch["gt_masks"][1].any()
    assert batch["original_sizes"].tolist() == [[60, 100], [40, 40]]


@pytest.mark.parametrize("min_size, max_size, pad_size, scale, resized", [
    (80, 120, 128, 1.2, (72, 120)),   # the long side hits max_size
    (90, 200, 224, 1.5, (90, 150)),   # the short side reaches min_size
])
def test_resize_of_a_non_square_image(two_images, min_size, max_size, pad_size, scale, resized):
    batch = _first_batch(two_images, batch_size=1, min_size=min_size, max_size=max_size,
                         pad_size=pad_size)
    np.testing.assert_allclose(batch["scales"], [scale], rtol=1e-6)
    assert batch["image_sizes"].tolist() == [list(resized)]
    boxes = np.array([_tight_box(m) for m in _masks()]) * scale
    np.testing.assert_allclose(batch["gt_boxes"][0, :2], boxes, rtol=1e-6)
    h, w = resized
    expected = (_resize(_original_image(two_images), h, w) - MEAN) / STD
    np.testing.assert_allclose(batch["images"][0, :h, :w], expected, atol=1e-3)
    assert not batch["images"][0, h:].any() and not batch["images"][0, :, w:].any()


def test_mask_crops_match_numpy_crop_of_the_full_mask(two_images):
    batch = _first_batch(two_images)
    for i, mask in enumerate(_masks()):
        np.testing.assert_allclose(batch["gt_masks"][0, i], _crop(mask, _tight_box(mask), 14),
                                   atol=1e-5)


def test_flip_mirrors_image_boxes_and_mask_crops(two_images):
    one_image = dataclasses.replace(two_images, records=two_images.records[:1])
    plain = _first_batch(one_image, batch_size=1)
    flipped = _first_batch(one_image, batch_size=1, training=True, flip_probability=1.0, seed=0)
    assert flipped["image_ids"].tolist() == [1]
    h, w = plain["image_sizes"][0].astype(int)
    np.testing.assert_array_equal(flipped["images"][0, :h, :w], plain["images"][0, :h, :w][:, ::-1])
    y1, x1, y2, x2 = plain["gt_boxes"][0, :2].T
    np.testing.assert_allclose(flipped["gt_boxes"][0, :2],
                               np.stack([y1, w - x2, y2, w - x1], axis=1), atol=1e-5)
    for i, mask in enumerate(_masks()):
        y1, x1, y2, x2 = _tight_box(mask)
        expected = _crop(mask[:, ::-1], [y1, WIDTH - x2, y2, WIDTH - x1], 14)
        np.testing.assert_allclose(flipped["gt_masks"][0, i], expected, atol=1e-5)
    unflipped = _first_batch(one_image, batch_size=1, training=True, flip_probability=0.0)
    np.testing.assert_array_equal(unflipped["gt_boxes"], plain["gt_boxes"])


def test_training_flips_at_random_reproducibly_under_a_seed(two_images):
    one_image = dataclasses.replace(two_images, records=two_images.records[:1])

    def first_x1(seed):
        dataset = build_dataset(one_image, training=True, batch_size=1, min_size=60,
                                max_size=100, pad_size=128, max_instances=2, mask_crop_size=4,
                                seed=seed)
        return [float(b["gt_boxes"][0, 0, 1]) for b in dataset.take(16)]

    runs = first_x1(5)
    assert runs == first_x1(5)
    assert sorted(set(runs)) == [10.0, 60.0]  # rectangle x from 10 to 40 in a 100-wide image


def test_evaluation_keeps_order_and_last_partial_batch(shapes_dir):
    dataset = load_coco(shapes_dir / "annotations.json", shapes_dir / "images")
    arguments = dict(batch_size=6, min_size=128, max_size=128, pad_size=128, max_instances=4,
                     mask_crop_size=4)
    evaluation = build_dataset(dataset, training=False, **arguments)
    ids = [b["image_ids"].numpy().tolist() for b in evaluation]
    assert ids == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18)), [18, 19]]
    training = build_dataset(dataset, training=True, repeat=False, seed=1, **arguments)
    sizes = [len(b["image_ids"]) for b in training]
    assert sizes == [6, 6, 6]


def test_more_instances_than_max_keeps_the_first(two_images, caplog):
    with caplog.at_level(logging.INFO, logger="mask_rcnn_tf.data"):
        batch = _first_batch(two_images, max_instances=1)
    assert batch["num_gt"].tolist() == [1, 0]
    assert batch["gt_classes"].tolist() == [[2], [-1]]
    assert "1 images have more than max_instances=1 instances" in caplog.text


def test_image_size_mismatch_is_reported_with_the_path(two_images):
    record = dataclasses.replace(two_images.records[0], height=61)
    counts = [np.concatenate([c[:-1], [c[-1] + WIDTH]]).astype(np.int32)
              for c in record.mask_counts]
    broken = dataclasses.replace(two_images, records=[dataclasses.replace(
        record, mask_counts=tuple(counts))])
    with pytest.raises(tf.errors.InvalidArgumentError, match=os.path.basename(record.path)):
        _first_batch(broken, batch_size=1)


def test_rejects_pad_size_that_is_not_a_multiple_of_32(two_images):
    with pytest.raises(ValueError, match="pad_size must be a multiple of 32 and >= max_size=120"):
        build_dataset(two_images, training=False, batch_size=1, min_size=80, max_size=120,
                      pad_size=130, max_instances=4, mask_crop_size=14)


def test_decoded_image_of_another_size_than_its_annotations_is_named():
    import io

    from mask_rcnn_tf.data.pipeline import decode_image_of_size

    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 6, 3), 9, np.uint8)).save(buffer, format="PNG")
    data = tf.constant(buffer.getvalue())
    image = decode_image_of_size(data, tf.constant("a/b.png"), tf.constant([4, 6]), "the shard's")
    np.testing.assert_array_equal(image.numpy(), np.full((4, 6, 3), 9, np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
            r"(?s)a/b.png.*image size \(h, w\).*4, 6.*differs from the shard's.*4, 5")):
        decode_image_of_size(data, tf.constant("a/b.png"), tf.constant([4, 5]), "the shard's")
