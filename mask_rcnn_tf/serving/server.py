"""Development gRPC server with TF Serving's API: `mask-rcnn serve`.

Production serving is tensorflow_model_server (the tensorflow/serving image, serving/README.md);
it cannot be installed here, so development and tests use this stand-in, which the same client
talks to. It implements PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus) with the servicer classes generated in tensorflow-serving-api, serves the highest
version under a model base path, and answers as tensorflow_model_server does where a client can
tell: the model_spec echoed in responses, outputs in TensorProto typed fields, and its status
codes and messages (NOT_FOUND for an unknown model or version, FAILED_PRECONDITION for an unknown
signature, INVALID_ARGUMENT for a bad input; see servable.py). Like tensorflow_model_server it
loads the model and replays its warm-up requests before it opens its port, allows messages up to
2 GiB, runs requests in parallel (the loaded functions are thread-safe), and on SIGTERM or SIGINT
lets the requests in flight finish (a grace period) before it exits. Not implemented: Classify,
Regress, MultiInference, REST, request batching, model config reloads and polling for new
versions.
"""

import concurrent.futures
import logging
import signal
import threading

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from mask_rcnn_tf.serving.servable import Servable, StatusError, latest_version

logger = logging.getLogger("mask_rcnn_tf.serving")

_MAX_MESSAGE_BYTES = 2**31 - 1
_SIGNATURE_DEF_FIELD = "signature_def"


def _servable_request(model_spec):
    """TF Serving's name for what a ModelSpec asks for, as in its NOT_FOUND messages."""
    if model_spec.HasField("version"):
        return f"Specific({model_spec.name}, {model_spec.version.value})"
    return f"Latest({model_spec.name})"


def _check_model_spec(servable, request):
    """Raises StatusError unless the request's model_spec names the loaded servable."""
    if not request.HasField("model_spec"):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    spec = request.model_spec
    if spec.version_label:
        # The dev server has no model config, so no version labels.
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Unrecognized servable version label: {spec.version_label}")
    if spec.name != servable.name or (spec.HasField("version")
                                      and spec.version.value != servable.version):
        raise StatusError(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: {_servable_request(spec)}")


def _answer(context, handler):
    """Runs handler(); a StatusError becomes the call's status, anything else INTERNAL."""
    try:
        return handler()
    except StatusError as err:
        context.abort(err.code, err.message)
    except Exception as err:  # A bug must reach the client as a status, not hang the call.
        logger.exception("request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata for one servable."""

    def __init__(self, servable):
        self._servable = servable

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        def handler():
            _check_model_spec(self._servable, request)
            return self._servable.predict(request)
        return _answer(context, handler)

    def GetModelMetadata(self, request, context):  # noqa: N802 (gRPC method name)
        def handler():
            if not request.HasField("model_spec"):
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            if not request.metadata_field:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  "GetModelMetadataRequest must specify at least one "
                                  "metadata_field")
            for field in request.metadata_field:
                if field != _SIGNATURE_DEF_FIELD:
                    raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"Metadata field {field} is not supported")
            _check_model_spec(self._servable, request)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self._servable.name
            response.model_spec.version.value = self._servable.version
            response.metadata[_SIGNATURE_DEF_FIELD].Pack(get_model_metadata_pb2.SignatureDefMap(
                signature_def=self._servable.signature_defs))
            return response
        return _answer(context, handler)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus for one servable, which is AVAILABLE from the moment the port is open."""

    def __init__(self, servable):
        self._servable = servable

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC method name)
        def handler():
            if not request.HasField("model_spec"):
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            spec = request.model_spec
            if spec.name != self._servable.name:
                raise StatusError(grpc.StatusCode.NOT_FOUND,
                                  f"Could not find any versions of model {spec.name}")
            if spec.HasField("version") and spec.version.value != self._servable.version:
                raise StatusError(grpc.StatusCode.NOT_FOUND,
                                  f"Could not find version {spec.version.value} of model "
                                  f"{spec.name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            status = response.model_version_status.add()
            status.version = self._servable.version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            return response
        return _answer(context, handler)


def start_server(servable, host="127.0.0.1", port=8500, max_workers=8):
    """Starts serving `servable` on host:port in background threads.

    Args:
        servable: Servable.
        host: str, address to bind ("0.0.0.0" for every interface).
        port: int; 0 picks a free port.
        max_workers: int, requests handled at once.

    Returns:
        (grpc.Server, int bound port).

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                              thread_name_prefix="serving"),
        options=[("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                 # A second server on the same port must fail, not share it.
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(servable), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(servable), server)
    address = f"{host}:{port}"
    try:
        bound_port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise OSError(f"cannot listen on {address}: {err}") from None
    if not bound_port:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, bound_port


def serve(model_base_path, model_name, host="127.0.0.1", port=8500, max_workers=8,
          grace_seconds=10.0):
    """Loads the latest version under model_base_path, runs its warm-up requests, and serves it
    until SIGTERM or SIGINT.

    Must run in the main thread (it installs the signal handlers).

    Args:
        model_base_path: str, folder of numeric version folders.
        model_name: str, the name clients put in model_spec.name.
        host: str, address to bind.
        port: int; 0 picks a free port (logged).
        max_workers: int, requests handled at once.
        grace_seconds: float, time given to requests in flight on shutdown.
    """
    version, path = latest_version(model_base_path)
    servable = Servable(model_name, version, path)
    logger.info("ran %d warm-up requests", servable.warm_up())
    server, bound_port = start_server(servable, host, port, max_workers)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info("serving model %r version %d from %s on %s:%d", model_name, version, path, host,
                bound_port)
    try:
        stop.wait()
        logger.info("shutting down (grace %.1f s)", grace_seconds)
        server.stop(grace_seconds).wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
