"""Client call behaviour against scripted fake servers: retries, deadlines, size limits, waiting."""

import concurrent.futures
import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from mask_rcnn_tf.serving import (DeadlineExceededError, InvalidRequestError, MaskRCNNClient,
                                  ResourceExhaustedError, ServerUnavailableError, ServingError)
from mask_rcnn_tf.serving.tensors import make_tensor_proto
from tests.serving.fake_model import free_port

IMAGE = np.zeros((4, 4, 3), np.uint8)


def empty_detections(batch, extra=None):
    """A valid PredictResponse with no detections for `batch` images of 4 x 4."""
    response = predict_pb2.PredictResponse()
    outputs = {
        "num_detections": np.zeros([batch], np.int32),
        "detection_boxes": np.zeros([batch, 1, 4], np.float32),
        "detection_classes": np.zeros([batch, 1], np.int32),
        "detection_scores": np.zeros([batch, 1], np.float32),
        "detection_masks": np.zeros([batch, 1, 28, 28], np.float32),
        "image_sizes": np.full([batch, 2], 4, np.int32),
        **(extra or {}),
    }
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(make_tensor_proto(array))
    return response


class ScriptedPredictions(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict answers from a list of failures (status codes) before succeeding."""

    def __init__(self, failures=(), delay=0.0, response_extra=None,
                 metadata_error='Serving signature key "metadata" not found.'):
        self.metadata_error = metadata_error
        self.failures = list(failures)
        self.delay = delay
        self.response_extra = response_extra
        self.calls = []

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        self.calls.append(request.model_spec.signature_name)
        if request.model_spec.signature_name == "metadata":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.metadata_error)
        time.sleep(self.delay)
        if self.failures:
            context.abort(self.failures.pop(0), "scripted failure")
        batch = request.inputs["images"].tensor_shape.dim[0].size
        return empty_detections(batch, self.response_extra)


class ScriptedStatus(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus answering NOT_FOUND, then LOADING, then AVAILABLE (or END with an error)."""

    def __init__(self, states):
        self.states = list(states)

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC method name)
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state == "NOT_FOUND":
            context.abort(grpc.StatusCode.NOT_FOUND, "Could not find any versions of model m")
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add(version=7)
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        if state == "END":
            status.status.error_message = "saved_model.pb is corrupt"
        return response


@pytest.fixture
def serve_fake():
    """serve_fake(predictions=None, status=None, max_message_bytes=None) -> target."""
    servers = []

    def start(predictions=None, status=None, max_message_bytes=None):
        options = []
        if max_message_bytes:
            options = [("grpc.max_send_message_length", max_message_bytes)]
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4),
                             options=options)
        if predictions:
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predictions,
                                                                                server)
        if status:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(status, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def predict_calls(servicer):
    return [name for name in servicer.calls if name != "metadata"]


def test_unavailable_is_retried_until_success(serve_fake):
    servicer = ScriptedPredictions([grpc.StatusCode.UNAVAILABLE] * 2)
    client = MaskRCNNClient(serve_fake(servicer), "m", retries=3, backoff=0.01)
    assert client.predict([IMAGE]) == [[]]
    assert len(predict_calls(servicer)) == 3


def test_unavailable_after_all_retries_raises(serve_fake):
    servicer = ScriptedPredictions([grpc.StatusCode.UNAVAILABLE] * 5)
    client = MaskRCNNClient(serve_fake(servicer), "m", retries=2, backoff=0.01)
    with pytest.raises(ServerUnavailableError, match="UNAVAILABLE: scripted failure"):
        client.predict_outputs([IMAGE])
    assert len(servicer.calls) == 3


@pytest.mark.parametrize("code, error_type", [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
    (grpc.StatusCode.INTERNAL, ServingError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
])
def test_other_failures_are_not_retried(serve_fake, code, error_type):
    servicer = ScriptedPredictions([code])
    client = MaskRCNNClient(serve_fake(servicer), "m", retries=3, backoff=0.01)
    with pytest.raises(error_type) as info:
        client.predict_outputs([IMAGE])
    assert type(info.value) is error_type and info.value.code == code
    assert info.value.details == "scripted failure"
    assert len(servicer.calls) == 1


def test_no_server_is_unavailable_after_retries():
    port = free_port()
    client = MaskRCNNClient(f"127.0.0.1:{port}", "m", retries=1, backoff=0.01, timeout=5)
    with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port}"):
        client.predict_outputs([IMAGE])


def test_deadline(serve_fake):
    servicer = ScriptedPredictions(delay=1.0)
    client = MaskRCNNClient(serve_fake(servicer), "m", timeout=0.2, retries=3)
    with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"):
        client.predict_outputs([IMAGE])
    assert len(servicer.calls) == 1


def test_send_limit(serve_fake):
    servicer = ScriptedPredictions()
    client = MaskRCNNClient(serve_fake(servicer), "m", max_message_mb=0.01,
                            signature="serving_tensor")
    with pytest.raises(ResourceExhaustedError):
        client.predict_outputs([np.zeros((80, 80, 3), np.uint8)])  # 19 kB > 10 kB
    assert not servicer.calls
    assert client.predict_outputs([IMAGE])["num_detections"].tolist() == [0]


def test_receive_limit_raised_over_grpc_default(serve_fake):
    # 5 MB of full-image masks: over gRPC's 4 MB default, within the client's limit.
    big = {"detection_masks_full": np.zeros([1, 1, 2000, 2500], np.uint8)}
    target = serve_fake(ScriptedPredictions(response_extra=big))
    outputs = MaskRCNNClient(target, "m", max_message_mb=8).predict_outputs([IMAGE])
    assert outputs["detection_masks_full"].shape == (1, 1, 2000, 2500)
    with pytest.raises(ResourceExhaustedError, match="RESOURCE_EXHAUSTED"):
        MaskRCNNClient(target, "m", max_message_mb=2).predict_outputs([IMAGE])


def test_full_masks_are_used_when_sent(serve_fake):
    full = np.zeros([1, 1, 4, 4], np.uint8)
    full[0, 0, 1:3, 2] = 1
    extra = {"detection_masks_full": full, "num_detections": np.ones([1], np.int32),
             "detection_classes": np.ones([1, 1], np.int32),
             "detection_scores": np.full([1, 1], 0.9, np.float32)}
    client = MaskRCNNClient(serve_fake(ScriptedPredictions(response_extra=extra)), "m")
    (detection,), = client.predict([IMAGE])
    assert detection.class_name is None  # the scripted server has no metadata signature
    np.testing.assert_array_equal(detection.mask, full[0, 0] == 1)


def test_encoded_masks_are_decoded_into_the_full_masks(serve_fake):
    # PNG of 0 / 1 pixels per detection (export/mask_encoding.py); used before the full masks.
    masks = np.zeros([2, 4, 4], np.uint8)
    masks[0, 1:3, 2] = 1
    masks[1, 3, :] = 1
    encoded = []
    for mask in masks:
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    extra = {"detection_masks_encoded_bytes": np.array([encoded + [b""]], dtype=object),
             "detection_masks_full": np.zeros([1, 3, 4, 4], np.uint8),
             "detection_boxes": np.zeros([1, 3, 4], np.float32),
             "num_detections": np.full([1], 3, np.int32),
             "detection_classes": np.ones([1, 3], np.int32),
             "detection_scores": np.full([1, 3], 0.9, np.float32)}
    client = MaskRCNNClient(serve_fake(ScriptedPredictions(response_extra=extra)), "m")
    (first, second, empty), = client.predict([IMAGE])
    np.testing.assert_array_equal(first.mask, masks[0] == 1)
    np.testing.assert_array_equal(second.mask, masks[1] == 1)
    assert empty.mask.shape == (4, 4) and not empty.mask.any()


def test_class_names_a_batching_server_cannot_give_are_none(serve_fake):
    # tensorflow_model_server with batching refuses outputs without a batch dimension.
    servicer = ScriptedPredictions(metadata_error="Batched output tensor's 0th dimension does not "
                                   "equal the sum of the 0th dimension sizes of the input tensors")
    client = MaskRCNNClient(serve_fake(servicer), "m")
    assert client.class_names() is None
    assert client.predict([IMAGE]) == [[]]
    assert servicer.calls == ["metadata", "serving_default"]  # names asked once, then cached


def test_wait_until_ready_polls_through_not_found_and_loading(serve_fake):
    target = serve_fake(status=ScriptedStatus(["NOT_FOUND", "LOADING", "AVAILABLE"]))
    assert MaskRCNNClient(target, "m").wait_until_ready(timeout=10, poll_interval=0.01) == 7


def test_wait_until_ready_reports_a_failed_load(serve_fake):
    target = serve_fake(status=ScriptedStatus(["LOADING", "END"]))
    with pytest.raises(ServingError, match="version 7 .* failed to load: saved_model.pb is"):
        MaskRCNNClient(target, "m").wait_until_ready(timeout=10, poll_interval=0.01)


def test_wait_until_ready_deadline(serve_fake):
    target = serve_fake(status=ScriptedStatus(["LOADING"]))
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="last seen: version 7 LOADING"):
        MaskRCNNClient(target, "m").wait_until_ready(timeout=0.3, poll_interval=0.05)
    assert time.monotonic() - start < 5
    port = free_port()
    with pytest.raises(DeadlineExceededError, match="last seen: UNAVAILABLE"):
        MaskRCNNClient(f"127.0.0.1:{port}", "m").wait_until_ready(timeout=0.3)


def test_bad_client_input():
    client = MaskRCNNClient("127.0.0.1:1", "m")
    with pytest.raises(TypeError, match="pass a list of images"):
        client.predict_outputs("image.png")
    with pytest.raises(ValueError, match=r"image 1: arrays must be uint8 \[h, w, 3\] RGB, got "
                                         r"float32 \[4, 4, 3\]"):
        client.predict_outputs([IMAGE, IMAGE.astype(np.float32)])
    with pytest.raises(TypeError, match="image 0: expected a path, bytes or a NumPy array"):
        client.predict_outputs([12])
    with pytest.raises(FileNotFoundError, match="image 0: /no/such.png: file not found"):
        client.predict_outputs(["/no/such.png"])
    with pytest.raises(ValueError, match="image 0: does not decode"):
        MaskRCNNClient("127.0.0.1:1", "m", signature="serving_tensor").predict_outputs([b"xx"])
    with pytest.raises(ValueError, match="model_name must not be empty"):
        MaskRCNNClient("127.0.0.1:1", "")

