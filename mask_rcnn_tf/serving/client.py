"""gRPC client for a Mask R-CNN served by tensorflow_model_server (or `mask-rcnn serve`).

Built on the tensorflow-serving-api stubs, grpc and NumPy; it imports no model code and calls no
TensorFlow API, so an application needs neither the model nor a model-sized install to use it.

Wire format. With the default signature, "serving_default", every image travels as encoded
bytes (a file's own bytes, or a NumPy array encoded losslessly to PNG here): one request may mix
image sizes, and JPEG files go as they are, far smaller than pixels. With
signature="serving_tensor" the images travel as one uint8 [B, H, W, 3] tensor (raw pixels, no
decode on the server), so the images of one request must share a size.

Calls. Every call has a deadline (`timeout` seconds per attempt). A call that fails with
UNAVAILABLE (no server yet, a restart, a connection reset) is retried `retries` times with
exponential backoff; every other failure raises at once, as a ServingError subclass (errors.py).
The channel's message-size limits are raised to `max_message_mb`, since a batch of images or of
full-image masks is far over gRPC's default 4 MB.

Keypoints. A model exported with the keypoint branch also returns detection_keypoints; each
Detection then carries its keypoints (x, y, score) in the original image's pixels, in COCO's
pixel-index frame (pixel i's centre at i), and their names: `named_keypoints()` gives
{name: (x, y, score)}; `keypoint_names()` and `skeleton()` give the model's names and limbs.

Shapes: B images in a request, N detection slots per image, M mask side, Kp keypoints, S skeleton
limbs, h x w one image.
"""

import logging
import os
import random
import time

import grpc
import numpy as np
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from mask_rcnn_tf.serving.detections import detections_from_outputs
from mask_rcnn_tf.serving.errors import DeadlineExceededError, ServingError, error_from_rpc
from mask_rcnn_tf.serving.images import encode_image, image_pixels
from mask_rcnn_tf.serving.tensors import dtype_name, make_ndarray, make_tensor_proto, shape_of

DEFAULT_SIGNATURE = "serving_default"
TENSOR_SIGNATURE = "serving_tensor"
INPUT_ALIAS = "images"
# The export's signature for class names (mask_rcnn_tf/export/serving_module.py): a dummy int32
# [n] input, since TF Serving's Predict needs one, and a string [n, K] output, class 1 first;
# with keypoints also string [n, Kp] names and int32 [n, S, 2] limbs (1-based keypoint pairs).
CLASS_NAMES_SIGNATURE = "metadata"
CLASS_NAMES_INPUT = "unused"
CLASS_NAMES_OUTPUT = "class_names"
KEYPOINT_NAMES_OUTPUT = "keypoint_names"
SKELETON_OUTPUT = "skeleton"

_BACKOFF_CAP_SECONDS = 4.0

logger = logging.getLogger("mask_rcnn_tf.serving")


class MaskRCNNClient:
    """Talks to one model on one TF Serving server. Thread-safe: share one client among threads.

    Args:
        target: str, "host:port" of the server's gRPC port (8500 by convention).
        model_name: str, the model's name in the server's model config.
        signature: str, DEFAULT_SIGNATURE (encoded images) or TENSOR_SIGNATURE (uint8 pixels).
        version: int or None; None asks for the server's latest version.
        timeout: float, seconds allowed to each call attempt.
        max_message_mb: float, send and receive size limit of the channel, in MiB.
        retries: int, further attempts after an UNAVAILABLE failure.
        backoff: float, seconds before the first retry; doubles with each retry (capped at 4 s),
            with up to 50% random jitter so many clients do not retry in step.
        max_batch_size: int, images per Predict request; longer lists are split.
        mask_threshold: float, probability from which a pixel belongs to a pasted mask.
    """

    def __init__(self, target, model_name, signature=DEFAULT_SIGNATURE, version=None,
                 timeout=30.0, max_message_mb=256, retries=3, backoff=0.1, max_batch_size=8,
                 mask_threshold=0.5):
        if not model_name:
            raise ValueError("MaskRCNNClient: model_name must not be empty")
        if timeout <= 0 or max_message_mb <= 0 or max_batch_size < 1 or retries < 0:
            raise ValueError(f"MaskRCNNClient: need timeout > 0, max_message_mb > 0, "
                             f"max_batch_size >= 1, retries >= 0; got {timeout}, "
                             f"{max_message_mb}, {max_batch_size}, {retries}")
        self.target = target
        self.model_name = model_name
        self.signature = signature
        self.version = version
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_batch_size = int(max_batch_size)
        self.mask_threshold = float(mask_threshold)
        self._cached_names = None
        self._connect(int(max_message_mb * 1024 * 1024))

    def _connect(self, limit):
        """Opens the transport; limit: int, largest message in bytes."""
        self._channel = grpc.insecure_channel(self.target, options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self):
        """Closes the channel; calls after this fail."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def predict(self, images, min_score=0.0):
        """Detects instances in each image.

        Args:
            images: list of images, each a file path (str or os.PathLike), encoded PNG / JPEG
                bytes, or a NumPy uint8 [h, w, 3] RGB array.
            min_score: float, detections scoring lower are left out.

        Returns:
            list with one list of Detection per image, in input order, highest score first.

        Raises:
            ServingError (a subclass per failure, see errors.py); ValueError or TypeError for an
            image that cannot be sent; FileNotFoundError for a missing file.
        """
        results = []
        for outputs in self._predict_batches(images):
            class_names = self.class_names()
            keypoint_names = self.keypoint_names()
            for index in range(len(outputs["num_detections"])):
                results.append(detections_from_outputs(
                    outputs, index, class_names, keypoint_names, min_score, self.mask_threshold))
        return results

    def predict_outputs(self, images):
        """The model's raw outputs for a list of images, one Predict request per batch.

        Args:
            images: list of images, as for predict().

        Returns:
            dict from output name (num_detections, detection_boxes, ...) to a NumPy array whose
            first axis runs over all images. Arrays of several requests are joined along that
            axis; per-image arrays padded to a batch size (full-image masks) are zero-padded to
            the largest size of all requests.
        """
        batches = list(self._predict_batches(images))
        if not batches:
            raise ValueError("predict_outputs: no images")
        if len(batches) == 1:
            return batches[0]
        return {name: _concatenate_padded([batch[name] for batch in batches])
                for name in batches[0]}

    def class_names(self):
        """The model's class names, class 1 first, or None if it has none to give (cached).

        Read from the export's CLASS_NAMES_SIGNATURE. A model without it, or a server that
        cannot run it (FAILED_PRECONDITION: e.g. batching that needs a batch dimension on every
        output), gives None with a logged warning: detections then carry class ids only.
        """
        return self._names()[CLASS_NAMES_OUTPUT]

    def keypoint_names(self):
        """The model's Kp keypoint names (list of str, in the order of Detection.keypoints), or
        None for a model without keypoints or without names to give (cached; read with the
        class names, see class_names())."""
        return self._names()[KEYPOINT_NAMES_OUTPUT]

    def skeleton(self):
        """The model's limbs, a list of 1-based (a, b) keypoint pairs as COCO's `skeleton`, or
        None for a model without keypoints or without names to give (cached; read with the
        class names, see class_names())."""
        return self._names()[SKELETON_OUTPUT]

    def _names(self):
        """{CLASS_NAMES_OUTPUT, KEYPOINT_NAMES_OUTPUT, SKELETON_OUTPUT: value or None}, from one
        call of the metadata signature, made on first use."""
        if self._cached_names is None:
            names = dict.fromkeys((CLASS_NAMES_OUTPUT, KEYPOINT_NAMES_OUTPUT, SKELETON_OUTPUT))
            try:
                outputs = self._predict_tensor(CLASS_NAMES_SIGNATURE, CLASS_NAMES_INPUT,
                                               np.zeros([1], np.int32))
            except ServingError as err:
                if err.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                logger.warning("no class or keypoint names: %s", err)
            else:
                # Row 0 of [1, ...]: one row per request row.
                for key in (CLASS_NAMES_OUTPUT, KEYPOINT_NAMES_OUTPUT):
                    if key in outputs:
                        names[key] = [name.decode("utf-8") for name in outputs[key].reshape(-1)]
                if SKELETON_OUTPUT in outputs:
                    names[SKELETON_OUTPUT] = [(int(a), int(b)) for a, b in
                                              outputs[SKELETON_OUTPUT].reshape(-1, 2)]
            self._cached_names = names
        return self._cached_names

    def metadata(self):
        """The model's signatures, from GetModelMetadata.

        Returns:
            dict with "model_name" (str), "version" (int) and "signatures": {signature key:
            {"method_name": str, "inputs": {alias: {"dtype": str, "shape": list of int (-1
            unknown) or None}}, "outputs": {alias: {...}}}}.
        """
        model_name, version, signature_map = self._signature_def_map()

        def tensors(infos):
            return {alias: {"dtype": dtype_name(info.dtype), "shape": shape_of(info.tensor_shape)}
                    for alias, info in sorted(infos.items())}

        return {
            "model_name": model_name,
            "version": version,
            "signatures": {key: {"method_name": sig.method_name, "inputs": tensors(sig.inputs),
                                 "outputs": tensors(sig.outputs)}
                           for key, sig in sorted(signature_map.signature_def.items())},
        }

    def _signature_def_map(self):
        """(model name, int version, SignatureDefMap) from GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_model_spec(request.model_spec)
        response = self._call(self._predict_stub.GetModelMetadata, request, "GetModelMetadata")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return response.model_spec.name, response.model_spec.version.value, signature_map

    def model_status(self):
        """The state of each version the server knows, from GetModelStatus.

        Returns:
            list of dicts {"version": int, "state": "AVAILABLE" / "LOADING" / ..., "error": str
            (empty when the version is healthy)}.
        """
        return self._statuses()

    def _statuses(self, timeout=None, retries=None):
        """model_status() from one GetModelStatus call (timeout, retries as in _call)."""
        response = self._call(self._model_stub.GetModelStatus, self._status_request(),
                              "GetModelStatus", timeout=timeout, retries=retries)
        return [{"version": status.version,
                 "state": get_model_status_pb2.ModelVersionStatus.State.Name(status.state),
                 "error": status.status.error_message}
                for status in response.model_version_status]

    def wait_until_ready(self, timeout=60.0, poll_interval=0.25):
        """Polls GetModelStatus until a version is AVAILABLE.

        No server answering yet (UNAVAILABLE) and a model not known yet (NOT_FOUND: a server
        still reading its config) both count as "not ready yet".

        Args:
            timeout: float, seconds to wait in all.
            poll_interval: float, seconds between polls.

        Returns:
            int, the highest AVAILABLE version.

        Raises:
            DeadlineExceededError: not ready within `timeout`; the message says what was seen last.
            ServingError: a version failed to load (state END with an error), or another failure.
        """
        deadline = time.monotonic() + timeout
        last_seen = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"model {self.model_name!r} at {self.target} not ready after {timeout:g} s; "
                    f"last seen: {last_seen}", code=grpc.StatusCode.DEADLINE_EXCEEDED,
                    details=last_seen)
            try:
                statuses = self._statuses(timeout=min(self.timeout, remaining), retries=0)
            except ServingError as err:
                if err.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last_seen = f"{err.code.name}: {err.details}"
            else:
                states = {status["version"]: status for status in statuses}
                available = [version for version, status in states.items()
                             if status["state"] == "AVAILABLE"]
                if available:
                    return max(available)
                for version, status in states.items():
                    if status["state"] == "END" and status["error"]:
                        raise ServingError(
                            f"model {self.model_name!r} version {version} at {self.target} failed "
                            f"to load: {status['error']}", details=status["error"])
                last_seen = ", ".join(f"version {version} {status['state']}"
                                      for version, status in sorted(states.items()))
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))

    def _status_request(self):
        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_model_spec(request.model_spec)
        return request

    def _fill_model_spec(self, model_spec, signature=None):
        model_spec.name = self.model_name
        if self.version is not None:
            model_spec.version.value = int(self.version)
        if signature is not None:
            model_spec.signature_name = signature

    def _predict_request(self, signature):
        request = predict_pb2.PredictRequest()
        self._fill_model_spec(request.model_spec, signature)
        return request

    def _predict_batches(self, images):
        """Yields each request's outputs (dict name -> array) for `images` in batches."""
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) and \
                not (isinstance(images, np.ndarray) and images.ndim == 4):
            raise TypeError("predict: pass a list of images (paths, bytes or arrays), "
                            f"got a single {type(images).__name__}")
        images = list(images)
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start:start + self.max_batch_size]
            if self.signature == TENSOR_SIGNATURE:
                tensor = _stack_pixels([image_pixels(image, start + i)
                                        for i, image in enumerate(chunk)])
            else:
                tensor = np.array([encode_image(image, start + i)
                                   for i, image in enumerate(chunk)], dtype=object)
            yield self._predict_tensor(self.signature, INPUT_ALIAS, tensor)

    def _predict_tensor(self, signature, alias, array):
        """One Predict call with one input: {output alias: NumPy array} (strings as bytes)."""
        request = self._predict_request(signature)
        request.inputs[alias].CopyFrom(make_tensor_proto(array))
        response = self._call(self._predict_stub.Predict, request, "Predict")
        return {name: make_ndarray(proto) for name, proto in response.outputs.items()}

    def _call(self, method, request, name, timeout=None, retries=None):
        """Calls a stub method with a deadline, retrying UNAVAILABLE with backoff."""
        def attempt(seconds):
            try:
                return method(request, timeout=seconds)
            except grpc.RpcError as err:
                raise error_from_rpc(err, f"{name}(model {self.model_name!r})",
                                     self.target) from None
        return self._retrying(attempt, timeout, retries)

    def _retrying(self, attempt, timeout=None, retries=None):
        """attempt(timeout seconds), retried after a ServingError with code UNAVAILABLE, with
        exponential backoff and jitter; timeout and retries default to the client's."""
        retries = self.retries if retries is None else retries
        delay = self.backoff
        for tries_left in range(retries, -1, -1):
            try:
                return attempt(self.timeout if timeout is None else timeout)
            except ServingError as err:
                if err.code != grpc.StatusCode.UNAVAILABLE or not tries_left:
                    raise
            time.sleep(min(delay, _BACKOFF_CAP_SECONDS) * random.uniform(0.5, 1.0))
            delay *= 2


def _stack_pixels(pixels):
    sizes = sorted({image.shape[:2] for image in pixels})
    if len(sizes) > 1:
        raise ValueError(f"signature {TENSOR_SIGNATURE!r} sends one uint8 [B, H, W, 3] tensor, "
                         f"so the images of a request must share a size; got {sizes}. Use "
                         f"{DEFAULT_SIGNATURE!r}, which takes images of any size.")
    return np.stack(pixels)


def _concatenate_padded(arrays):
    """Joins arrays along axis 0, zero-padding the other axes to their largest size."""
    shape = np.max([array.shape for array in arrays], axis=0)
    padded = [np.pad(array, [(0, 0)] + [(0, int(size) - current) for size, current
                                        in zip(shape[1:], array.shape[1:])]) for array in arrays]
    return np.concatenate(padded)
