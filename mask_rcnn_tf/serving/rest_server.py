"""TF Serving's REST API for the development server: `mask-rcnn serve --rest-port`.

Speaks tensorflow_model_server's JSON on the paths it serves (werkzeug does the HTTP):

    GET  /v1/models/NAME[/versions/V]            model status
    GET  /v1/models/NAME[/versions/V]/metadata   signature defs
    POST /v1/models/NAME[/versions/V]:predict    {"signature_name": ..., "instances": [...]}
                                                 (row format) or {"inputs": ...} (columnar)

Row format answers {"predictions": [one object of outputs per row]} (or one value per row for a
single output), columnar {"outputs": {alias: value}}; binary strings go as {"b64": ...}
(json_tensors.py). Failures answer {"error": "<message>"} with the HTTP status TF Serving maps
the gRPC code to; the checks and messages are the gRPC server's (server.py, servable.py), plus
JSON parsing. Not implemented: :classify, :regress, version labels.
"""

import json
import logging
import re
import threading

import grpc
import werkzeug.serving
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     predict_pb2)
from werkzeug.wrappers import Request, Response

from mask_rcnn_tf.serving.json_tensors import BYTES_SUFFIX, from_json, to_json
from mask_rcnn_tf.serving.status import StatusError
from mask_rcnn_tf.serving.server import (SIGNATURE_DEF_FIELD, check_model_spec, model_metadata,
                                         model_status)
from mask_rcnn_tf.serving.tensors import numpy_dtype

logger = logging.getLogger("mask_rcnn_tf.serving")

# tensorflow_model_server's ToHTTPStatusCode (util/net_http); codes not listed answer 500.
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?:(?P<metadata>/metadata)|:(?P<verb>predict))?$")


def _invalid(message):
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message)


class RestApp:
    """The WSGI application answering TF Serving's REST API for one servable."""

    def __init__(self, servable):
        self._servable = servable

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            status, body = 200, self._dispatch(request)
        except StatusError as err:
            status, body = HTTP_STATUS.get(err.code, 500), {"error": err.message}
        except Exception as err:  # A bug must reach the client as an error, not a hang.
            logger.exception("REST request failed")
            status, body = 500, {"error": f"{type(err).__name__}: {err}"}
        response = Response(json.dumps(body), status=status, mimetype="application/json")
        return response(environ, start_response)

    def _dispatch(self, request):
        match = _PATH.match(request.path)
        wanted = "POST" if match and match["verb"] else "GET"
        if not match or request.method != wanted:
            raise StatusError(grpc.StatusCode.NOT_FOUND,
                              f"Malformed request: {request.method} {request.path}")
        spec = dict(name=match["name"])
        if match["version"] is not None:
            spec["version"] = int(match["version"])  # JSON of an Int64Value wrapper
        if match["verb"]:
            return self._predict(spec, request.get_data())
        if match["metadata"]:
            return self._metadata(spec)
        return self._status(spec)

    def _status(self, spec):
        request = json_format.ParseDict({"model_spec": spec},
                                        get_model_status_pb2.GetModelStatusRequest())
        response = model_status(self._servable, request)
        return {"model_version_status": [
            {"version": str(status.version),
             "state": get_model_status_pb2.ModelVersionStatus.State.Name(status.state),
             "status": {"error_code": "OK", "error_message": status.status.error_message}}
            for status in response.model_version_status]}

    def _metadata(self, spec):
        request = json_format.ParseDict(
            {"model_spec": spec, "metadata_field": [SIGNATURE_DEF_FIELD]},
            get_model_metadata_pb2.GetModelMetadataRequest())
        response = model_metadata(self._servable, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                               "version": str(response.model_spec.version.value)},
                "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True)}}

    def _predict(self, spec, data):
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise _invalid(f"JSON Parse error: {err}") from None
        if not isinstance(body, dict):
            raise _invalid("JSON Value: the request body must be a JSON object")
        if ("instances" in body) == ("inputs" in body):
            raise _invalid("Missing 'inputs' or 'instances' key" if "inputs" not in body else
                           "Not allowed to have both 'inputs' and 'instances' keys")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise _invalid("'signature_name' key must be a string value")
        check_model_spec(self._servable, json_format.ParseDict(
            {"model_spec": spec}, predict_pb2.PredictRequest()))
        _, signature = self._servable.signature(signature_name)
        aliases = sorted(signature.inputs)
        row_format = "instances" in body
        inputs = (_rows_to_columns(body["instances"], aliases) if row_format
                  else _columns(body["inputs"], aliases))
        outputs = self._servable.predict_arrays(signature_name, inputs, (), _json_array)
        if not row_format:
            values = {alias: to_json(array, alias.endswith(BYTES_SUFFIX))
                      for alias, array in outputs.items()}
            return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
        return {"predictions": _columns_to_rows(outputs)}


def _json_array(alias, value, info):
    """(array, DataType) of a JSON value sent for signature input `info` (servable parse)."""
    dtype = None if info.dtype == types_pb2.DT_STRING else numpy_dtype(info.dtype)
    try:
        return from_json(value, dtype), info.dtype
    except ValueError as err:
        raise _invalid(f"input '{alias}': {err}") from None


def _columns(inputs, aliases):
    """Columnar "inputs": a bare value for a one-input signature, else {alias: value}."""
    if len(aliases) == 1 and not (isinstance(inputs, dict) and set(inputs) == set(aliases)):
        return {aliases[0]: inputs}
    if not isinstance(inputs, dict):
        raise _invalid("'inputs' must be an object of named inputs for a signature with "
                       f"{len(aliases)} inputs")
    return inputs


def _rows_to_columns(instances, aliases):
    """Row "instances": a list of values (one-input signature) or of {alias: value} objects."""
    if not isinstance(instances, list) or not instances:
        raise _invalid("'instances' must be a non-empty JSON list")
    named = isinstance(instances[0], dict) and set(instances[0]) != {"b64"}
    if not named:
        if len(aliases) != 1:
            raise _invalid(f"instances must be objects of the signature's {len(aliases)} "
                           f"named inputs")
        return {aliases[0]: instances}
    columns = {}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != set(instances[0]):
            raise _invalid(f"Failed to process element: {index} of 'instances' list: every "
                           f"instance must name the same inputs {sorted(instances[0])}")
        for alias, value in instance.items():
            columns.setdefault(alias, []).append(value)
    return columns


def _columns_to_rows(outputs):
    """Row-format predictions: split every output along its batch axis."""
    batch = {alias: array.shape[0] if array.ndim else None for alias, array in outputs.items()}
    sizes = set(batch.values())
    if len(sizes) != 1 or None in sizes:
        raise _invalid(f"Tensor name: {sorted(batch)[0]} has inconsistent batch size: "
                       f"{batch} expecting one batch size for the row format; use 'inputs'")
    rows = [{alias: to_json(array[i], alias.endswith(BYTES_SUFFIX))
             for alias, array in outputs.items()}
            for i in range(sizes.pop())]
    if len(outputs) == 1:
        return [next(iter(row.values())) for row in rows]
    return rows


def start_rest_server(servable, host="127.0.0.1", port=8501):
    """Starts answering the REST API for `servable` on host:port in a background thread.

    Returns:
        (server with shutdown(), int bound port).

    Raises:
        OSError: the address cannot be bound.
    """
    # werkzeug logs every request at INFO; tensorflow_model_server logs none.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = werkzeug.serving.make_server(host, port, RestApp(servable), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="rest", daemon=True)
    thread.start()
    return server, server.server_port
