"""`mask-rcnn predict` with a keypoint model: detections.json results carry keypoints in COCO's
frame of the original image, the PNGs are drawn with the dataset's skeleton, and predicted
keypoints are drawn whatever their scores (logits)."""

import json

import numpy as np
import tensorflow as tf
from PIL import Image

from mask_rcnn_tf import cli
from mask_rcnn_tf.data.figures import KEYPOINT_NAMES, SKELETON
from mask_rcnn_tf.data.pipeline import preprocess_image
from mask_rcnn_tf.evaluation.predict import draw_results
from tests.export.helpers import (CONFIG, SIZE, coco_frame, make_annotations, noise_images,
                                  pad_batch, random_model, resize_scale, tiny_config)

CLASS_NAMES = {1: "figure"}


def test_predict_writes_keypoints_and_draws_the_skeleton(tmp_path):
    # Every detection kept and drawn: random weights score low.
    config, overrides = tiny_config(make_annotations(tmp_path), [
        "model.roi_heads.score_threshold=0", "eval.score_threshold_draw=0"])
    weights = tmp_path / "tiny.weights.h5"
    model = random_model(config, weights)
    images = noise_images([(64, 64), (40, 60)])
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"image{index}.png"))
        Image.fromarray(image).save(paths[-1])
    out = tmp_path / "out"
    assert cli.main(["predict", *paths, "--config", str(CONFIG), "--weights", str(weights),
                     "--output-dir", str(out), "--set", *overrides]) == 0
    with open(out / "detections.json", encoding="utf-8") as f:
        results = json.load(f)
    assert results
    for index, image in enumerate(images):
        resized, resized_size, _ = preprocess_image(image, min_size=SIZE, max_size=SIZE)
        outputs = model({"images": pad_batch([resized.numpy()]),
                         "image_sizes": tf.cast(resized_size, tf.float32)[None]}, training=False)
        count = int(outputs["num_detections"][0])
        want = coco_frame(outputs["detection_keypoints"][0, :count].numpy(),
                          resize_scale(*image.shape[:2]))
        found = [result for result in results if result["image_id"] == index]
        assert len(found) == count > 0
        got = np.array([result["keypoints"] for result in found]).reshape(count, -1, 3)
        assert got.shape[1] == len(KEYPOINT_NAMES)
        np.testing.assert_allclose(got, want, atol=1e-3)
        with Image.open(out / f"image{index}.png") as png:
            drawn = np.asarray(png)
        np.testing.assert_array_equal(drawn, draw_results(image, found, [1], CLASS_NAMES, 0.0,
                                                          SKELETON))
        # Limbs: the same keypoints drawn without the skeleton leave pixels unchanged.
        assert (drawn != draw_results(image, found, [1], CLASS_NAMES, 0.0)).any()


def test_predicted_keypoints_are_drawn_along_the_limbs_whatever_their_scores():
    image = np.zeros((100, 100, 3), np.uint8)
    plain = {"image_id": 0, "category_id": 1, "bbox": [5.0, 5.0, 90.0, 90.0], "score": 0.9}
    # Scores are heatmap logits: negative and zero ones too are keypoints to draw.
    with_keypoints = dict(plain, keypoints=[20.0, 60.0, -3.0, 80.0, 60.0, -2.0, 50.0, 85.0, 0.0])
    without = draw_results(image, [plain], [1], CLASS_NAMES, 0.5, [(1, 2), (2, 3)])
    drawn = draw_results(image, [with_keypoints], [1], CLASS_NAMES, 0.5, [(1, 2), (2, 3)])
    changed = (drawn != without).any(axis=-1)
    assert changed[60, 50]  # the middle of limb 1-2, from (20, 60) to (80, 60)
    assert changed[85, 50]  # keypoint 3 at (x, y) = (50, 85), COCO's pixel-index frame
    assert not changed[30, 50]  # away from every limb and keypoint
