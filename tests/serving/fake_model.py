"""A tiny SavedModel keeping the export's serving contract, for protocol tests.

The fake detector finds two fixed boxes per image, so protocol tests need no trained model:
detection 0 covers the middle half of the image and scores mean(pixels) / 255 (so a test can
tell which image was run), detection 1 covers the top-left quarter and scores 0.25; slot 2 is
padding. Its masks are 28 x 28: all ones for detection 0, the left half for detection 1.
"""

import socket

import numpy as np
import tensorflow as tf

CLASS_NAMES = ["circle", "square", "triangle"]
MODEL_NAME = "fake"
VERSION = 3
SLOTS = 3


class FakeDetector(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def detect_encoded(self, images):
        stats = tf.map_fn(
            lambda data: self._stats(tf.io.decode_image(data, channels=3,
                                                        expand_animations=False)),
            images, fn_output_signature=(tf.TensorSpec([2], tf.int32),
                                         tf.TensorSpec([], tf.float32)))
        return self._outputs(*stats)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def detect_pixels(self, images):
        stats = tf.map_fn(self._stats, images, fn_output_signature=(
            tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32)))
        return self._outputs(*stats)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="unused")])
    def metadata(self, unused):
        del unused
        return {"class_names": tf.constant(CLASS_NAMES)}

    @staticmethod
    def _stats(image):
        return tf.shape(image)[:2], tf.reduce_mean(tf.cast(image, tf.float32)) / 255.0

    @staticmethod
    def _outputs(sizes, means):
        batch = tf.shape(sizes)[0]
        h = tf.cast(sizes[:, 0], tf.float32)
        w = tf.cast(sizes[:, 1], tf.float32)
        zeros = tf.zeros_like(h)
        boxes = tf.stack([
            tf.stack([h / 4, w / 4, 3 * h / 4, 3 * w / 4], axis=-1),
            tf.stack([zeros, zeros, h / 2, w / 2], axis=-1),
            tf.zeros([batch, 4]),
        ], axis=1)
        left_half = tf.concat([tf.ones([28, 14]), tf.zeros([28, 14])], axis=1)
        masks = tf.stack([tf.ones([28, 28]), left_half, tf.zeros([28, 28])])
        return {
            "num_detections": tf.fill([batch], 2),
            "detection_boxes": boxes,
            "detection_classes": tf.tile(tf.constant([[1, 2, 0]]), [batch, 1]),
            "detection_scores": tf.stack([means, tf.fill([batch], 0.25), zeros], axis=1),
            "detection_masks": tf.tile(masks[None], [batch, 1, 1, 1]),
            "image_sizes": sizes,
        }


def expected_outputs(image):
    """The fake detector's outputs for one uint8 [h, w, 3] image (NumPy, from its definition)."""
    h, w = image.shape[:2]
    boxes = np.array([[h / 4, w / 4, 3 * h / 4, 3 * w / 4], [0, 0, h / 2, w / 2], [0, 0, 0, 0]],
                     np.float32)
    scores = np.array([image.astype(np.float32).mean() / 255.0, 0.25, 0.0], np.float32)
    return boxes, np.array([1, 2, 0], np.int32), scores


def save_fake_model(path):
    module = FakeDetector()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.detect_encoded.get_concrete_function(),
        "serving_tensor": module.detect_pixels.get_concrete_function(),
        "metadata": module.metadata.get_concrete_function(),
    })


def random_image(rng, height, width):
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def free_port():
    """A 127.0.0.1 port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
