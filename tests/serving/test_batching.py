"""Request batching (serving/batching.py): the batcher on a recording run function, the
parameters file, and the dev server merging concurrent requests to the fake model."""

import concurrent.futures
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from mask_rcnn_tf.serving import MaskRCNNClient
from mask_rcnn_tf.serving.batching import Batcher
from mask_rcnn_tf.serving.batching_parameters import BatchingParameters, load_batching_parameters
from mask_rcnn_tf.serving.servable import Servable
from mask_rcnn_tf.serving.server import start_server
from mask_rcnn_tf.serving.status import StatusError
from tests.serving.fake_model import MODEL_NAME, VERSION, expected_outputs, random_image
from tests.serving.test_dev_server import png_bytes, request_for

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60  # seconds a test waits for a thread before it fails


class RecordingRun:
    """A run function that doubles its input, records each batch, and holds its first run until
    released so that later requests queue behind it."""

    def __init__(self, hold_first=True):
        self.batches = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, key, inputs):
        self.batches.append(inputs["x"].copy())
        self.started.set()
        assert self.release.wait(WAIT)
        return {"y": inputs["x"] * 2, "rows": np.arange(len(inputs["x"]))}


def make_batcher(run, **parameters):
    return Batcher(run, BatchingParameters(**parameters), threading.BoundedSemaphore(1),
                   num_threads=1)


def submit_all(batcher, arrays, key="k"):
    """Submits each array from its own thread; returns the futures in order."""
    pool = concurrent.futures.ThreadPoolExecutor(len(arrays))
    futures = [pool.submit(batcher.submit, key, {"x": array}) for array in arrays]
    pool.shutdown(wait=False)
    return futures


def wait_queued(batcher, rows, key="k"):
    """Waits until `rows` rows are queued under `key`."""
    def queued():
        return sum(batch.rows for batch in batcher._queues.get(key, ()))

    with batcher._changed:
        assert batcher._changed.wait_for(lambda: queued() == rows, WAIT)


def test_requests_queued_behind_a_run_are_merged_and_get_their_own_rows():
    run = RecordingRun()
    batcher = make_batcher(run, max_batch_size=4)
    first = submit_all(batcher, [np.array([1.0])])
    assert run.started.wait(WAIT)
    # Three requests (1 + 2 + 1 rows) arrive while the first runs: they form one batch of 4.
    later = submit_all(batcher, [np.array([10.0]), np.array([20.0, 21.0]), np.array([30.0])])
    wait_queued(batcher, 4)
    run.release.set()
    results = [future.result(WAIT) for future in first + later]
    assert len(run.batches) == 2
    assert sorted(run.batches[1].tolist()) == [10.0, 20.0, 21.0, 30.0]
    for future, sent in zip(first + later, ([1.0], [10.0], [20.0, 21.0], [30.0])):
        np.testing.assert_array_equal(future.result()["y"], np.array(sent) * 2)
    assert [len(r["rows"]) for r in results] == [1, 1, 2, 1]
    assert batcher.batch_sizes == {1: 1, 4: 1}
    batcher.close()


def test_a_batch_never_exceeds_max_batch_size_and_other_keys_wait_their_batch():
    run = RecordingRun()
    batcher = make_batcher(run, max_batch_size=3)
    first = submit_all(batcher, [np.array([0.0])])
    assert run.started.wait(WAIT)
    same = submit_all(batcher, [np.array([float(i)]) for i in range(1, 5)])
    wait_queued(batcher, 4)
    other = submit_all(batcher, [np.array([9.0])], key="other")
    wait_queued(batcher, 1, key="other")
    run.release.set()
    for future in first + same + other:
        future.result(WAIT)
    sizes = [len(batch) for batch in run.batches]
    assert max(sizes) == 3 and sum(sizes) == 6
    # The other key's single request is never merged with "k"'s rows.
    assert any(batch.tolist() == [9.0] for batch in run.batches)
    batcher.close()


def test_a_batch_is_padded_to_the_next_allowed_size_with_its_first_row():
    run = RecordingRun()
    batcher = make_batcher(run, max_batch_size=4, allowed_batch_sizes=(1, 2, 4))
    first = submit_all(batcher, [np.array([1.0])])
    assert run.started.wait(WAIT)
    later = submit_all(batcher, [np.array([5.0, 6.0]), np.array([7.0])])
    wait_queued(batcher, 3)
    run.release.set()
    results = [future.result(WAIT)["y"].tolist() for future in first + later]
    assert len(run.batches[1]) == 4  # 3 rows padded to 4 with a copy of a row
    merged = run.batches[1].tolist()
    assert sorted(merged[:3]) == [5.0, 6.0, 7.0] and merged[3] in merged[:3]
    assert sorted(results[1:]) == [[10.0, 12.0], [14.0]]
    batcher.close()


def test_a_partial_batch_runs_once_its_first_request_has_waited_the_timeout():
    run = RecordingRun(hold_first=False)
    batcher = make_batcher(run, max_batch_size=4, batch_timeout_micros=50_000)
    (future,) = submit_all(batcher, [np.array([3.0])])
    np.testing.assert_array_equal(future.result(WAIT)["y"], [6.0])
    assert batcher.batch_sizes == {1: 1}
    batcher.close()


def test_batch_timeout_gathers_requests_sent_to_an_idle_server():
    run = RecordingRun(hold_first=False)
    # A long timeout: the batch forms as soon as it is full, not after the timeout.
    batcher = make_batcher(run, max_batch_size=3, batch_timeout_micros=60_000_000)
    futures = submit_all(batcher, [np.array([float(i)]) for i in range(3)])
    for future in futures:
        future.result(WAIT)
    assert [len(batch) for batch in run.batches] == [3]
    batcher.close()


def test_oversized_request_and_full_queue_are_refused_with_tf_servings_codes():
    run = RecordingRun()
    batcher = make_batcher(run, max_batch_size=2, max_enqueued_batches=1)
    with pytest.raises(StatusError) as info:
        batcher.submit("k", {"x": np.zeros(3)})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "Task size 3 is larger than maximum input batch size 2"
    first = submit_all(batcher, [np.array([1.0])])
    assert run.started.wait(WAIT)
    queued = submit_all(batcher, [np.array([2.0, 3.0])])
    wait_queued(batcher, 2)
    with pytest.raises(StatusError) as info:
        batcher.submit("k", {"x": np.zeros(1)})
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message == ("The batch scheduling queue to which this task was submitted "
                                  "is full")
    run.release.set()
    for future in first + queued:
        future.result(WAIT)
    batcher.close()


def test_the_queue_holds_max_enqueued_batches_batches_not_rows():
    # As TF Serving: with 8 rows a batch and 2 batches, two 5-row requests open one batch each
    # (they do not fit together), and a third is refused although only 10 of 16 rows are used.
    run = RecordingRun()
    batcher = make_batcher(run, max_batch_size=8, max_enqueued_batches=2)
    first = submit_all(batcher, [np.zeros(1)])
    assert run.started.wait(WAIT)
    queued = submit_all(batcher, [np.zeros(5)])
    wait_queued(batcher, 5)
    queued += submit_all(batcher, [np.zeros(5)])
    wait_queued(batcher, 10)
    with pytest.raises(StatusError) as info:
        batcher.submit("k", {"x": np.zeros(5)})
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    small = submit_all(batcher, [np.zeros(3)])  # fits the open second batch
    wait_queued(batcher, 13)
    run.release.set()
    for future in first + queued + small:
        future.result(WAIT)
    assert sorted(len(batch) for batch in run.batches) == [1, 5, 8]
    batcher.close()


def test_a_full_batch_does_not_wait_behind_another_keys_timeout_and_close_fails_the_queue():
    run = RecordingRun(hold_first=False)
    # Key a's timeout is far beyond WAIT: a full batch held behind it would fail the test.
    batcher = make_batcher(run, max_batch_size=2, batch_timeout_micros=600_000_000)
    (waiting,) = submit_all(batcher, [np.array([1.0])], key="a")
    wait_queued(batcher, 1, key="a")
    full = submit_all(batcher, [np.array([2.0]), np.array([3.0])], key="b")
    for future in full:
        future.result(WAIT)
    assert not waiting.done()
    batcher.close()
    with pytest.raises(StatusError) as info:
        waiting.result(WAIT)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(StatusError, match="shutting down"):
        batcher.submit("a", {"x": np.zeros(1)})


def test_inputs_without_a_common_batch_dimension_are_refused():
    batcher = make_batcher(RecordingRun(hold_first=False), max_batch_size=4)
    for inputs in ({"x": np.float32(1.0)}, {"x": np.zeros(2), "z": np.zeros(3)}):
        with pytest.raises(StatusError) as info:
            batcher.submit("k", inputs)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.message.startswith("Batching Run() input tensors must have")
    batcher.close()


def test_a_failing_run_fails_every_request_of_its_batch():
    def run(key, inputs):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "bad image")

    batcher = make_batcher(run, max_batch_size=2, batch_timeout_micros=60_000_000)
    futures = submit_all(batcher, [np.zeros(1), np.zeros(1)])
    for future in futures:
        with pytest.raises(StatusError, match="bad image"):
            future.result(WAIT)
    batcher.close()


def test_inputs_of_different_shapes_fail_their_batch_with_failed_precondition():
    run = RecordingRun(hold_first=False)
    batcher = make_batcher(run, max_batch_size=2, batch_timeout_micros=60_000_000)
    futures = submit_all(batcher, [np.zeros((1, 3)), np.zeros((1, 4))])
    for future in futures:
        with pytest.raises(StatusError) as info:
            future.result(WAIT)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.message.startswith(
            "Tensors with name 'x' from different tasks have different shapes")
    assert not run.batches
    batcher.close()


def test_the_shipped_parameters_file_is_read_as_tf_serving_reads_it():
    parameters = load_batching_parameters(ROOT / "serving" / "batching_parameters.txt")
    assert parameters == BatchingParameters(max_batch_size=8, batch_timeout_micros=10000,
                                            num_batch_threads=2, max_enqueued_batches=16)


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 4 }\nenable_large_batch_splitting: true\n",
     'has no field named "enable_large_batch_splitting"'),
    ("max_batch_size: 4\n", 'Expected "{"'),
    ("max_batch_size { value: 0 }\n", "max_batch_size must be at least 1, got 0"),
    ("max_batch_size { value: 4 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 3\n",
     r"allowed_batch_sizes must increase and end at max_batch_size \(4\), got \[2, 3\]"),
    ("pad_variable_length_inputs: true\n", "pad_variable_length_inputs: true is not supported"),
])
def test_bad_parameters_files_are_named_with_the_problem(tmp_path, text, message):
    path = tmp_path / "batching.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_batching_parameters(path)
    assert str(path) in str(info.value)


def serve_batching(fake_model_base, parameters):
    servable = Servable(MODEL_NAME, VERSION, str(fake_model_base / str(VERSION)),
                        batching=parameters)
    server, port = start_server(servable, port=0, max_workers=8)
    return server, f"127.0.0.1:{port}", servable


def test_dev_server_merges_concurrent_requests_and_answers_each_its_own(fake_model_base):
    # Up to 4 images a batch, waiting up to a minute for them: it runs as soon as it is full.
    server, target, servable = serve_batching(
        fake_model_base, BatchingParameters(max_batch_size=4, batch_timeout_micros=60_000_000))
    rng = np.random.default_rng(0)
    # Different sizes: serving_default takes encoded images, so they batch together.
    images = [random_image(rng, 20 + 3 * i, 30 - 2 * i) for i in range(4)]
    try:
        with MaskRCNNClient(target, MODEL_NAME, timeout=WAIT) as client:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(
                    lambda image: client.predict_outputs([png_bytes(image)]), images))
    finally:
        server.stop(None)
        servable.close()
    assert servable.batcher.batch_sizes == {4: 1}
    for image, outputs in zip(images, answers):
        boxes, classes, scores = expected_outputs(image)
        np.testing.assert_allclose(outputs["detection_scores"][0], scores, rtol=1e-6)
        np.testing.assert_allclose(outputs["detection_boxes"][0], boxes)
        np.testing.assert_array_equal(outputs["detection_classes"][0], classes)
        np.testing.assert_array_equal(outputs["image_sizes"][0], image.shape[:2])


def test_an_output_without_the_batch_dimension_cannot_be_batched(fake_model_base):
    # The fake model's metadata returns class names [K] for an input [B]; the real export gives
    # every output a batch dimension for this reason (export/serving_module.py).
    server, target, servable = serve_batching(fake_model_base, BatchingParameters())
    try:
        with pytest.raises(StatusError) as info:
            servable.predict(request_for(np.zeros([1], np.int32), signature="metadata",
                                         alias="unused"))
        with MaskRCNNClient(target, MODEL_NAME, timeout=WAIT) as client:
            assert client.class_names() is None  # logged; detections carry class ids only
    finally:
        server.stop(None)
        servable.close()
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "output 'class_names' has shape [3]" in info.value.message


def test_batched_requests_to_a_real_export_get_their_unbatched_detections(tiny_shapes_export,
                                                                          tmp_path):
    # Four images of different sizes, merged into one run of the tiny shapes export, against
    # each run alone in process (tolerances of the served end-to-end test).
    import tensorflow as tf
    from PIL import Image

    from mask_rcnn_tf.data.shapes import make_shapes

    make_shapes(tmp_path / "shapes", num_images=4, seed=3, image_size=64)
    paths = sorted((tmp_path / "shapes" / "images").iterdir())
    images = [png_bytes(np.asarray(Image.open(path).convert("RGB").resize(size)))
              for path, size in zip(paths, [(64, 64), (64, 48), (40, 64), (53, 37)])]
    export_dir = tiny_shapes_export["export_dir"]
    detect = tf.saved_model.load(export_dir).signatures["serving_default"]
    alone = [{k: v.numpy() for k, v in detect(images=tf.constant([image])).items()}
             for image in images]
    servable = Servable("shapes", 1, export_dir, batching=BatchingParameters(
        max_batch_size=4, batch_timeout_micros=60_000_000))
    server, port = start_server(servable, port=0, max_workers=4)
    try:
        with MaskRCNNClient(f"127.0.0.1:{port}", "shapes", timeout=WAIT) as client:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda image: client.predict_outputs([image]), images))
    finally:
        server.stop(None)
        servable.close()
    assert servable.batcher.batch_sizes == {4: 1}
    assert sum(int(want["num_detections"][0]) for want in alone) > 0
    for want, got in zip(alone, answers):
        count = int(want["num_detections"][0])
        assert got["num_detections"][0] == count
        np.testing.assert_array_equal(got["image_sizes"], want["image_sizes"])
        np.testing.assert_array_equal(got["detection_classes"][0, :count],
                                      want["detection_classes"][0, :count])
        np.testing.assert_allclose(got["detection_scores"][0, :count],
                                   want["detection_scores"][0, :count], atol=1e-4)
        np.testing.assert_allclose(got["detection_boxes"][0, :count],
                                   want["detection_boxes"][0, :count], atol=1e-3)
        np.testing.assert_allclose(got["detection_masks"][0, :count],
                                   want["detection_masks"][0, :count], atol=1e-4)


def test_serve_command_names_a_bad_batching_file(tmp_path, capsys):
    from mask_rcnn_tf.cli import main

    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: -2 }\n")
    assert main(["serve", "--model-base-path", str(tmp_path), "--model-name", "m",
                 "--enable-batching", "--batching-parameters-file", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mask-rcnn serve: error: {path}: batching parameter max_batch_size must be at least 1, "
        f"got -2")
    # As tensorflow_model_server: a parameters file alone is a mistake, not batching.
    assert main(["serve", "--model-base-path", str(tmp_path), "--model-name", "m",
                 "--batching-parameters-file", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "mask-rcnn serve: error: --batching-parameters-file is set without --enable-batching")
