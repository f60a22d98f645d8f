"""Serving: a gRPC client for TF Serving (client.py) and a development server (server.py).

The client needs no model code: `from mask_rcnn_tf.serving import MaskRCNNClient`. The server
module loads SavedModels with TensorFlow and is imported only by `mask-rcnn serve` and tests.
"""

from mask_rcnn_tf.serving.client import MaskRCNNClient
from mask_rcnn_tf.serving.detections import Detection
from mask_rcnn_tf.serving.errors import (DeadlineExceededError, InvalidRequestError,
                                         ModelNotFoundError, ResourceExhaustedError,
                                         ServerUnavailableError, ServingError,
                                         SignatureNotFoundError)

__all__ = [
    "DeadlineExceededError", "Detection", "InvalidRequestError", "MaskRCNNClient",
    "ModelNotFoundError", "ResourceExhaustedError", "ServerUnavailableError", "ServingError",
    "SignatureNotFoundError",
]
