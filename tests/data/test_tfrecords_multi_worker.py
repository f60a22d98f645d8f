"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 read disjoint shard files: over one
epoch each image is seen by exactly one worker (issue 15, acceptance 3). Two TensorFlow
processes take ~25 s, hence slow; test_tfrecords.py checks the same split with two
InputContexts in the default suite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mask_rcnn_tf.data.make_tfrecords import make_tfrecords
from mask_rcnn_tf.data.shapes import make_shapes
from tests.serving.fake_model import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("read_input_worker.py")


@pytest.mark.slow
def test_two_workers_see_each_image_once_per_epoch(tmp_path):
    make_shapes(tmp_path / "shapes", num_images=16, seed=2, image_size=64)
    # 4 shards of 4 images: each worker reads 2 files, 8 images an epoch.
    make_tfrecords(tmp_path / "shapes" / "annotations.json", tmp_path / "shapes" / "images",
                   tmp_path / "s", num_shards=4, progress=False)
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")])),
                   TF_CONFIG=json.dumps({"cluster": {"worker": hosts},
                                         "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / "s-*"), "16",
             str(tmp_path / f"ids{index}.json")], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT))
    try:
        for process in processes:
            output, _ = process.communicate(timeout=180)
            assert process.returncode == 0, output.decode()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    seen = [json.loads((tmp_path / f"ids{i}.json").read_text()) for i in range(2)]
    epochs = [(ids[:8], ids[8:]) for ids in seen]
    for first, second in epochs:
        assert len(set(first)) == 8 and sorted(first) == sorted(second)
    assert not set(epochs[0][0]) & set(epochs[1][0])
    assert set(epochs[0][0]) | set(epochs[1][0]) == set(range(16))
