"""Runs a model over a COCO split and scores it with pycocotools or faster-coco-eval."""

import logging
import time

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.config import DataConfig
from mask_rcnn_tf.data.coco import CocoDataset
from mask_rcnn_tf.data.input_errors import naming_input_errors
from mask_rcnn_tf.data.inputs import make_dataset
from mask_rcnn_tf.evaluation.coco_eval import CocoEvaluator
from mask_rcnn_tf.progress import Progress

logger = logging.getLogger("mask_rcnn_tf.evaluation")

# What the evaluator needs from each batch besides the detections.
_BATCH_KEYS = ("image_ids", "scales", "original_sizes")


def detection_function(model):
    """`model`'s detections as one tf.function traced once for inputs of every size.

    Returns:
        callable (images float32 [B, H, W, 3], image_sizes float32 [B, 2]) -> the model's
        detections dict (modeling/mask_rcnn.py).
    """
    return tf.function(
        lambda images, sizes: model({"images": images, "image_sizes": sizes}, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                         tf.TensorSpec([None, 2], tf.float32)])


def predict_dataset(model, data_config: DataConfig, dataset: CocoDataset, batch_size: int,
                    progress: bool = False):
    """Yields, per batch, a dict of NumPy detections plus image ids, scales and original sizes.

    Args:
        progress: show done/total images, images/s and the time left on stderr (5,000 COCO
            images at ~2 s each on a CPU take hours).
    """
    detect = detection_function(model)
    bar = Progress(dataset.num_images, "images", enabled=progress)
    with naming_input_errors(dataset):
        for batch in make_dataset(data_config, dataset, training=False, batch_size=batch_size):
            outputs = detect(batch["images"], batch["image_sizes"])
            result = {key: np.asarray(value) for key, value in outputs.items()}
            result.update({key: batch[key].numpy() for key in _BATCH_KEYS})
            bar.update(len(result["image_ids"]))
            yield result


def evaluate_model(model, data_config: DataConfig, dataset: CocoDataset, *, batch_size: int,
                   mask_threshold: float = 0.5, verbose: bool = True,
                   keypoint_sigmas=None, backend: str = "pycocotools") -> dict:
    """COCO metrics of `model` on `dataset`: {"bbox": {...}, "segm": {...}} plus "keypoints"
    when the model has a keypoint branch (scored with `keypoint_sigmas`).

    With `verbose`, shows a progress line while predicting, the metric tables, and logs the
    time spent in the model (and the input pipeline) and in the metric (`backend`).
    """
    category_ids = [category_id for category_id, _ in dataset.categories]
    iou_types = ("bbox", "segm") + (("keypoints",) if model.keypoint_head is not None else ())
    evaluator = CocoEvaluator(dataset.coco, category_ids, iou_types=iou_types,
                              mask_threshold=mask_threshold, verbose=verbose,
                              keypoint_sigmas=keypoint_sigmas, backend=backend)
    start = time.monotonic()
    metric_seconds = 0.0
    for outputs in predict_dataset(model, data_config, dataset, batch_size, progress=verbose):
        tick = time.monotonic()
        evaluator.update(outputs)  # pastes and encodes masks: part of the metric's cost
        metric_seconds += time.monotonic() - tick
    tick = time.monotonic()
    metrics = evaluator.evaluate()
    metric_seconds += time.monotonic() - tick
    model_seconds = time.monotonic() - start - metric_seconds
    logger.info("%d images: model and input %.1f s, metric (%s) %.1f s", dataset.num_images,
                model_seconds, backend, metric_seconds)
    return metrics

