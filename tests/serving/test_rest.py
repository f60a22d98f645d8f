"""TF Serving's REST API through `mask-rcnn serve --rest-port` on a real export (the server of
test_serving_end_to_end.py): the REST client gives the gRPC client's detections, both JSON
formats, and tensorflow_model_server's HTTP statuses and error JSON for bad requests."""

import base64
import io
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

from mask_rcnn_tf.serving import (DeadlineExceededError, InvalidRequestError, MaskRCNNClient,
                                  MaskRCNNRestClient, ModelNotFoundError,
                                  ServerUnavailableError, SignatureNotFoundError)
from tests.serving.fake_model import free_port
from tests.serving.test_serving_end_to_end import (MODEL_NAME, REPO, exported,  # noqa: F401
                                                   rest_port, server)


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_rest_and_grpc_give_the_same_detections(exported, server, rest_port):  # noqa: F811
    _, encoded = exported
    target, _, _ = server
    with MaskRCNNClient(target, MODEL_NAME, max_batch_size=3) as grpc_client, \
            MaskRCNNRestClient(f"127.0.0.1:{rest_port}", MODEL_NAME, max_batch_size=3) as rest:
        assert rest.wait_until_ready(timeout=10) == 1
        assert rest.model_status() == grpc_client.model_status()
        assert rest.metadata() == grpc_client.metadata()
        assert rest.class_names() == grpc_client.class_names() == ["circle", "square", "triangle"]
        by_grpc, by_rest = grpc_client.predict_outputs(encoded), rest.predict_outputs(encoded)
        detections_grpc, detections_rest = grpc_client.predict(encoded), rest.predict(encoded)
    assert sorted(by_rest) == sorted(by_grpc) and by_grpc["num_detections"].sum() > 0
    for name, value in by_grpc.items():
        assert by_rest[name].dtype == value.dtype, name
        np.testing.assert_array_equal(by_rest[name], value, err_msg=name)
    # Pixels (serving_tensor) travel as nested JSON lists of uint8.
    same_size = [i for i, data in enumerate(encoded) if Image.open(io.BytesIO(data)).size
                 == Image.open(io.BytesIO(encoded[0])).size]
    pixels = [np.asarray(Image.open(io.BytesIO(encoded[i])).convert("RGB")) for i in same_size]
    with MaskRCNNClient(target, MODEL_NAME, signature="serving_tensor") as grpc_client, \
            MaskRCNNRestClient(f"127.0.0.1:{rest_port}", MODEL_NAME,
                               signature="serving_tensor") as rest:
        tensor_grpc, tensor_rest = grpc_client.predict_outputs(pixels), rest.predict_outputs(pixels)
    assert len(pixels) >= 2 and sorted(tensor_rest) == sorted(tensor_grpc)
    for name, value in tensor_grpc.items():
        np.testing.assert_array_equal(tensor_rest[name], value, err_msg=name)
    for found_grpc, found_rest in zip(detections_grpc, detections_rest):
        assert len(found_grpc) == len(found_rest)
        for a, b in zip(found_grpc, found_rest):
            assert (a.class_id, a.class_name, a.score) == (b.class_id, b.class_name, b.score)
            np.testing.assert_array_equal(a.box, b.box)
            np.testing.assert_array_equal(a.mask, b.mask)


def test_row_and_column_formats(exported, server, rest_port):  # noqa: F811
    _, encoded = exported
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL_NAME}:predict"
    rows = requests.post(url, json={"instances": [b64(data) for data in encoded[:2]]}).json()
    columns = requests.post(url, json={"inputs": {"images": [b64(data) for data in encoded[:2]]},
                                       "signature_name": "serving_default"}).json()
    assert len(rows["predictions"]) == 2
    for index, row in enumerate(rows["predictions"]):
        assert sorted(row) == sorted(columns["outputs"])
        for name, value in row.items():
            assert value == columns["outputs"][name][index], name
    versioned = requests.post(url.replace(":predict", "/versions/1:predict"),
                              json={"instances": [{"images": b64(encoded[0])}]}).json()
    assert versioned["predictions"][0] == rows["predictions"][0]
    names = requests.post(url, json={"signature_name": "metadata", "inputs": [0]}).json()
    assert names == {"outputs": [["circle", "square", "triangle"]]}


BAD_REQUESTS = {
    # case: (method, path after /v1/models/, body, HTTP status, error message pattern)
    "not json": ("POST", f"{MODEL_NAME}:predict", b"{not json", 400, r"^JSON Parse error"),
    "no inputs": ("POST", f"{MODEL_NAME}:predict", b"{}", 400,
                  r"^Missing 'inputs' or 'instances' key$"),
    "both formats": ("POST", f"{MODEL_NAME}:predict", b'{"inputs": [], "instances": []}', 400,
                     r"^Not allowed to have both"),
    "unknown model": ("POST", "nope:predict", b'{"instances": [{"b64": ""}]}', 404,
                      r"^Servable not found for request: Latest\(nope\)$"),
    "unknown version": ("POST", f"{MODEL_NAME}/versions/7:predict", b'{"instances": [0]}', 404,
                        rf"^Servable not found for request: Specific\({MODEL_NAME}, 7\)$"),
    "unknown signature": ("POST", f"{MODEL_NAME}:predict",
                          b'{"signature_name": "nope", "instances": [0]}', 400,
                          r'^Serving signature key "nope" not found\.$'),
    "bad base64": ("POST", f"{MODEL_NAME}:predict", b'{"instances": [{"b64": "@@"}]}', 400,
                   r"^input 'images': bad base64"),
    "numbers for images": ("POST", f"{MODEL_NAME}:predict", b'{"instances": [1, 2]}', 400,
                           r"^input 'images': expected a string"),
    "not an image": ("POST", f"{MODEL_NAME}:predict", b'{"instances": [{"b64": "AAAA"}]}', 400,
                     r"Unknown image file format"),
    "status of unknown model": ("GET", "nope", None, 404,
                                r"^Could not find any versions of model nope$"),
    "unknown verb": ("POST", f"{MODEL_NAME}:explain", b"{}", 404,
                     rf"^Malformed request: POST /v1/models/{MODEL_NAME}:explain$"),
    "predict by GET": ("GET", f"{MODEL_NAME}:predict", None, 404, r"^Malformed request: GET"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_rest_requests_get_tf_serving_status_and_error_json(server, rest_port,  # noqa: F811
                                                                 case):
    method, path, body, status, pattern = BAD_REQUESTS[case]
    answer = requests.request(method, f"http://127.0.0.1:{rest_port}/v1/models/{path}",
                              data=body)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert list(answer.json()) == ["error"]
    assert re.search(pattern, answer.json()["error"]), answer.json()["error"]


def test_rest_client_raises_the_grpc_clients_errors(exported, server, rest_port):  # noqa: F811
    _, encoded = exported
    target = f"127.0.0.1:{rest_port}"
    with pytest.raises(ModelNotFoundError, match="HTTP 404 NOT_FOUND: Servable not found"):
        MaskRCNNRestClient(target, "nope").predict_outputs(encoded[:1])
    with pytest.raises(SignatureNotFoundError, match='signature key "nope" not found'):
        MaskRCNNRestClient(target, MODEL_NAME, signature="nope").predict_outputs(encoded[:1])
    with pytest.raises(InvalidRequestError, match="Unknown image file format"):
        MaskRCNNRestClient(target, MODEL_NAME).predict_outputs([b"not an image"])


def test_client_command_over_rest_prints_what_grpc_prints(exported, server, rest_port,  # noqa: F811
                                                          tmp_path):
    _, encoded = exported
    target, _, _ = server
    path = tmp_path / "image.png"
    path.write_bytes(encoded[3])
    reports = []
    for extra in (["--server", target], ["--server", f"127.0.0.1:{rest_port}", "--rest"]):
        result = subprocess.run(
            [sys.executable, "-m", "mask_rcnn_tf.cli", "client", "--model-name", MODEL_NAME,
             "--min-score", "0", *extra, str(path)],
            capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(result.stdout))
    assert reports[0][0]["detections"] and reports[1] == reports[0]


def test_rest_client_retries_then_reports_no_server_and_deadlines():
    client = MaskRCNNRestClient(f"127.0.0.1:{free_port()}", MODEL_NAME, retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="UNAVAILABLE"):
        client.predict_outputs([b"x"])
    with pytest.raises(DeadlineExceededError, match="not ready after 0.3 s"):
        client.wait_until_ready(timeout=0.3, poll_interval=0.05)
    assert time.monotonic() - start < 30


def test_serve_refuses_bad_thread_flags_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mask_rcnn_tf.cli", "serve", "--model-base-path", str(tmp_path),
         "--model-name", "m", "--intra-op-threads", "0"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "mask-rcnn serve: error: --intra-op-threads and --inter-op-threads must be at least 1, "
        "got 0 and 2")
