"""Runs a model over a COCO split and scores it with pycocotools."""

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.config import DataConfig
from mask_rcnn_tf.data.coco import CocoDataset
from mask_rcnn_tf.data.inputs import make_dataset
from mask_rcnn_tf.evaluation.coco_eval import CocoEvaluator

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


def predict_dataset(model, data_config: DataConfig, dataset: CocoDataset, batch_size: int):
    """Yields, per batch, a dict of NumPy detections plus image ids, scales and original sizes."""
    detect = detection_function(model)
    for batch in make_dataset(data_config, dataset, training=False, batch_size=batch_size):
        outputs = detect(batch["images"], batch["image_sizes"])
        result = {key: np.asarray(value) for key, value in outputs.items()}
        result.update({key: batch[key].numpy() for key in _BATCH_KEYS})
        yield result


def evaluate_model(model, data_config: DataConfig, dataset: CocoDataset, *, batch_size: int,
                   mask_threshold: float = 0.5, verbose: bool = True,
                   keypoint_sigmas=None) -> dict:
    """COCO metrics of `model` on `dataset`: {"bbox": {...}, "segm": {...}} plus "keypoints"
    when the model has a keypoint branch (scored with `keypoint_sigmas`)."""
    category_ids = [category_id for category_id, _ in dataset.categories]
    iou_types = ("bbox", "segm") + (("keypoints",) if model.keypoint_head is not None else ())
    evaluator = CocoEvaluator(dataset.coco, category_ids, iou_types=iou_types,
                              mask_threshold=mask_threshold, verbose=verbose,
                              keypoint_sigmas=keypoint_sigmas)
    for outputs in predict_dataset(model, data_config, dataset, batch_size):
        evaluator.update(outputs)
    return evaluator.evaluate()
