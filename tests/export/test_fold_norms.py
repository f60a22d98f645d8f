"""The export folds the backbone's frozen BatchNorms into its convolutions
(MaskRCNN.fold_frozen_norms): the SavedModel must still give the Keras model's detections, with
BatchNorm statistics far from the identity so that the fold has something to get wrong."""

import os

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.export.saved_model import export_saved_model
from mask_rcnn_tf.layers.norm import FrozenBatchNormalization
from tests.export.helpers import SIZE, encode_png, make_annotations, noise_images, random_model
from tests.export.helpers import run_model, tiny_config

FROZEN = ["model.backbone.norm=frozen_bn", "model.backbone.freeze_at=2",
          "model.roi_heads.score_threshold=0.0"]


def _randomize_norms(model, rng):
    norms = [layer for layer in model.backbone._flatten_layers(include_self=False)
             if isinstance(layer, FrozenBatchNormalization)]
    for norm in norms:
        channels = norm.gamma.shape[0]
        norm.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        norm.beta.assign(rng.normal(0.0, 0.2, channels).astype(np.float32))
        norm.moving_mean.assign(rng.normal(0.0, 0.2, channels).astype(np.float32))
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    return len(norms)


def test_export_with_folded_norms_gives_the_keras_models_detections(tmp_path):
    config, _ = tiny_config(make_annotations(tmp_path), FROZEN)
    model = random_model(config)
    assert _randomize_norms(model, np.random.default_rng(0)) == 20  # ResNet-18
    weights = tmp_path / "frozen.weights.h5"
    model.save_weights(str(weights))
    path = export_saved_model(config, tmp_path / "models", weights=str(weights))
    images = noise_images([(SIZE, SIZE)] * 3)  # resize scale 1: boxes compare as they are
    reference = run_model(model, images, SIZE)
    served = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant([encode_png(image) for image in images]))
    served = {key: value.numpy() for key, value in served.items()}
    np.testing.assert_array_equal(served["num_detections"], reference["num_detections"])
    assert reference["num_detections"].min() == 10
    np.testing.assert_array_equal(served["detection_classes"], reference["detection_classes"])
    np.testing.assert_allclose(served["detection_scores"], reference["detection_scores"],
                               atol=1e-4)
    np.testing.assert_allclose(served["detection_boxes"], reference["detection_boxes"],
                               atol=1e-3)
    np.testing.assert_allclose(served["detection_masks"], reference["detection_masks"],
                               atol=1e-4)
    # The SavedModel holds the folded stem kernel, kernel * gamma / sqrt(variance + eps), not
    # the Keras model's.
    checkpoint = os.path.join(path, "variables", "variables")
    reader = tf.train.load_checkpoint(checkpoint)
    kernel = model.backbone.weights[0]
    assert kernel.path.endswith("stem_conv/kernel")
    norm = next(layer for layer in model.backbone._flatten_layers(include_self=False)
                if layer.name == "stem_norm")
    folded = kernel.numpy() * norm.gamma.numpy() / np.sqrt(norm.moving_variance.numpy() + 1e-5)
    saved = [reader.get_tensor(name) for name, shape in tf.train.list_variables(checkpoint)
             if tuple(shape) == tuple(kernel.shape)]
    assert any(np.allclose(value, folded, rtol=1e-5, atol=1e-7) for value in saved)
    assert not any(np.allclose(value, kernel.numpy()) for value in saved)
