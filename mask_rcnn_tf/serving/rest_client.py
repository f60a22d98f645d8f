"""REST client for a Mask R-CNN served by tensorflow_model_server (or `mask-rcnn serve
--rest-port`): MaskRCNNClient's API over TF Serving's REST API (port 8501 by convention).

Same methods, deadlines, retries and errors as the gRPC client (client.py), which it extends:
only the transport differs. Predict sends the columnar format {"signature_name": ...,
"inputs": {"images": [{"b64": ...}, ...]}} (pixels for "serving_tensor" as nested lists) and
reads the outputs back with the dtypes of the signature (from the metadata call, made once).
A failure answers {"error": ...} with an HTTP status; it becomes the ServingError subclass of the
gRPC code TF Serving maps to that status, so `err.code` reads as with gRPC. No connection, a
reset, or 503 count as UNAVAILABLE (retried); a timeout is DEADLINE_EXCEEDED. HTTP is `requests`.
"""

import json

import grpc
import numpy as np
import requests
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from mask_rcnn_tf.serving.client import MaskRCNNClient
from mask_rcnn_tf.serving.errors import (DeadlineExceededError, ServerUnavailableError,
                                         ServingError, error_class)
from mask_rcnn_tf.serving.json_tensors import from_json, to_json
from mask_rcnn_tf.serving.tensors import numpy_dtype

# The inverse of tensorflow_model_server's gRPC code -> HTTP status (rest_server.HTTP_STATUS);
# 400 stands for both INVALID_ARGUMENT and FAILED_PRECONDITION (told apart by the message).
_CODE_OF_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED, 501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class MaskRCNNRestClient(MaskRCNNClient):
    """MaskRCNNClient over REST. Args as MaskRCNNClient's, with target "host:port" of the REST
    port (or a full "http(s)://host:port" base URL); max_message_mb does not apply."""

    def _connect(self, limit):
        base = self.target if "://" in self.target else f"http://{self.target}"
        self._url = f"{base.rstrip('/')}/v1/models/{self.model_name}"
        if self.version is not None:
            self._url += f"/versions/{int(self.version)}"
        self._session = requests.Session()
        self._output_dtypes = {}

    def close(self):
        self._session.close()

    def _request(self, method, suffix, name, body=None, timeout=None, retries=None):
        """One REST call with deadline and retries; returns the decoded JSON answer."""
        url = self._url + suffix
        call = f"{name}(model {self.model_name!r})"

        def attempt(seconds):
            try:
                response = self._session.request(
                    method, url, data=None if body is None else json.dumps(body),
                    timeout=seconds)
            except requests.Timeout as err:
                raise DeadlineExceededError(f"{call} at {self.target} failed: DEADLINE_EXCEEDED"
                                            f": {err}", code=grpc.StatusCode.DEADLINE_EXCEEDED,
                                            details=str(err)) from None
            except requests.ConnectionError as err:
                raise ServerUnavailableError(f"{call} at {self.target} failed: UNAVAILABLE: "
                                             f"{err}", code=grpc.StatusCode.UNAVAILABLE,
                                             details=str(err)) from None
            try:
                answer = response.json()
            except ValueError:
                answer = {"error": response.text.strip() or response.reason}
            if response.status_code == 200:
                return answer
            details = str(answer.get("error", answer)) if isinstance(answer, dict) else str(answer)
            code = _CODE_OF_STATUS.get(response.status_code, grpc.StatusCode.INTERNAL)
            if code == grpc.StatusCode.INVALID_ARGUMENT and "signature key" in details.lower():
                code = grpc.StatusCode.FAILED_PRECONDITION
            raise error_class(code, details)(
                f"{call} at {self.target} failed: HTTP {response.status_code} {code.name}: "
                f"{details}", code=code, details=details)

        return self._retrying(attempt, timeout, retries)

    def _predict_tensor(self, signature, alias, array):
        # Strings (encoded images) always go as b64: they are binary.
        body = {"signature_name": signature,
                "inputs": {alias: to_json(array, binary=np.asarray(array).dtype == object)}}
        answer = self._request("POST", ":predict", "Predict", body)
        outputs = answer.get("outputs")
        dtypes = self._dtypes_of(signature)
        if len(dtypes) == 1 and not (isinstance(outputs, dict) and set(outputs) == set(dtypes)):
            # A single output comes bare, as tensorflow_model_server sends it.
            outputs = {next(iter(dtypes)): outputs}
        try:
            return {name: from_json(value, dtypes[name]) for name, value in outputs.items()}
        except (KeyError, ValueError, TypeError) as err:
            raise ServingError(f"Predict(model {self.model_name!r}) at {self.target}: an "
                               f"answer that does not fit the signature {signature!r}: {err}",
                               code=grpc.StatusCode.INTERNAL, details=str(err)) from None

    def _dtypes_of(self, signature):
        """{output alias: NumPy dtype, or None for strings} of a signature (cached)."""
        if signature not in self._output_dtypes:
            _, _, signature_map = self._signature_def_map()
            if signature not in signature_map.signature_def:
                raise ServingError(f"model {self.model_name!r} at {self.target} has no "
                                   f"signature {signature!r}",
                                   code=grpc.StatusCode.FAILED_PRECONDITION)
            outputs = signature_map.signature_def[signature].outputs
            self._output_dtypes[signature] = {
                alias: None if info.dtype == types_pb2.DT_STRING else numpy_dtype(info.dtype)
                for alias, info in outputs.items()}
        return self._output_dtypes[signature]

    def _signature_def_map(self):
        answer = self._request("GET", "/metadata", "GetModelMetadata")
        signature_map = json_format.ParseDict(answer["metadata"]["signature_def"],
                                              get_model_metadata_pb2.SignatureDefMap())
        spec = answer["model_spec"]
        return spec["name"], int(spec["version"]), signature_map

    def _statuses(self, timeout=None, retries=None):
        answer = self._request("GET", "", "GetModelStatus", timeout=timeout, retries=retries)
        return [{"version": int(status["version"]), "state": status["state"],
                 "error": status.get("status", {}).get("error_message", "")}
                for status in answer.get("model_version_status", [])]
