"""Keypoints over gRPC (issue 6, acceptance 3): a tiny Keypoint R-CNN exported, served by
`mask-rcnn serve` in a subprocess, and read back with the client and `mask-rcnn client`, equal
to the SavedModel run in process, with the stick-figure dataset's keypoint names."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mask_rcnn_tf import cli
from mask_rcnn_tf.data.figures import KEYPOINT_NAMES, SKELETON
from mask_rcnn_tf.serving import MaskRCNNClient
from tests.export.helpers import encode_png, noise_images
from tests.serving.fake_model import free_port

MODEL_NAME = "figures"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [(64, 64), (48, 64), (37, 53), (80, 60)]


@pytest.fixture(scope="module")
def exported(tiny_keypoint_export):
    """(model base path, PNG bytes of images of different sizes): the session's tiny keypoint
    export (tests/conftest.py), which the server only reads."""
    return str(tiny_keypoint_export["base"]), [encode_png(image) for image in noise_images(SIZES)]


@pytest.fixture(scope="module")
def target(exported, tmp_path_factory):
    """host:port of `mask-rcnn serve` on a free port, ready to serve."""
    base, _ = exported
    port = free_port()
    log_path = tmp_path_factory.mktemp("keypoint_server") / "server.log"
    with open(log_path, "w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mask_rcnn_tf.cli", "serve", "--model-base-path", base,
             "--model-name", MODEL_NAME, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        target = f"127.0.0.1:{port}"
        try:
            with MaskRCNNClient(target, MODEL_NAME) as client:
                assert client.wait_until_ready(timeout=120) == 1
            yield target
        finally:
            process.kill()
            process.wait()
            log.seek(0)
            print(log.read())  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def expected(exported, tiny_keypoint_export):
    """The SavedModel's serving_default outputs in process, one image per call."""
    _, encoded = exported
    detect = tiny_keypoint_export["loaded"].signatures["serving_default"]
    return [{key: value.numpy() for key, value in detect(images=tf.constant([data])).items()}
            for data in encoded]


def test_client_keypoints_equal_the_saved_model_in_process(exported, expected, target):
    _, encoded = exported
    # One image per request, as in process: batch size can change float rounding.
    with MaskRCNNClient(target, MODEL_NAME, max_batch_size=1) as client:
        results = client.predict(encoded)
        assert client.keypoint_names() == list(KEYPOINT_NAMES)
        assert client.skeleton() == list(SKELETON)
        assert client.class_names() == ["figure"]
    assert sum(len(found) for found in results) > 0
    for want, found in zip(expected, results):
        assert len(found) == int(want["num_detections"][0])
        for slot, detection in enumerate(found):
            points = want["detection_keypoints"][0, slot]
            assert detection.keypoints.dtype == np.float32
            np.testing.assert_allclose(detection.keypoints, points, atol=1e-3)
            assert detection.keypoint_names == KEYPOINT_NAMES
            named = detection.named_keypoints()
            assert list(named) == list(KEYPOINT_NAMES)
            np.testing.assert_allclose(named["left_foot"], points[5], atol=1e-3)


def test_client_command_prints_named_keypoints_and_draws(exported, expected, target, tmp_path,
                                                         capsys):
    _, encoded = exported
    path = tmp_path / "image.png"
    path.write_bytes(encoded[0])
    code = cli.main(["client", "--server", target, "--model-name", MODEL_NAME, "--min-score",
                     "0", "--draw", str(tmp_path / "drawn"), str(path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    want = expected[0]
    count = int(want["num_detections"][0])
    detections = report[0]["detections"]
    assert len(detections) == count > 0
    for slot, detection in enumerate(detections):
        assert list(detection["keypoints"]) == list(KEYPOINT_NAMES)
        np.testing.assert_allclose(list(detection["keypoints"].values()),
                                   want["detection_keypoints"][0, slot], atol=0.01)
    with Image.open(tmp_path / "drawn" / "image.png") as drawn:
        assert drawn.size == (SIZES[0][1], SIZES[0][0])
