"""`mask-rcnn train --strategy ...` end to end, each run a process of its own (issue 4, acceptance
1-3): MirroredStrategy and MultiWorkerMirroredStrategy give the weights of one device holding
the whole batch, and a two-worker run killed with SIGKILL resumes from its last backup.

Equivalence needs both runs to train on the same RoIs. Here RPN and RoI sampling take every
labelled candidate (more samples per image than anchors, resp. proposals plus ground truth,
and a positive fraction of 1): the sampled sets are then fixed, and only their order is random,
which no loss depends on. With frozen BatchNorm, no flip, a fixed seed and file order
(shuffle_buffer 1, which the per-worker shards of a multi-worker run need to interleave as
one device's batches do), nothing else differs. The learning rate is the same in both runs
(train.reference_batch_size = the global batch), and clipnorm is small enough to clip every
step, so clipping must act on the summed gradient.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mask_rcnn_tf.data.shapes import make_shapes
from tests.serving.fake_model import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "shapes.yaml"
CLI_WITH_CPUS = Path(__file__).with_name("cli_with_cpus.py")
RUN_TIMEOUT = 240
TINY = [
    "model.backbone.base_width=16", "model.backbone.norm=frozen_bn", "model.fpn.num_channels=16",
    "model.rpn.pre_nms_top_n_train=64", "model.rpn.post_nms_top_n_train=16",
    # 1020 anchors on a 64 x 64 input (levels P2-P5, 3 ratios); 16 proposals + 4 ground truth.
    "model.rpn.batch_size_per_image=1024", "model.rpn.positive_fraction=1.0",
    "model.roi_heads.batch_size_per_image=24", "model.roi_heads.positive_fraction=1.0",
    "model.roi_heads.box_fc_dim=32", "model.roi_heads.mask_conv_dim=8",
    "model.roi_heads.mask_num_convs=1",
    "data.min_size=64", "data.max_size=64", "data.max_instances=4", "data.mask_crop_size=16",
    "data.flip_probability=0.0", "data.shuffle_buffer=1",
    "train.optimizer=sgd", "train.learning_rate=0.05", "train.warmup_steps=0",
    "train.clipnorm=0.5", "train.reference_batch_size=2", "train.seed=3",
]
STEPS = ["train.steps=3", "train.steps_per_epoch=1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distribute") / "shapes"
    make_shapes(folder, num_images=12, seed=5, image_size=64)
    data = [f"data.train.annotations={folder / 'annotations.json'}",
            f"data.train.images={folder / 'images'}"]
    return data + [f"train.init_weights={_init_weights(folder.parent, data)}"]


def _init_weights(folder, data):
    """A .weights.h5 of the TINY model, random with non-trivial BatchNorm statistics: frozen
    BatchNorm trains only from an init file (mask-rcnn train refuses it without one)."""
    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.modeling.factory import build_model

    config = load_config(CONFIG, TINY + data)
    model = build_model(config.model, image_size=config.data.pad_size)
    rng = np.random.default_rng(11)
    for variable in model.weights:
        if variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
    path = folder / "init.weights.h5"
    model.save_weights(path)
    return path


def _env(temp_dir, tf_config=None):
    # TMPDIR: the folders of workers killed before they could remove them stay in the test's.
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               TMPDIR=str(temp_dir),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


class Processes:
    """Starts training processes, logs each to a file, and kills whatever is left at the end."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.running = []

    def start(self, name, command, tf_config=None):
        log = open(self.log_dir / f"{name}.log", "w")
        process = subprocess.Popen(command, cwd=REPO, env=_env(self.log_dir, tf_config), stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        process.name = name
        self.running.append(process)
        return process

    def log(self, process):
        return (self.log_dir / f"{process.name}.log").read_text().replace("\r", "\n")

    def wait_ok(self, *processes, timeout=RUN_TIMEOUT):
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                code = process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{process.name} still running after {timeout} s:\n"
                            f"{self.log(process)[-3000:]}")
            assert code == 0, f"{process.name} exited with {code}:\n{self.log(process)[-3000:]}"

    def kill_all(self):
        for process in self.running:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path):
    launched = Processes(tmp_path)
    yield launched
    launched.kill_all()


def _train_command(model_dir, strategy, batch_size, shapes, extra=()):
    return ["train", "--config", str(CONFIG), "--model-dir", str(model_dir),
            "--strategy", strategy, "--set", *TINY, *shapes, f"train.batch_size={batch_size}",
            *extra]


def _cli(args):
    return [sys.executable, "-m", "mask_rcnn_tf.cli", *args]


def _cluster(count):
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    return [{"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
            for i in range(count)]


def _weights(path):
    tensors = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: tensors.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return tensors


def _checkpoint_weights(model_dir, steps=(2, 3)):
    return {step: _weights(Path(model_dir) / f"ckpt-{step:05d}" / "model.weights.h5")
            for step in steps}


@pytest.fixture(scope="module")
def one_device(shapes, tmp_path_factory):
    """Weights after steps 2 and 3 of the one-device run with 2 images per step."""
    model_dir = tmp_path_factory.mktemp("one_device")
    launched = Processes(model_dir)
    try:
        launched.wait_ok(launched.start(
            "one_device", _cli(_train_command(model_dir / "run", "one_device", 2, shapes, STEPS))))
    finally:
        launched.kill_all()
    return _checkpoint_weights(model_dir / "run")


def _assert_same_weights(one_device, model_dir, step_fraction=0.01, relative=1e-4):
    """Weights (model and optimizer) after 3 steps differ by under `relative` of each tensor's
    largest value (taken as at least 1e-3, for biases that started at zero), and by under
    `step_fraction` of what the one-device run's last step changed: agreement that does not
    come from training having moved the weights too little to tell."""
    reference, before = one_device[3], one_device[2]
    weights = _checkpoint_weights(model_dir, steps=(3,))[3]
    assert weights.keys() == reference.keys()
    moved = 0
    for name, expected in reference.items():
        difference = np.max(np.abs(weights[name] - expected), initial=0.0)
        scale = max(np.max(np.abs(expected), initial=0.0), 1e-3)
        assert difference <= relative * scale, (name, difference, scale)
        step = np.max(np.abs(expected - before[name]), initial=0.0)
        if step > 0 and expected.dtype.kind == "f":
            moved += 1
            assert difference <= step_fraction * step, (name, difference, step)
    assert moved > len(reference) // 2


def test_mirrored_two_devices_equals_one_device(one_device, shapes, tmp_path, processes):
    model_dir = tmp_path / "mirrored"
    run = processes.start("mirrored", [sys.executable, str(CLI_WITH_CPUS), "2", *_train_command(
        model_dir, "mirrored", 1, shapes, STEPS)])
    processes.wait_ok(run)
    assert "2 replica(s) in sync" in processes.log(run)
    _assert_same_weights(one_device, model_dir)


def test_mirrored_synchronized_batchnorm_equals_one_device(shapes, tmp_path, processes):
    # Trainable BatchNorm: per-replica statistics of one image would differ from those of the
    # two-image batch; synchronized statistics are those of the global batch.
    norm = ["model.backbone.norm=bn", "model.backbone.synchronized_bn=true",
            "model.backbone.freeze_at=0"]
    runs = [processes.start("one_device_bn", _cli(_train_command(
                tmp_path / "one_device", "one_device", 2, shapes, STEPS + norm))),
            processes.start("mirrored_bn", [sys.executable, str(CLI_WITH_CPUS), "2",
                                            *_train_command(tmp_path / "mirrored", "mirrored", 1,
                                                            shapes, STEPS + norm)])]
    processes.wait_ok(*runs)
    # Keras computes synchronized statistics as E[x^2] - E[x]^2, one device from centred
    # squares: the BatchNorm weights round differently, by up to a few 1e-6 absolute (beyond
    # 1e-4 of a 1e-3-sized beta) and about 2% of a step; without synchronization they differ by
    # more than the whole step, so the step fraction is the check that tells them apart.
    _assert_same_weights(_checkpoint_weights(tmp_path / "one_device"), tmp_path / "mirrored",
                         step_fraction=0.1, relative=1e-2)


def test_two_workers_equal_one_device(one_device, shapes, tmp_path, processes):
    model_dir = tmp_path / "workers"
    workers = [processes.start(f"worker{i}", _cli(_train_command(
        model_dir, "multi_worker", 1, shapes, STEPS)), tf_config)
        for i, tf_config in enumerate(_cluster(2))]
    processes.wait_ok(*workers)
    assert "2 replica(s) in sync" in processes.log(workers[1])
    _assert_same_weights(one_device, model_dir)
    # Worker 1 wrote its checkpoints into a temporary folder, which is gone.
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "ckpt-00001", "ckpt-00002", "ckpt-00003", "config.yaml", "labels.json", "logs",
        "model.weights.h5"]


def test_killed_worker_resumes_from_last_backup(shapes, tmp_path, processes):
    model_dir = tmp_path / "resumed"
    steps = ["train.steps=30", "train.steps_per_epoch=10", "train.keep_checkpoints=5"]
    command = _cli(_train_command(model_dir, "multi_worker", 1, shapes, steps))
    cluster = _cluster(2)
    first = [processes.start(f"first{i}", command, cluster[i]) for i in range(2)]
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (model_dir / "ckpt-00001").is_dir():
        assert time.monotonic() < deadline, processes.log(first[0])[-3000:]
        assert all(p.poll() is None for p in first), processes.log(first[0])[-3000:]
        time.sleep(0.02)
    first[1].send_signal(signal.SIGKILL)
    first[1].wait()
    # The chief fails at its next all-reduce; a job controller then restarts the job.
    try:
        first[0].wait(60)
    except subprocess.TimeoutExpired:
        first[0].kill()
        first[0].wait()
    assert first[0].returncode != 0
    assert not (model_dir / "model.weights.h5").exists()
    backups = sorted(p.name for p in model_dir.glob("ckpt-*"))
    backup_epoch = int(backups[-1].split("-")[1])
    assert 1 <= backup_epoch < 3, backups

    second = [processes.start(f"second{i}", command, cluster[i]) for i in range(2)]
    processes.wait_ok(*second)
    log = processes.log(second[0])
    assert re.search(rf"resuming from \S*ckpt-{backup_epoch:05d} at epoch {backup_epoch} of 3",
                     log), log[-3000:]
    ran = re.findall(r"Epoch (\d+)/3", log)
    assert sorted(set(map(int, ran))) == list(range(backup_epoch + 1, 4)), ran

    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.training.checkpoints import CheckpointStore
    from mask_rcnn_tf.training.train import compile_model
    from mask_rcnn_tf.weights.io import load_model_weights

    config = load_config(CONFIG, TINY + shapes + steps)
    model = compile_model(config)
    store = CheckpointStore(model_dir, model, model.optimizer)
    assert store.restore_latest() == 3
    assert int(model.optimizer.iterations.numpy()) == 30
    load_model_weights(model, weights=str(model_dir / "model.weights.h5"))
