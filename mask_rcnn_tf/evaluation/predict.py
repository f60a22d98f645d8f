"""Predictions on image files: a drawn PNG per image and one COCO-results JSON."""

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from mask_rcnn_tf.config import Config
from mask_rcnn_tf.data.inputs import square_pad_size
from mask_rcnn_tf.data.pipeline import pad_to_multiple, preprocess_image
from mask_rcnn_tf.evaluation.coco_eval import detections_to_coco
from mask_rcnn_tf.evaluation.evaluate import detection_function
from mask_rcnn_tf.evaluation.visualize import draw_detections
from mask_rcnn_tf.io_utils import atomic_path, atomic_write_json

logger = logging.getLogger("mask_rcnn_tf.predict")

RESULTS_FILE = "detections.json"


def read_image(path) -> np.ndarray:
    """uint8 [h, w, 3] RGB of an image file; ValueError naming the file if it does not decode."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Exception as err:  # PIL raises many types for broken files; all mean the same here.
        raise ValueError(f"{path}: image does not decode ({err})") from None


def predict_images(model, config: Config, images, output_dir, categories,
                   skeleton=()) -> list[dict]:
    """Runs `model` on each image, draws its detections and writes COCO results.

    Writes `output_dir/<image stem>.png` per image and `output_dir/detections.json` (COCO
    results; `image_id` is the image's position in `images`, `file_name` names it; results
    carry "keypoints" when the model has the keypoint branch).

    Args:
        images: dict from file path to uint8 [h, w, 3] RGB (see read_image).
        categories: (category id, name) pairs; class c is categories[c - 1].
        skeleton: 1-based (a, b) keypoint pairs drawn as limbs (the dataset's `skeleton`).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    d = config.data
    detect = detection_function(model)
    pad_size = square_pad_size(d)
    category_ids = [category_id for category_id, _ in categories]
    class_names = {index + 1: name for index, (_, name) in enumerate(categories)}
    all_results = []
    for index, (path, image) in enumerate(images.items()):
        padded, resized_size, scale = preprocess_image(
            image, min_size=d.min_size, max_size=d.max_size, pad_size=pad_size,
            mean=d.mean, std=d.std, channel_order=d.channel_order)
        batch = padded[None]
        if pad_size is None:  # as the input pipeline and the export pad (data.pad_mode batch)
            batch = pad_to_multiple(batch, d.size_divisibility)
        outputs = detect(batch, tf.cast(resized_size, tf.float32)[None])
        outputs = {key: np.asarray(value) for key, value in outputs.items()}
        outputs.update(image_ids=np.array([index]), scales=np.array([float(scale)]),
                       original_sizes=np.array([image.shape[:2]]))
        results = detections_to_coco(outputs, category_ids, config.eval.mask_threshold)
        for result in results:
            result["file_name"] = str(path)
        all_results.extend(results)
        drawn = draw_results(image, results, category_ids, class_names,
                             config.eval.score_threshold_draw, skeleton)
        with atomic_path(output_dir / f"{Path(path).stem}.png") as tmp:
            Image.fromarray(drawn).save(tmp, format="PNG")
        logger.info("%s: %d detections", path, len(results))
    atomic_write_json(output_dir / RESULTS_FILE, all_results)
    return all_results


def draw_results(image, results, category_ids, class_names, score_threshold, skeleton=()):
    """Draws COCO results (one image's, original pixels, RLE masks, keypoints with the 1-based
    `skeleton` pairs when results have "keypoints") over uint8 [h, w, 3]."""
    if not results:
        return image.copy()
    boxes = np.array([[y, x, y + h, x + w] for x, y, w, h in (r["bbox"] for r in results)])
    classes = np.array([category_ids.index(r["category_id"]) + 1 for r in results])
    scores = np.array([r["score"] for r in results])
    masks = None
    if "segmentation" in results[0]:
        masks = np.stack([mask_utils.decode(r["segmentation"]).astype(bool) for r in results])
    keypoints = None
    if "keypoints" in results[0]:
        # COCO results and the drawer share the pixel-index frame.
        keypoints = keypoints_to_draw([np.reshape(r["keypoints"], [-1, 3]) for r in results])
    return draw_detections(image, boxes, classes, scores, masks, class_names, score_threshold,
                           keypoints=keypoints, skeleton=skeleton)


def keypoints_to_draw(keypoints):
    """Predicted keypoints as draw_detections takes them: every keypoint visible.

    A predicted keypoint's score is its heatmap's maximum logit, whose level means nothing (the
    softmax the head is trained with ignores a shift of all logits), so no threshold on it
    decides which keypoints to draw: all of a drawn detection are.

    Args:
        keypoints: N arrays float [Kp, 3] (x, y, score), COCO's pixel-index frame.

    Returns:
        float32 [N, Kp, 3] (x, y, 1).
    """
    points = np.array(keypoints, np.float32).reshape(len(keypoints), -1, 3)
    points[:, :, 2] = 1.0
    return points
