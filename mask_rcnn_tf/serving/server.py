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
lets the requests in flight finish (a grace period) before it exits. With --rest-port it also
answers TF Serving's REST API (rest_server.py). It sizes TensorFlow's thread pools for the cores
it may use and runs one model call at a time by default (default_threads). With batching
parameters it merges concurrent requests into batched runs as tensorflow_model_server's
--enable_batching does (batching.py). Not implemented: Classify, Regress, MultiInference, model
config reloads and polling for new versions.
"""

import concurrent.futures
import json
import logging
import os
import signal
import threading

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from mask_rcnn_tf.serving.servable import Servable, latest_version
from mask_rcnn_tf.serving.status import StatusError

logger = logging.getLogger("mask_rcnn_tf.serving")

_MAX_MESSAGE_BYTES = 2**31 - 1
SIGNATURE_DEF_FIELD = "signature_def"


def _servable_request(model_spec):
    """TF Serving's name for what a ModelSpec asks for, as in its NOT_FOUND messages."""
    if model_spec.HasField("version"):
        return f"Specific({model_spec.name}, {model_spec.version.value})"
    return f"Latest({model_spec.name})"


def check_model_spec(servable, request):
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


def model_metadata(servable, request):
    """GetModelMetadataResponse for a GetModelMetadataRequest; raises StatusError."""
    if not request.HasField("model_spec"):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          "GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Metadata field {field} is not supported")
    check_model_spec(servable, request)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(get_model_metadata_pb2.SignatureDefMap(
        signature_def=servable.signature_defs))
    return response


def model_status(servable, request):
    """GetModelStatusResponse for a GetModelStatusRequest: the servable is AVAILABLE from the
    moment the port is open; raises StatusError."""
    if not request.HasField("model_spec"):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    spec = request.model_spec
    if spec.name != servable.name:
        raise StatusError(grpc.StatusCode.NOT_FOUND,
                          f"Could not find any versions of model {spec.name}")
    if spec.HasField("version") and spec.version.value != servable.version:
        raise StatusError(grpc.StatusCode.NOT_FOUND,
                          f"Could not find version {spec.version.value} of model {spec.name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    status = response.model_version_status.add()
    status.version = servable.version
    status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return response


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
            check_model_spec(self._servable, request)
            return self._servable.predict(request)
        return _answer(context, handler)

    def GetModelMetadata(self, request, context):  # noqa: N802 (gRPC method name)
        return _answer(context, lambda: model_metadata(self._servable, request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus for one servable, which is AVAILABLE from the moment the port is open."""

    def __init__(self, servable):
        self._servable = servable

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC method name)
        return _answer(context, lambda: model_status(self._servable, request))


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


def default_threads():
    """(intra-op, inter-op) threads for the cores this process may use.

    One model run at a time (Servable's max_concurrent_runs) spreads each op over every core,
    and one inter-op thread runs one op at a time: with two, two ops each spread over every
    core ran side by side, twice as many threads as cores, and R-50-FPN answered 3% fewer
    requests per second at concurrency 1 and 4 (benchmarks/README.md, the served path).
    TensorFlow's defaults size both pools to the whole machine whatever the process's CPU
    affinity, and concurrent requests then multiply the threads fighting for the same cores.
    """
    return len(os.sched_getaffinity(0)), 1


def configure_threads(intra_op_threads=None, inter_op_threads=None):
    """Sets TensorFlow's thread pools; must run before TensorFlow runs any op (model load).

    Args:
        intra_op_threads, inter_op_threads: int, or None for default_threads()'s.

    Returns:
        (int, int) the sizes set.

    Raises:
        ValueError: a size under 1.
    """
    import tensorflow as tf  # The server module runs models; the client never imports it.

    intra_default, inter_default = default_threads()
    intra = intra_default if intra_op_threads is None else intra_op_threads
    inter = inter_default if inter_op_threads is None else inter_op_threads
    if intra < 1 or inter < 1:
        raise ValueError(f"--intra-op-threads and --inter-op-threads must be at least 1, got "
                         f"{intra} and {inter}")
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return intra, inter


def serve(model_base_path, model_name, host="127.0.0.1", port=8500, max_workers=8,
          grace_seconds=10.0, rest_port=None, intra_op_threads=None, inter_op_threads=None,
          max_concurrent_runs=1, batching=None):
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
        rest_port: int, also answer TF Serving's REST API there (rest_server.py); None: gRPC
            only; 0 picks a free port (logged).
        intra_op_threads, inter_op_threads: int thread pool sizes; None: default_threads().
        max_concurrent_runs: int, model runs at once (more requests queue).
        batching: batching_parameters.BatchingParameters to merge concurrent requests into
            batched runs; None: each request runs alone.
    """
    from mask_rcnn_tf.serving.rest_server import start_rest_server

    if max_concurrent_runs < 1:
        raise ValueError(f"--max-concurrent-runs must be at least 1, got {max_concurrent_runs}")
    intra, inter = configure_threads(intra_op_threads, inter_op_threads)
    logger.info("TensorFlow threads: %d intra-op, %d inter-op; %d model run(s) at once", intra,
                inter, max_concurrent_runs)
    if batching is not None:
        logger.info("batching requests: %s", batching)
    version, path = latest_version(model_base_path)
    servable = Servable(model_name, version, path, max_concurrent_runs=max_concurrent_runs,
                        batching=batching)
    logger.info("ran %d warm-up requests", servable.warm_up())
    server, bound_port = start_server(servable, host, port, max_workers)
    rest_server = None
    if rest_port is not None:
        try:
            rest_server, bound_rest_port = start_rest_server(servable, host, rest_port)
        except OSError:
            server.stop(None)
            raise
        logger.info("REST API on %s:%d", host, bound_rest_port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info("serving model %r version %d from %s on %s:%d", model_name, version, path, host,
                bound_port)
    try:
        stop.wait()
        logger.info("shutting down (grace %.1f s)", grace_seconds)
        if rest_server is not None:
            rest_server.shutdown()
        server.stop(grace_seconds).wait()
        servable.close()
        if servable.batcher is not None:
            logger.info("batches run, {images: batches}: %s",
                        json.dumps(dict(sorted(servable.batcher.batch_sizes.items()))))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
