"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests` in a SavedModel.

tensorflow_model_server replays these PredictionLog records (TFRecord file) when it loads a
version and before it marks the version AVAILABLE, so the one-off costs of a graph's first run
(graph optimization, kernel and memory set-up) are paid then, not by the first user request.
The records run every signature, the encoded one with a single image and with a batch of two
images of different sizes and formats, on generated noise images (no data files needed).
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from mask_rcnn_tf.export.serving_module import METADATA, SERVING_DEFAULT, SERVING_TENSOR

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def _noise_image(height, width, seed):
    """uint8 [height, width, 3] uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _log(signature_name, inputs):
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(signature_name=signature_name))
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(image_size=128):
    """The warm-up records.

    Args:
        image_size: side of the square noise images.

    Returns:
        list of prediction_log_pb2.PredictionLog: serving_default with one PNG, serving_default
        with a PNG and a smaller JPEG, serving_tensor with one uint8 [1, S, S, 3] image, metadata.
    """
    square = _noise_image(image_size, image_size, seed=0)
    other = _noise_image(max(image_size // 2, 1), image_size, seed=1)
    png = tf.io.encode_png(square).numpy()
    jpeg = tf.io.encode_jpeg(other).numpy()
    return [
        _log(SERVING_DEFAULT, {"images": np.array([png], object)}),
        _log(SERVING_DEFAULT, {"images": np.array([png, jpeg], object)}),
        _log(SERVING_TENSOR, {"images": square[None]}),
        _log(METADATA, {"unused": np.zeros([1], np.int32)}),
    ]


def write_warmup_file(saved_model_dir, records):
    """Writes `records` to saved_model_dir/assets.extra/tf_serving_warmup_requests.

    Args:
        saved_model_dir: the SavedModel folder (still the temporary one during an export).
        records: iterable of prediction_log_pb2.PredictionLog.

    Returns:
        str, the path written.
    """
    folder = os.path.join(saved_model_dir, WARMUP_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return path
