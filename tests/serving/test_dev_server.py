"""The development server against TF Serving's protocol, on the fake model (conftest.py)."""

import io
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from tests.serving.fake_model import (CLASS_NAMES, MODEL_NAME, SLOTS, VERSION, expected_outputs,
                                      random_image)
from mask_rcnn_tf.serving import (InvalidRequestError, MaskRCNNClient, ModelNotFoundError,
                                  SignatureNotFoundError)
from mask_rcnn_tf.serving.servable import Servable, latest_version
from mask_rcnn_tf.serving.server import start_server
from mask_rcnn_tf.serving.tensors import make_ndarray, make_tensor_proto


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stubs(fake_server):
    target, _ = fake_server
    channel = grpc.insecure_channel(target)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def request_for(tensor, signature="serving_default", name=MODEL_NAME, alias="images",
                version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if tensor is not None:
        request.inputs[alias].CopyFrom(make_tensor_proto(tensor))
    return request


def test_predict_echoes_model_spec_and_uses_typed_fields(stubs):
    image = random_image(np.random.default_rng(1), 20, 30)
    request = request_for(np.array([png_bytes(image)], dtype=object))
    request.model_spec.signature_name = ""
    response = stubs[0].Predict(request, timeout=30)
    assert response.model_spec.name == MODEL_NAME
    assert response.model_spec.version.value == VERSION
    assert response.model_spec.signature_name == "serving_default"
    scores = response.outputs["detection_scores"]
    # tensorflow_model_server answers in typed fields, not tensor_content.
    assert not scores.tensor_content and len(scores.float_val) == SLOTS
    boxes, classes, expected_scores = expected_outputs(image)
    np.testing.assert_allclose(make_ndarray(scores)[0], expected_scores, rtol=1e-6)
    np.testing.assert_allclose(make_ndarray(response.outputs["detection_boxes"])[0], boxes)
    np.testing.assert_array_equal(make_ndarray(response.outputs["detection_classes"])[0], classes)
    np.testing.assert_array_equal(make_ndarray(response.outputs["image_sizes"]), [[20, 30]])


def test_output_filter(stubs):
    request = request_for(np.zeros([1, 4, 4, 3], np.uint8), signature="serving_tensor")
    request.output_filter.extend(["num_detections", "image_sizes"])
    response = stubs[0].Predict(request, timeout=30)
    assert sorted(response.outputs) == ["image_sizes", "num_detections"]
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in info.value.details()


def test_client_predict_every_input_kind(fake_server, tmp_path):
    target, _ = fake_server
    rng = np.random.default_rng(2)
    images = [random_image(rng, 24, 40), random_image(rng, 33, 17), random_image(rng, 16, 16)]
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(images[0]))
    with MaskRCNNClient(target, MODEL_NAME, max_batch_size=2) as client:
        # A path, encoded bytes and an array, in two requests (max_batch_size=2).
        results = client.predict([str(path), png_bytes(images[1]), images[2]])
    assert len(results) == 3
    for image, detections in zip(images, results):
        boxes, classes, scores = expected_outputs(image)
        assert [d.class_id for d in detections] == [1, 2]
        assert [d.class_name for d in detections] == [CLASS_NAMES[0], CLASS_NAMES[1]]
        np.testing.assert_allclose([d.score for d in detections], scores[:2], rtol=1e-6)
        for slot, detection in enumerate(detections):
            np.testing.assert_allclose(detection.box, boxes[slot])
            assert detection.mask.dtype == bool and detection.mask.shape == image.shape[:2]
        # Detection 0: an all-ones mask over the middle half: pixels whose centre is inside.
        h, w = image.shape[:2]
        rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5
        inside = ((rows >= h / 4) & (rows <= 3 * h / 4))[:, None] & \
                 ((cols >= w / 4) & (cols <= 3 * w / 4))[None, :]
        mask = detections[0].mask
        assert mask[inside].all()
        # An all-ones mask pastes to f(u_row) * f(u_col), u a pixel centre in cell units (cell
        # centres at 0..27), fading linearly to 0 over the one zero cell padded on each side.
        def fade(centres, low, high):
            u = (centres - low) / ((high - low) / 28) - 0.5
            return np.clip(np.minimum(u + 1, 28 - u), 0, 1)
        expected = np.outer(fade(rows, h / 4, 3 * h / 4), fade(cols, w / 4, 3 * w / 4)) >= 0.5
        np.testing.assert_array_equal(mask, expected)


def test_client_tensor_signature_and_min_score(fake_server):
    target, _ = fake_server
    rng = np.random.default_rng(3)
    images = np.stack([random_image(rng, 12, 18) for _ in range(2)])
    with MaskRCNNClient(target, MODEL_NAME, signature="serving_tensor") as client:
        results = client.predict(images, min_score=0.3)
        assert [[d.class_id for d in r] for r in results] == [[1], [1]]
        with pytest.raises(ValueError, match="share a size"):
            client.predict([images[0], images[0][:6]])


def test_metadata_and_status(fake_server, stubs):
    target, _ = fake_server
    with MaskRCNNClient(target, MODEL_NAME) as client:
        metadata = client.metadata()
        assert client.model_status() == [{"version": VERSION, "state": "AVAILABLE", "error": ""}]
        assert client.wait_until_ready(timeout=5) == VERSION
        assert client.class_names() == CLASS_NAMES
    assert metadata["model_name"] == MODEL_NAME and metadata["version"] == VERSION
    default = metadata["signatures"]["serving_default"]
    assert default["inputs"] == {"images": {"dtype": "string", "shape": [-1]}}
    assert default["outputs"]["detection_boxes"]["dtype"] == "float32"
    assert metadata["signatures"]["serving_tensor"]["inputs"]["images"] == {
        "dtype": "uint8", "shape": [-1, -1, -1, 3]}
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL_NAME
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one metadata_field" in info.value.details()
    request.metadata_field.append("signature_def")
    request.model_spec.version.value = VERSION + 1
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name, version, message", [
    ("other", None, "Could not find any versions of model other"),
    (MODEL_NAME, VERSION + 4, f"Could not find version {VERSION + 4} of model {MODEL_NAME}"),
])
def test_status_of_unknown_model_or_version(stubs, name, version, message):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    with pytest.raises(grpc.RpcError) as info:
        stubs[1].GetModelStatus(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == message


GOOD = np.array([png_bytes(np.full((8, 8, 3), 7, np.uint8))], dtype=object)
BAD_REQUESTS = {
    "not an image": (request_for(np.array([b"these bytes are no image"], dtype=object)),
                     grpc.StatusCode.INVALID_ARGUMENT, "Unknown image file format"),
    "wrong dtype": (request_for(np.zeros([1, 8, 8, 3], np.float32), signature="serving_tensor"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "input 'images' of signature 'serving_tensor' must be uint8 [?, ?, ?, 3], "
                    "got float32 [1, 8, 8, 3]"),
    "wrong rank": (request_for(np.zeros([8, 8, 3], np.uint8), signature="serving_tensor"),
                   grpc.StatusCode.INVALID_ARGUMENT,
                   "must be uint8 [?, ?, ?, 3], got uint8 [8, 8, 3]"),
    "pixels to the bytes signature": (request_for(np.zeros([1, 8, 8, 3], np.uint8)),
                                      grpc.StatusCode.INVALID_ARGUMENT, "must be string [?]"),
    "unknown model": (request_for(GOOD, name="nope"), grpc.StatusCode.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (request_for(GOOD, version=VERSION - 1), grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Specific({MODEL_NAME}, {VERSION - 1})"),
    "unknown signature": (request_for(GOOD, signature="serving_nope"),
                          grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "serving_nope" not found.'),
    "missing input": (request_for(None), grpc.StatusCode.INVALID_ARGUMENT,
                      "Missing but required: {images}"),
    "misnamed input": (request_for(GOOD, alias="image"), grpc.StatusCode.INVALID_ARGUMENT,
                       "Signature input alias: images(feed name: serving_default_images:0) not "
                       "found in request"),
    "empty batch": (request_for(np.array([], dtype=object)), grpc.StatusCode.INVALID_ARGUMENT,
                    "input 'images' of signature 'serving_default' is an empty batch"),
    "empty pixel batch": (request_for(np.zeros([0, 8, 8, 3], np.uint8),
                                      signature="serving_tensor"),
                          grpc.StatusCode.INVALID_ARGUMENT, "is an empty batch"),
    "garbled tensor": (request_for(np.zeros([1, 8, 8, 3], np.uint8), signature="serving_tensor"),
                       grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: images"),
}
BAD_REQUESTS["garbled tensor"][0].inputs["images"].tensor_content = b"\x00" * 5


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_tf_serving_status_and_server_keeps_serving(stubs, case):
    request, code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].Predict(request, timeout=30)
    assert info.value.code() == code
    assert message in info.value.details()
    assert "\n" not in info.value.details()
    response = stubs[0].Predict(request_for(GOOD), timeout=30)
    assert make_ndarray(response.outputs["num_detections"]).tolist() == [2]


def test_client_maps_statuses_to_exception_types(fake_server):
    target, _ = fake_server
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ModelNotFoundError, match="NOT_FOUND: Servable not found") as info:
        MaskRCNNClient(target, "nope").predict([image])
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(SignatureNotFoundError, match='"serving_nope" not found'):
        MaskRCNNClient(target, MODEL_NAME, signature="serving_nope").predict([image])
    with pytest.raises(InvalidRequestError, match="Unknown image file format") as info:
        MaskRCNNClient(target, MODEL_NAME).predict([b"no image"])
    assert info.value.details.startswith("Unknown image file format")


def test_requests_in_parallel(fake_server):
    target, _ = fake_server
    rng = np.random.default_rng(4)
    images = [random_image(rng, 10 + i, 12) for i in range(8)]
    results, errors = {}, []
    client = MaskRCNNClient(target, MODEL_NAME)

    def work(index):
        try:
            for _ in range(3):
                results[index] = client.predict([images[index]])[0][0].score
        except Exception as err:  # Collected for the assertion below.
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert not errors
    for index, image in enumerate(images):
        assert results[index] == pytest.approx(expected_outputs(image)[2][0], rel=1e-6)


def test_latest_version_skips_temporary_and_non_numeric_folders(tmp_path):
    for name in ["1", "10", "9", ".10.tmp-x", "11abc", "old"]:
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a folder")
    (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
    assert latest_version(tmp_path) == (10, str(tmp_path / "10"))
    (tmp_path / "20").mkdir()
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        latest_version(tmp_path)
    with pytest.raises(ValueError, match="has no version folder"):
        latest_version(tmp_path / "old")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        latest_version(tmp_path / "missing")


def warmup_log(signature, tensor, alias="images"):
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request_for(tensor, signature=signature, name="", alias=alias))
    return log.SerializeToString()


def test_warm_up_replays_the_export_records(fake_model_base, tmp_path):
    path = tmp_path / "3"
    shutil.copytree(fake_model_base / str(VERSION), path)
    servable = Servable(MODEL_NAME, VERSION, str(path))
    assert servable.warm_up() == 0  # no warm-up file: nothing to do, as in TF Serving
    (path / "assets.extra").mkdir()
    records = [warmup_log("serving_default", GOOD),
               warmup_log("serving_tensor", np.zeros([2, 5, 7, 3], np.uint8)),
               warmup_log("metadata", np.zeros([1], np.int32), alias="unused")]
    warmup_file = path / "assets.extra" / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(warmup_file)) as writer:
        for record in records:
            writer.write(record)
    assert servable.warm_up() == 3
    with tf.io.TFRecordWriter(str(warmup_file)) as writer:
        writer.write(records[0])
        writer.write(warmup_log("serving_default", np.array([b"junk"], dtype=object)))
    with pytest.raises(ValueError,
                       match="warm-up record 2 failed: INVALID_ARGUMENT: Unknown image"):
        servable.warm_up()


def test_a_port_in_use_is_refused(fake_server):
    target, servable = fake_server
    with pytest.raises(OSError, match=f"cannot listen on {target}"):
        start_server(servable, port=int(target.rsplit(":", 1)[1]))


@pytest.mark.parametrize("max_runs", [1, 2])
def test_model_runs_at_once_are_bounded(fake_model_base, max_runs):
    # Eight concurrent requests never run more than max_concurrent_runs model calls at once:
    # each call already spreads over every intra-op thread.
    servable = Servable(MODEL_NAME, VERSION, str(fake_model_base / str(VERSION)),
                        max_concurrent_runs=max_runs)
    run = servable._functions["serving_default"]
    active, peak, lock = [0], [0], threading.Lock()

    def tracked(**inputs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return run(**inputs)

    servable._functions["serving_default"] = tracked
    request = request_for(np.array([png_bytes(np.zeros((4, 4, 3), np.uint8))], dtype=object))
    threads = [threading.Thread(target=servable.predict, args=(request,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == max_runs
