"""Keypoints through the COCO reader and the tf.data pipeline (stick-figure data)."""

import json

import numpy as np
import pytest

from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.figures import FLIP_MAP, KEYPOINT_NAMES, SKELETON, make_figures
from mask_rcnn_tf.data.pipeline import build_dataset


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("figures") / "data"
    make_figures(output_dir, num_images=3, seed=3, image_size=128)
    return output_dir


def _batch(dataset, **kwargs):
    args = dict(training=False, batch_size=1, min_size=192, max_size=192, pad_size=192,
                max_instances=4, mask_crop_size=8, keypoint_flip_map=FLIP_MAP)
    args.update(kwargs)
    batch = next(iter(build_dataset(dataset, **args)))
    return {key: value.numpy() for key, value in batch.items()}


def test_reader_adds_half_a_pixel_and_keeps_the_schema(figures):
    dataset = load_coco(figures / "annotations.json", figures / "images")
    assert dataset.keypoint_names == KEYPOINT_NAMES
    assert dataset.skeleton == SKELETON
    raw = json.loads((figures / "annotations.json").read_text())["annotations"]
    first = [a for a in raw if a["image_id"] == 0]
    expected = np.array([a["keypoints"] for a in first], np.float32).reshape(len(first), 7, 3)
    expected[..., :2] += 0.5
    np.testing.assert_allclose(dataset.records[0].keypoints, expected, atol=1e-5)


def test_pipeline_scales_and_flips_keypoints(figures):
    dataset = load_coco(figures / "annotations.json", figures / "images")
    plain = _batch(dataset)
    scale = 192 / 128
    n = int(plain["num_gt"][0])
    kp = dataset.records[0].keypoints
    np.testing.assert_allclose(plain["gt_keypoints"][0, :n, :, :2], kp[..., :2] * scale, atol=1e-4)
    np.testing.assert_array_equal(plain["gt_keypoints"][0, :n, :, 2], kp[..., 2])
    assert not plain["gt_keypoints"][0, n:].any()

    # shuffle_buffer 1 keeps file order: with more, which image comes first depends on the
    # global TF seed that earlier tests leave (tf.random.set_seed), not only on seed=0.
    flipped = _batch(dataset, training=True, flip_probability=1.0, seed=0, shuffle_buffer=1)
    assert flipped["image_ids"].tolist() == plain["image_ids"].tolist()
    # x -> W - x in continuous pixels, and left/right keypoints trade places.
    expected = plain["gt_keypoints"][0, :n][:, list(FLIP_MAP)]
    expected[..., 0] = 192 - expected[..., 0]
    np.testing.assert_allclose(flipped["gt_keypoints"][0, :n], expected, atol=1e-4)


def test_training_with_flips_needs_a_flip_map(figures):
    dataset = load_coco(figures / "annotations.json", figures / "images")
    with pytest.raises(ValueError, match="flip map"):
        _batch(dataset, training=True, keypoint_flip_map=None)


def test_wrong_keypoint_count_names_the_annotation(figures, tmp_path):
    data = json.loads((figures / "annotations.json").read_text())
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:-3]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation id 1: keypoints must be 21 numbers"):
        load_coco(path, figures / "images")
