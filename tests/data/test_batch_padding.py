"""Per-batch padding (data.pad_mode batch): each batch is padded to its largest resized image
rounded up to size_divisibility, and training batches group images by orientation as
Detectron2's AspectRatioGroupedDataset does, reproducibly under a seed."""

import numpy as np
import pytest

from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.pipeline import build_dataset

ARGS = dict(max_instances=2, mask_crop_size=4)


def _box_annotation(annotation_id, image_id, height, width):
    box = [width / 4, height / 4, width / 2, height / 2]  # x, y, w, h
    x, y, w, h = box
    return {"id": annotation_id, "image_id": image_id, "category_id": 1, "bbox": box,
            "area": w * h, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


@pytest.fixture
def coco_sizes(write_coco):
    def write(sizes):
        images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
        annotations = [_box_annotation(i + 1, i + 1, h, w) for i, (h, w) in enumerate(sizes)]
        return load_coco(*write_coco(images, annotations))
    return write


def test_coco_sizes_reach_the_model_padded_to_multiples_of_32(coco_sizes):
    # 800 x 1333 -> 800 x 1333 -> 800 x 1344; 480 x 640 -> 800 x 1067 -> 800 x 1088 (800 is a
    # multiple of 32); its portrait twin -> 1067 x 800 -> 1088 x 800.
    dataset = coco_sizes([(800, 1333), (480, 640), (640, 480)])
    common = dict(training=False, min_size=800, max_size=1333, **ARGS)
    singles = list(build_dataset(dataset, batch_size=1, pad_size=None, **common))
    assert [b["images"].shape.as_list() for b in singles] == [
        [1, 800, 1344, 3], [1, 800, 1088, 3], [1, 1088, 800, 3]]
    assert [b["image_sizes"].numpy().tolist() for b in singles] == [
        [[800, 1333]], [[800, 1067]], [[1067, 800]]]
    # One batch of all three: the largest height and width, each rounded up.
    (batch,) = build_dataset(dataset, batch_size=3, pad_size=None, **common)
    assert batch["images"].shape.as_list() == [3, 1088, 1344, 3]
    # The same resized pixels as the square mode's, zeros in the padding.
    (square,) = build_dataset(dataset, batch_size=3, pad_size=1344, **common)
    for b, (h, w) in enumerate(batch["image_sizes"].numpy().astype(int)):
        np.testing.assert_array_equal(batch["images"][b, :h, :w], square["images"][b, :h, :w])
        assert not np.any(batch["images"][b, h:]) and not np.any(batch["images"][b, :, w:])


def _grouped(order, batch_size, is_landscape):
    """Detectron2's AspectRatioGroupedDataset over an image order: two buckets, a bucket is
    emitted as a batch when it holds batch_size images."""
    buckets, batches = {True: [], False: []}, []
    for image_id in order:
        bucket = buckets[is_landscape[image_id]]
        bucket.append(image_id)
        if len(bucket) == batch_size:
            batches.append(list(bucket))
            bucket.clear()
    return batches


def test_training_batches_group_orientations_reproducibly(coco_sizes):
    sizes = [(40, 60), (60, 40), (60, 40), (40, 60), (50, 50), (40, 60), (60, 40), (40, 64)]
    dataset = coco_sizes(sizes)
    is_landscape = {i + 1: w > h for i, (h, w) in enumerate(sizes)}
    common = dict(training=True, min_size=40, max_size=64, seed=4, **ARGS)

    def batches(batch_size, pad_size, count):
        data = build_dataset(dataset, batch_size=batch_size, pad_size=pad_size, **common)
        return [b["image_ids"].numpy().tolist() for b in data.take(count)]

    # The square mode keeps the shuffled order, batch by batch: the order grouping sees.
    order = [ids[0] for ids in batches(1, 64, 24)]
    grouped = batches(3, None, 6)
    assert grouped == _grouped(order, 3, is_landscape)[:6]
    assert grouped == batches(3, None, 6)
    assert any(is_landscape[ids[0]] for ids in grouped)
    assert not all(is_landscape[ids[0]] for ids in grouped)
    for ids, batch in zip(grouped, build_dataset(dataset, batch_size=3, pad_size=None,
                                                 **common).take(6)):
        # One orientation per batch, so the padding is that of similar shapes.
        assert batch["images"].shape[0] == 3
        assert batch["images"].shape[1] % 32 == 0 and batch["images"].shape[2] % 32 == 0


def test_rejects_size_divisibility_that_is_not_a_multiple_of_32(coco_sizes):
    dataset = coco_sizes([(40, 60)])
    with pytest.raises(ValueError, match="size_divisibility must be a multiple of 32, got 48"):
        build_dataset(dataset, training=False, batch_size=1, min_size=40, max_size=64,
                      pad_size=None, size_divisibility=48, **ARGS)
