"""Acceptance 3 and 4 of issue 3 on a real export: `mask-rcnn serve` in a subprocess, the client
against it, results equal to the SavedModel run in process, parallel clients, bad requests, the
`mask-rcnn client` command, and a clean SIGTERM shutdown. Then its REST API (issue 16): the REST
client gives the gRPC client's detections, both JSON formats, and tensorflow_model_server's HTTP
statuses and error JSON for bad requests.

The model is configs/shapes.yaml narrowed to 64 px inputs and thin layers, with random weights;
its class-logit kernel is redrawn wider than the initializer's so that scores spread out and a
0.5 threshold keeps a varying number of detections per image (no near-ties that float noise
could reorder). Meaningless detections, but all a protocol test needs.
"""

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mask_rcnn_tf.data.shapes import make_shapes
from mask_rcnn_tf.serving import (InvalidRequestError, MaskRCNNClient, MaskRCNNRestClient,
                                  ModelNotFoundError, SignatureNotFoundError)
from mask_rcnn_tf.serving.tensors import make_tensor_proto
from tests.serving.fake_model import free_port

MODEL_NAME = "shapes"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [(64, 64), (48, 64), (64, 40), (37, 53), (80, 60), (64, 64)]


def encode_png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tiny_shapes_export, tmp_path_factory):
    """(model base path, list of PNG bytes of images of different sizes): the session's tiny
    shapes export (tests/conftest.py), which the server only reads, and shapes images."""
    root = tmp_path_factory.mktemp("e2e")
    make_shapes(root / "shapes", num_images=len(SIZES), seed=0, image_size=64)
    images = sorted((root / "shapes" / "images").iterdir())
    encoded = []
    for path, (height, width) in zip(images, SIZES):
        with Image.open(path) as image:
            encoded.append(encode_png(np.asarray(image.convert("RGB").resize((width, height)))))
    return str(tiny_shapes_export["base"]), encoded


@pytest.fixture(scope="module")
def rest_port():
    """The port the server fixture answers REST on."""
    return free_port()


@pytest.fixture(scope="module")
def server(exported, rest_port, tmp_path_factory):
    """(target, subprocess, log path) of `mask-rcnn serve` on a free port, ready to serve (REST
    on rest_port)."""
    base, _ = exported
    port = free_port()
    log_path = tmp_path_factory.mktemp("e2e_server") / "server.log"
    log = open(log_path, "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mask_rcnn_tf.cli", "serve", "--model-base-path", base,
         "--model-name", MODEL_NAME, "--port", str(port), "--grace-seconds", "5",
         "--rest-port", str(rest_port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    target = f"127.0.0.1:{port}"
    try:
        with MaskRCNNClient(target, MODEL_NAME) as client:
            assert client.wait_until_ready(timeout=120) == 1
        yield target, process, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        print(log.read())  # shown by pytest when a test failed
        log.close()


@pytest.fixture(scope="module")
def in_process(exported):
    """The SavedModel's serving_default outputs for each image of `exported`, one per call."""
    base, encoded = exported
    detect = tf.saved_model.load(os.path.join(base, "1")).signatures["serving_default"]
    return [{name: value.numpy() for name, value in detect(images=tf.constant([data])).items()}
            for data in encoded]


def test_served_detections_equal_the_saved_model_in_process(exported, in_process, server):
    _, encoded = exported
    target, _, _ = server
    expected = in_process
    # One image per request, as in process: batch size can change float rounding in convolutions.
    with MaskRCNNClient(target, MODEL_NAME, max_batch_size=1) as client:
        outputs = client.predict_outputs(encoded)
        detections = client.predict(encoded)
    with MaskRCNNClient(target, MODEL_NAME, max_batch_size=4) as client:
        batched = client.predict_outputs(encoded[:4])  # one request of 4 images
        class_names = client.class_names()
        metadata = client.metadata()
    assert class_names == ["circle", "square", "triangle"]
    assert set(metadata["signatures"]) >= {"serving_default", "serving_tensor", "metadata"}
    counts = [len(d) for d in detections]
    assert sum(counts) > 0 and len(set(counts)) > 1, counts
    np.testing.assert_array_equal(batched["num_detections"], outputs["num_detections"][:4])
    for index, (want, found) in enumerate(zip(expected, detections)):
        count = int(want["num_detections"][0])
        assert outputs["num_detections"][index] == count == len(found)
        np.testing.assert_array_equal(outputs["image_sizes"][index], SIZES[index])
        np.testing.assert_array_equal(outputs["detection_classes"][index, :count],
                                      want["detection_classes"][0, :count])
        np.testing.assert_allclose(outputs["detection_scores"][index, :count],
                                   want["detection_scores"][0, :count], atol=1e-4)
        np.testing.assert_allclose(outputs["detection_boxes"][index, :count],
                                   want["detection_boxes"][0, :count], atol=1e-3)
        for slot, detection in enumerate(found):
            assert detection.class_id == want["detection_classes"][0, slot]
            assert detection.class_name == class_names[detection.class_id - 1]
            assert detection.mask.shape == SIZES[index]
            np.testing.assert_allclose(detection.box, want["detection_boxes"][0, slot], atol=1e-3)


def test_eight_clients_ten_requests_each(exported, server):
    _, encoded = exported
    target, _, _ = server
    client = MaskRCNNClient(target, MODEL_NAME)
    reference = client.predict_outputs(encoded)["num_detections"]
    failures, counts = [], []

    def work(worker):
        try:
            for request in range(10):
                index = (worker + request) % len(encoded)
                result = client.predict([encoded[index]])
                counts.append(len(result[0]) == reference[index])
        except Exception as err:  # Collected for the assertion below.
            failures.append(err)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert not failures
    assert len(counts) == 80 and all(counts)


def test_bad_requests_then_still_serving(exported, server):
    _, encoded = exported
    target, _, _ = server
    good = [encoded[0]]
    with MaskRCNNClient(target, MODEL_NAME) as client:
        with pytest.raises(InvalidRequestError,
                           match="INVALID_ARGUMENT: Unknown image file format"):
            client.predict([b"not an image at all"])
        with pytest.raises(ModelNotFoundError, match=r"Latest\(nope\)"):
            MaskRCNNClient(target, "nope").predict(good)
        with pytest.raises(ModelNotFoundError, match=rf"Specific\({MODEL_NAME}, 2\)"):
            MaskRCNNClient(target, MODEL_NAME, version=2).predict(good)
        with pytest.raises(SignatureNotFoundError, match='"serving_x" not found'):
            MaskRCNNClient(target, MODEL_NAME, signature="serving_x").predict(good)
        channel = grpc.insecure_channel(target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature, tensor, alias, message in [
            ("serving_tensor", np.zeros([1, 8, 8, 3], np.float32), "images", "must be uint8"),
            ("serving_tensor", np.zeros([8, 8, 3], np.uint8), "images", "must be uint8"),
            ("serving_default", np.array([], dtype=object), "images", "empty batch"),
            ("serving_default", np.array(good, dtype=object), "image", "alias: images"),
        ]:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL_NAME
            request.model_spec.signature_name = signature
            request.inputs[alias].CopyFrom(make_tensor_proto(tensor))
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in info.value.details()
        channel.close()
        assert client.predict_outputs(good)["image_sizes"].tolist() == [list(SIZES[0])]


def test_client_command_prints_json_and_draws(exported, in_process, server, tmp_path):
    _, encoded = exported
    target, _, _ = server
    paths = []
    for index in (0, 3):
        path = tmp_path / f"image{index}.png"
        path.write_bytes(encoded[index])
        paths.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "mask_rcnn_tf.cli", "client", "--server", target, "--model-name",
         MODEL_NAME, "--min-score", "0", "--draw", str(tmp_path / "drawn"), *paths],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = [in_process[0], in_process[3]]
    assert [entry["image"] for entry in report] == paths
    for entry, want, index in zip(report, expected, (0, 3)):
        count = int(want["num_detections"][0])
        assert [d["class_id"] for d in entry["detections"]] == \
            want["detection_classes"][0, :count].tolist()
        for detection in entry["detections"]:
            assert detection["mask_rle"]["size"] == list(SIZES[index])
    for index in (0, 3):
        with Image.open(tmp_path / "drawn" / f"image{index}.png") as drawn:
            assert drawn.size == SIZES[index][::-1]


def test_client_command_reports_a_bad_model_name_in_one_line(server, tmp_path):
    target, _, _ = server
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    result = subprocess.run(
        [sys.executable, "-m", "mask_rcnn_tf.cli", "client", "--server", target, "--model-name",
         "nope", str(path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"mask-rcnn client: error: Predict(model 'nope') at {target} failed: NOT_FOUND: "
        "Servable not found for request: Latest(nope)")


# TF Serving's REST API of the same server (`--rest-port`).


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_rest_and_grpc_give_the_same_detections(exported, server, rest_port):
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


def test_row_and_column_formats(exported, server, rest_port):
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
def test_bad_rest_requests_get_tf_serving_status_and_error_json(server, rest_port, case):
    method, path, body, status, pattern = BAD_REQUESTS[case]
    answer = requests.request(method, f"http://127.0.0.1:{rest_port}/v1/models/{path}",
                              data=body)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert list(answer.json()) == ["error"]
    assert re.search(pattern, answer.json()["error"]), answer.json()["error"]


def test_rest_client_raises_the_grpc_clients_errors(exported, server, rest_port):
    _, encoded = exported
    target = f"127.0.0.1:{rest_port}"
    with pytest.raises(ModelNotFoundError, match="HTTP 404 NOT_FOUND: Servable not found"):
        MaskRCNNRestClient(target, "nope").predict_outputs(encoded[:1])
    with pytest.raises(SignatureNotFoundError, match='signature key "nope" not found'):
        MaskRCNNRestClient(target, MODEL_NAME, signature="nope").predict_outputs(encoded[:1])
    with pytest.raises(InvalidRequestError, match="Unknown image file format"):
        MaskRCNNRestClient(target, MODEL_NAME).predict_outputs([b"not an image"])


def test_client_command_over_rest_prints_what_grpc_prints(exported, server, rest_port,
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


def test_sigterm_shuts_down_cleanly(server):
    # Runs last in this module: it stops the shared server.
    _, process, log_path = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    with open(log_path) as log:
        text = log.read()
    # The export's warm-up records ran before the port opened, and the shutdown was orderly.
    assert re.search(r"ran [1-9]\d* warm-up requests", text), text
    assert "shutting down (grace 5.0 s)" in text
