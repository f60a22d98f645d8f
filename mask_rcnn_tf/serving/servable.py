"""One loaded SavedModel version and its Predict logic, as tensorflow_model_server runs it.

Checks follow TF Serving's order and status codes (servables/tensorflow/predict_util.cc):
signature key (FAILED_PRECONDITION), input aliases (INVALID_ARGUMENT), tensor parsing
(INVALID_ARGUMENT), then the run itself, whose TensorFlow error keeps its own code (a corrupt
image is INVALID_ARGUMENT from the decode op). Where tensorflow_model_server only fails deep in the
graph, this server checks up front and says so in a readable line: dtype and rank against the
signature, and an empty batch (TF Serving hands it to the graph, whose ops decide).
"""

import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from mask_rcnn_tf.serving.batching import Batcher
from mask_rcnn_tf.serving.status import StatusError
from mask_rcnn_tf.serving.tensors import dtype_name, make_ndarray, make_tensor_proto, shape_of

DEFAULT_SIGNATURE_KEY = "serving_default"
_TRACE_HEADERS = ("Graph execution error", "Detected at node", "<stack traces", "Node:")


def latest_version(base_path):
    """The highest numeric version folder under a TF Serving model base path.

    Args:
        base_path: str or os.PathLike, the folder holding version folders 1/, 2/, ...; other
            entries (an export's hidden temporary folder) are ignored, as TF Serving does.

    Returns:
        (int version, str path of the version folder).

    Raises:
        FileNotFoundError: base_path is missing, or its latest version has no saved_model.pb.
        ValueError: no numeric version folder.
    """
    base_path = os.fspath(base_path)
    if not os.path.isdir(base_path):
        raise FileNotFoundError(f"model base path {base_path!r} is not a folder")
    versions = [int(name) for name in os.listdir(base_path)
                if name.isdigit() and os.path.isdir(os.path.join(base_path, name))]
    if not versions:
        raise ValueError(f"model base path {base_path!r} has no version folder (1/, 2/, ...)")
    path = os.path.join(base_path, str(max(versions)))
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"{path}: no saved_model.pb in the latest version folder")
    return max(versions), path


class Servable:
    """A SavedModel version loaded for serving; predict() may run from many threads at once.

    Args:
        name: str, the model name clients ask for.
        version: int.
        path: str, the version folder (saved_model.pb, variables/).
        max_concurrent_runs: int, model runs at once; further requests wait their turn. Each
            run already uses every intra-op thread, so two at once only share the cores and
            thrash their caches (server.py: default_threads).
        batching: batching_parameters.BatchingParameters to merge concurrent requests into
            batched runs (tensorflow_model_server's --enable_batching), or None to run each
            request alone. min(num_batch_threads, max_concurrent_runs) batches run at once.
    """

    def __init__(self, name, version, path, max_concurrent_runs=1, batching=None):
        self.name = name
        self.version = version
        self.path = path
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        # The SignatureDefs exactly as stored: GetModelMetadata returns these, as TF Serving does.
        self.signature_defs = dict(saved_model.meta_graphs[0].signature_def)
        # The loaded root owns the variables: kept alive so the signature functions stay valid.
        self._loaded = tf.saved_model.load(path)
        self._functions = dict(self._loaded.signatures)
        self._run_slots = threading.BoundedSemaphore(max_concurrent_runs)
        self.batcher = None
        if batching is not None:
            threads = min(batching.num_batch_threads or max_concurrent_runs, max_concurrent_runs)
            self.batcher = Batcher(self._run, batching, self._run_slots, num_threads=threads)

    def close(self):
        """Stops the batch threads, if any: queued requests fail with UNAVAILABLE, running
        batches finish (server.py calls it after the grace period)."""
        if self.batcher is not None:
            self.batcher.close()

    def warm_up(self):
        """Runs the version's warm-up requests, as tensorflow_model_server does before serving.

        Reads assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog) if present.

        Returns:
            int, the number of requests run.

        Raises:
            ValueError: a record that is not a Predict log, or one that fails (a failing warm-up
                fails the load in tensorflow_model_server too); the message names the record.
        """
        path = os.path.join(self.path, "assets.extra", "tf_serving_warmup_requests")
        if not os.path.isfile(path):
            return 0
        count = 0
        for count, record in enumerate(tf.data.TFRecordDataset(path), start=1):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if not log.HasField("predict_log"):
                raise ValueError(f"{path}: warm-up record {count} is a {log.WhichOneof('log_type')}"
                                 f", only Predict logs are supported")
            try:
                self.predict(log.predict_log.request)
            except StatusError as err:
                raise ValueError(f"{path}: warm-up record {count} failed: {err.code.name}: "
                                 f"{err.message}") from None
        return count

    def predict(self, request):
        """Runs one PredictRequest whose model_spec was already matched to this servable.

        Args:
            request: tensorflow_serving.apis.predict_pb2.PredictRequest.

        Returns:
            PredictResponse: model_spec (name, version, resolved signature_name) and the
            requested outputs in TensorProto typed fields, as tensorflow_model_server sends them.

        Raises:
            StatusError: with TF Serving's status code and a one-line message.
        """
        outputs = self.predict_arrays(request.model_spec.signature_name, request.inputs,
                                      request.output_filter, _proto_array)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = (request.model_spec.signature_name
                                              or DEFAULT_SIGNATURE_KEY)
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(make_tensor_proto(array, use_tensor_content=False))
        return response

    def predict_arrays(self, signature_name, inputs, output_filter, parse):
        """Runs one request given as per-alias values of any encoding (gRPC or REST).

        Args:
            signature_name: str; "" for serving_default.
            inputs: mapping from input alias to the value sent for it.
            output_filter: sequence of output aliases to return; empty for all.
            parse: parse(alias, value, tensor_info) -> (NumPy array, DataType enum of what was
                sent); raises StatusError for a value that does not parse.

        Returns:
            dict from output alias to NumPy array, in output order.

        Raises:
            StatusError: with TF Serving's status code and a one-line message.
        """
        key, signature = self.signature(signature_name)
        arrays = self._checked_inputs(key, signature, inputs, parse)
        output_names = self._output_names(signature, output_filter)
        # Requests with other outputs go to other batches, as TF Serving keys its queues.
        batch_key = (key, tuple(sorted(output_names)))
        if self.batcher is not None:
            outputs = self.batcher.submit(batch_key, arrays)
        else:
            with self._run_slots:
                outputs = self._run(batch_key, arrays)
        return {name: outputs[name] for name in output_names}

    def _run(self, batch_key, arrays):
        """Runs signature batch_key[0] on NumPy inputs; returns the outputs in batch_key[1]."""
        key, output_names = batch_key
        dtypes = {alias: info.dtype for alias, info in self.signature_defs[key].inputs.items()}
        try:
            outputs = self._functions[key](**{
                alias: tf.constant(array, tf.dtypes.as_dtype(dtypes[alias]))
                for alias, array in arrays.items()})
        except tf.errors.OpError as err:
            raise StatusError(_status_code(err.error_code), _error_line(err.message)) from None
        return {name: np.asarray(outputs[name]) for name in output_names}

    def signature(self, signature_name):
        """(key, SignatureDef) of a servable signature; "" names serving_default.

        Raises:
            StatusError: FAILED_PRECONDITION for a signature the model does not have.
        """
        key = signature_name or DEFAULT_SIGNATURE_KEY
        if key not in self._functions:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION,
                              f'Serving signature key "{key}" not found.')
        return key, self.signature_defs[key]

    def _checked_inputs(self, key, signature, request_inputs, parse):
        """Request tensors as NumPy arrays checked against the signature, keyed by input alias."""
        sent, expected = set(request_inputs), set(signature.inputs)
        if len(sent) != len(expected):
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({_braces(sent)}) != len({_braces(expected)}). Sent extra: "
                f"{_braces(sent - expected)}. Missing but required: {_braces(expected - sent)}.")
        inputs = {}
        for alias, info in signature.inputs.items():
            if alias not in request_inputs:
                raise StatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Signature input alias: {alias}(feed name: {info.name}) not found in "
                    f"request and no default value provided. Inputs expected to be in the "
                    f"request {_braces(sent)}, or default input alias set: ")
            array, data_type = parse(alias, request_inputs[alias], info)
            expected_shape = shape_of(info.tensor_shape)
            if data_type != info.dtype or not _shape_fits(array.shape, expected_shape):
                raise StatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{alias}' of signature '{key}' must be {dtype_name(info.dtype)} "
                    f"{_shape_text(expected_shape)}, got {dtype_name(data_type)} "
                    f"{list(array.shape)}")
            if array.ndim and array.shape[0] == 0:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{alias}' of signature '{key}' is an empty batch: "
                                  f"send at least one image")
            inputs[alias] = array
        return inputs

    @staticmethod
    def _output_names(signature, output_filter):
        """The outputs to return: all, or those in the request's output_filter."""
        if not output_filter:
            return sorted(signature.outputs)
        for name in output_filter:
            if name not in signature.outputs:
                raise StatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {name} Outputs expected to "
                    f"be in the set {_braces(signature.outputs)}.")
        if len(set(output_filter)) != len(output_filter):
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"duplicate output tensor alias in {list(output_filter)}")
        return list(output_filter)


def _proto_array(alias, proto, info):
    """A gRPC request's TensorProto as (NumPy array, its DataType)."""
    try:
        return make_ndarray(proto), proto.dtype
    except ValueError as err:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"tensor parsing error: {alias} ({err})") from None


def _braces(names):
    return "{" + ",".join(sorted(names)) + "}"


def _shape_fits(shape, expected):
    if expected is None:
        return True
    return len(shape) == len(expected) and all(
        want in (-1, size) for size, want in zip(shape, expected))


def _shape_text(shape):
    if shape is None:
        return "of any shape"
    return "[" + ", ".join("?" if size < 0 else str(size) for size in shape) + "]"


def _status_code(error_code):
    """grpc.StatusCode of a TensorFlow error code (TensorFlow numbers its codes as gRPC does)."""
    for code in grpc.StatusCode:
        if code.value[0] == error_code:
            return code
    return grpc.StatusCode.UNKNOWN


def _error_line(message):
    """The line of a TensorFlow error that says what went wrong.

    Errors from a tf.function read "Graph execution error:", "Detected at node ...", a stack
    trace (indented lines), then the op's own message, then "[[{{node ...}}]] [Op:...]".
    """
    lines = []
    for line in str(message).splitlines():
        text = re.sub(r"\s*\[\[\{\{.*|\s*\[Op:[^\]]*\]", "", line).strip()
        if text and not line[:1].isspace() and not text.startswith(_TRACE_HEADERS):
            lines.append(text)
    return lines[-1] if lines else "model run failed"
