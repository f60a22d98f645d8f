"""Shared pieces of the export tests: noise images, the in-process reference run, and a tiny
Keypoint R-CNN for the export, serving and predict tests of the keypoint outputs.

configs/figures.yaml (one class, the seven stick-figure keypoints) narrowed to 64 px inputs and
thin layers, with random weights. The class-logit kernel is redrawn wider than the initializer's
(std 0.1 instead of 0.01) so that scores spread out (about 0.7 to 0.9 for the one class) and the
0.82 score threshold keeps a varying number of detections per image, none within 0.002 of it:
meaningless detections, but all that format tests need.
"""

import io
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.data.pipeline import preprocess_image
from mask_rcnn_tf.data.figures import make_figures
from mask_rcnn_tf.modeling.factory import build_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "figures.yaml"
SIZE = 64
TINY = [f"data.min_size={SIZE}", f"data.max_size={SIZE}", "model.backbone.base_width=8",
        "model.fpn.num_channels=16", "model.rpn.pre_nms_top_n_test=100",
        "model.rpn.post_nms_top_n_test=50", "model.roi_heads.box_fc_dim=16",
        "model.roi_heads.mask_conv_dim=8", "model.roi_heads.mask_num_convs=1",
        "model.roi_heads.detections_per_image=10", "model.roi_heads.score_threshold=0.82",
        "model.keypoints.conv_dim=8", "model.keypoints.num_convs=1"]
NUM_DETECTIONS = 10
# The shapes demo (three classes, masks only) narrowed the same way, for the export and serving
# tests of a mask model (tests/conftest.py tiny_shapes_export).
SHAPES_CONFIG = CONFIG.with_name("shapes.yaml")
SHAPES_TINY = [f"data.min_size={SIZE}", f"data.max_size={SIZE}", "model.backbone.base_width=8",
               "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
               "model.roi_heads.mask_conv_dim=8", "model.roi_heads.score_threshold=0.5"]


def make_annotations(root):
    """Writes a two-image stick-figure dataset under root/figures; returns its annotations path."""
    return make_figures(Path(root) / "figures", num_images=2, seed=0,
                        image_size=104)["annotations_path"]


def tiny_config(annotations, overrides=()):
    """(Config, its override list) of the tiny model trained on `annotations`."""
    overrides = TINY + [f"data.train.annotations={annotations}", *overrides]
    return load_config(CONFIG, overrides), overrides


def random_model(config, weights_path=None):
    """The built model with seeded random weights, saved to weights_path when given."""
    keras.utils.set_random_seed(0)
    model = build_model(config.model, image_size=config.data.pad_size)
    kernel = model.box_head.class_logits.kernel
    kernel.assign(np.random.default_rng(0).normal(0.0, 0.1, kernel.shape).astype(np.float32))
    if weights_path is not None:
        model.save_weights(str(weights_path))
    return model


def noise_images(sizes, seed=3):
    """uint8 RGB noise images with a bright rectangle, one per (h, w) in sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for height, width in sizes:
        image = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
        image[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = (250, 200, 30)
        images.append(image)
    return images


def encode_png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def resize_scale(height, width, size=SIZE):
    """The model's resize factor for an image, from the config's rule (min and max side size)."""
    return min(size / min(height, width), size / max(height, width))


def pad_batch(images):
    """float32 [B, H, W, 3]: resized [h, w, 3] images at the top-left of zeros, H and W the
    largest height and width rounded up to a multiple of 32 (the per-batch padding rule)."""
    sizes = np.array([image.shape[:2] for image in images])
    height, width = -(-sizes.max(axis=0) // 32) * 32
    batch = np.zeros((len(images), height, width, 3), np.float32)
    for b, image in enumerate(images):
        batch[b, :image.shape[0], :image.shape[1]] = image
    return batch


def run_model(model, images, size):
    """The Keras model's detections on uint8 images resized to min = max side `size` and padded
    together as one batch (pad_batch), as NumPy arrays."""
    resized, sizes = [], []
    for image in images:
        image, resized_size, _ = preprocess_image(image, min_size=size, max_size=size)
        resized.append(image.numpy())
        sizes.append(tf.cast(resized_size, tf.float32))
    outputs = model({"images": pad_batch(resized), "image_sizes": tf.stack(sizes)},
                    training=False)
    return {key: value.numpy() for key, value in outputs.items()}


def coco_frame(keypoints, scale):
    """float [..., Kp, 3] keypoints from continuous resized-input pixels to the original image's
    pixel-index frame (pixel i's centre at i): x / scale - 0.5; scores unchanged."""
    points = np.array(keypoints, np.float64)
    points[..., :2] = points[..., :2] / scale - 0.5
    return points
