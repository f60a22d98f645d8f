"""Serving: gRPC and REST clients for TF Serving (client.py, rest_client.py) and a development
server (server.py, rest_server.py).

The clients need no model code: `from mask_rcnn_tf.serving import MaskRCNNClient` (or
MaskRCNNRestClient). The server modules load SavedModels with TensorFlow and are imported only
by `mask-rcnn serve` and tests.
"""

from mask_rcnn_tf.serving.client import MaskRCNNClient
from mask_rcnn_tf.serving.detections import Detection
from mask_rcnn_tf.serving.errors import (DeadlineExceededError, InvalidRequestError,
                                         ModelNotFoundError, ResourceExhaustedError,
                                         ServerUnavailableError, ServingError,
                                         SignatureNotFoundError)
from mask_rcnn_tf.serving.rest_client import MaskRCNNRestClient

__all__ = [
    "DeadlineExceededError", "Detection", "InvalidRequestError", "MaskRCNNClient",
    "MaskRCNNRestClient", "ModelNotFoundError", "ResourceExhaustedError",
    "ServerUnavailableError", "ServingError", "SignatureNotFoundError",
]
