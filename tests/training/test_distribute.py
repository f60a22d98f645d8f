"""Distributed-training pieces in one process: strategy choice, TF_CONFIG, learning-rate scaling,
per-worker input shards, per-worker output folders, global-batch loss normalization, and one
training step under mixed_bfloat16 (issue 4, acceptance 4). The runs under real strategies
are in test_distribute_runs.py."""

import json
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf import cli
from mask_rcnn_tf.config import ConfigError, load_config
from mask_rcnn_tf.data.inputs import load_split, make_dataset, make_training_input
from mask_rcnn_tf.data.shapes import make_shapes
from mask_rcnn_tf.modeling.mask_rcnn import LOSS_NAMES, LOSS_NORMALIZERS
from mask_rcnn_tf.training.backup import restore_backup, worker_output_dir
from mask_rcnn_tf.training.strategy import is_chief, read_tf_config, resolve_strategy_name
from mask_rcnn_tf.training.train import (compile_model, make_schedule, scaled_learning_rate,
                                         scaled_schedule)
from tests.training.test_distribute_runs import CONFIG, TINY

CLUSTER = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("name, tf_config, gpus, expected", [
    ("auto", None, 0, "one_device"),
    ("auto", None, 1, "one_device"),
    ("auto", None, 4, "mirrored"),
    ("auto", CLUSTER, 0, "multi_worker"),
    ("auto", CLUSTER, 4, "multi_worker"),
    ("one_device", CLUSTER, 4, "one_device"),
    ("mirrored", None, 0, "mirrored"),
    ("multi_worker", CLUSTER, 0, "multi_worker"),
])
def test_resolve_strategy_name(name, tf_config, gpus, expected):
    assert resolve_strategy_name(name, tf_config, gpus) == expected


def test_resolve_strategy_name_errors():
    with pytest.raises(ValueError, match="strategy multi_worker needs TF_CONFIG"):
        resolve_strategy_name("multi_worker", None, 8)
    with pytest.raises(ValueError, match="strategy must be one of auto, one_device, mirrored, "
                                         "multi_worker, got 'tpu'"):
        resolve_strategy_name("tpu", None, 0)


def test_read_tf_config():
    assert read_tf_config({}) is None
    assert read_tf_config({"TF_CONFIG": "  "}) is None
    assert read_tf_config({"TF_CONFIG": json.dumps(CLUSTER)}) == CLUSTER
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        read_tf_config({"TF_CONFIG": "{cluster"})
    with pytest.raises(ValueError, match="TF_CONFIG task must be"):
        read_tf_config({"TF_CONFIG": json.dumps(dict(CLUSTER, task={"type": "worker",
                                                                     "index": 2}))})
    with pytest.raises(ValueError, match="TF_CONFIG cluster must map job names"):
        read_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": "a:1"}})})


def test_cli_strategy_flag(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = cli.main(["train", "--config", str(CONFIG), "--model-dir", str(tmp_path / "run"),
                     "--strategy", "multi_worker"])
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "mask-rcnn train: error: strategy multi_worker needs TF_CONFIG naming the cluster")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", str(CONFIG), "--model-dir", "x", "--strategy", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_config_checks_the_new_train_keys():
    with pytest.raises(ConfigError, match="train.strategy must be one of auto, one_device"):
        load_config(CONFIG, ["train.strategy=parameter_server"])
    with pytest.raises(ConfigError, match="train.reference_batch_size must be positive or null"):
        load_config(CONFIG, ["train.reference_batch_size=0"])
    defaults = load_config(CONFIG).train
    assert (defaults.strategy, defaults.reference_batch_size, defaults.scale_lr) == (
        "auto", None, True)


def _train_config(**values):
    return load_config(CONFIG, [f"train.{key}={value}" for key, value in values.items()])


def test_scaled_learning_rate_hand_computed():
    # The paper's 16 images per step over 8 GPUs: learning rate and warm-up as configured.
    paper = _train_config(batch_size=2, reference_batch_size=16, learning_rate=0.02,
                          warmup_steps=1000)
    assert scaled_learning_rate(paper.train, 8) == (0.02, 1000)
    # One GPU with 2 images: k = 1/8.
    assert scaled_learning_rate(paper.train, 1) == (0.0025, 8000)
    # Reference null: the rate is for one replica's batch; 3 replicas triple it.
    shapes = _train_config(warmup_steps=100)
    assert scaled_learning_rate(shapes.train, 1) == (0.001, 100)
    assert scaled_learning_rate(shapes.train, 3) == (pytest.approx(0.003), 33)
    fixed = _train_config(warmup_steps=100, scale_lr=False)
    assert scaled_learning_rate(fixed.train, 8) == (0.001, 100)


def test_schedule_is_scaled_and_checked():
    config = _train_config(batch_size=2, reference_batch_size=16, learning_rate=0.02,
                           warmup_steps=1000, steps=9000, schedule="step", milestones=[8500])
    schedule = make_schedule(config, num_replicas=1)
    # Warm-up from 1% (shapes.yaml) over 8000 steps, then 0.0025 until the milestone, which
    # stretches by 8 as well: 8500 steps of 16 images are 68000 steps of 2.
    assert float(schedule(4000)) == pytest.approx(0.0025 * (0.01 + 0.99 * 0.5))
    assert float(schedule(8000)) == pytest.approx(0.0025)
    assert float(schedule(67999)) == pytest.approx(0.0025)
    assert float(schedule(68000)) == pytest.approx(0.00025)
    cosine = _train_config(batch_size=2, reference_batch_size=16, warmup_steps=1000, steps=5000,
                           scale_schedule=False)
    with pytest.raises(ConfigError, match=r"train.steps \(5000 once scaled\) must exceed the "
                                          r"warm-up, 8000 steps once scaled to 1 replicas"):
        make_schedule(cosine, num_replicas=1)


def test_linear_scaling_rule_stretches_steps_and_milestones():
    paper = _train_config(batch_size=2, reference_batch_size=16, learning_rate=0.02,
                          warmup_steps=1000, steps=90000, milestones=[60000, 80000])
    # 8 GPUs x 2 = the reference: the recipe as written.
    assert scaled_schedule(paper.train, 8) == (0.02, 1000, 90000, (60000, 80000))
    # One GPU x 2: an eighth of the rate for 8x the steps, the same images at every point.
    assert scaled_schedule(paper.train, 1) == (0.0025, 8000, 720000, (480000, 640000))
    # 2 hosts x 8 GPUs: twice the rate for half the steps.
    assert scaled_schedule(paper.train, 16) == (0.04, 500, 45000, (30000, 40000))
    # Turned off, or no explicit reference: steps are optimizer steps as configured.
    off = _train_config(batch_size=2, reference_batch_size=16, steps=90000,
                        milestones=[60000, 80000], scale_schedule=False)
    assert scaled_schedule(off.train, 1)[2:] == (90000, (60000, 80000))
    no_reference = _train_config(steps=900, milestones=[600])
    assert scaled_schedule(no_reference.train, 4)[2:] == (900, (600,))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "shapes"
    make_shapes(folder, num_images=7, seed=5, image_size=64)
    config = load_config(CONFIG, TINY + [f"data.train.annotations={folder / 'annotations.json'}",
                                         f"data.train.images={folder / 'images'}"])
    return config, load_split(config.data, "train")


class _Pipelines:
    """Calls a dataset function the way a strategy with `count` input pipelines does."""

    def __init__(self, count):
        self.count = count

    def distribute_datasets_from_function(self, dataset_fn):
        return [dataset_fn(tf.distribute.InputContext(self.count, i, self.count))
                for i in range(self.count)]


def _image_ids(dataset, batches):
    return [int(i) for batch in dataset.take(batches) for i in batch["image_ids"].numpy()]


def test_each_worker_reads_its_own_shard(tiny):
    config, data = tiny
    ids = [record.image_id for record in data.records]
    first, second = make_training_input(config.data, data, _Pipelines(2), batch_size=1, seed=1)
    # Within a pass over its shard (4 and 3 images), each worker sees each of its images once.
    assert sorted(_image_ids(first, 4)) == sorted(ids[0::2])
    assert sorted(_image_ids(second, 3)) == sorted(ids[1::2])


def test_one_input_pipeline_keeps_the_one_device_order(tiny):
    config, data = tiny
    [shared] = make_training_input(config.data, data, _Pipelines(1), batch_size=1, seed=1)
    one_device = make_dataset(config.data, data, training=True, batch_size=2, seed=1)
    # A mirrored strategy hands consecutive batches to its replicas: replica 0 then 1.
    assert _image_ids(shared, 12) == _image_ids(one_device, 6)
    default = make_training_input(config.data, data, tf.distribute.get_strategy(), batch_size=2,
                                  seed=1)
    assert isinstance(default, tf.data.Dataset)
    assert _image_ids(default, 6) == _image_ids(one_device, 6)


def test_more_workers_than_images(tiny):
    config, data = tiny
    with pytest.raises(ConfigError, match="7 images cannot feed 8 workers"):
        make_training_input(config.data, data, _Pipelines(8), batch_size=1)


class _Worker:
    """A multi-worker strategy as backup.py sees it: a cluster resolver, and a gather that
    returns `epochs` for every worker's restored epoch."""

    def __init__(self, cluster, task_type, task_id, epochs=None):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
        self.epochs = epochs

    def experimental_distribute_values_from_function(self, value_fn):
        return value_fn(None)

    def gather(self, value, axis):
        return tf.constant(self.epochs, tf.int64)


WORKERS = {"worker": ["a:1", "b:1"]}


def test_chief_writes_into_model_dir_others_into_a_temporary_folder(tmp_path):
    assert is_chief(tf.distribute.get_strategy())
    with worker_output_dir(tmp_path, tf.distribute.get_strategy()) as folder:
        assert folder == str(tmp_path)
    with worker_output_dir(tmp_path, _Worker(WORKERS, "worker", 0)) as folder:
        assert folder == str(tmp_path)
    with pytest.raises(RuntimeError):
        with worker_output_dir(tmp_path, _Worker(WORKERS, "worker", 1)) as folder:
            assert folder != str(tmp_path) and "worker1" in folder
            (Path(folder) / "ckpt").mkdir()
            raise RuntimeError("killed")
    assert not Path(folder).exists()
    with_chief = dict(WORKERS, chief=["c:1"])
    assert is_chief(_Worker(with_chief, "chief", 0))
    assert not is_chief(_Worker(with_chief, "worker", 0))


def test_workers_must_restore_the_same_epoch():
    store = types.SimpleNamespace(restore_latest=lambda: 2, model_dir="/runs/x")
    assert restore_backup(store, tf.distribute.get_strategy()) == 2
    assert restore_backup(store, _Worker(WORKERS, "worker", 1, epochs=[2, 2])) == 2
    with pytest.raises(ValueError, match=r"workers restored different epochs \[2, 0\] from "
                                         r"/runs/x \(this worker: 2\): the model folder must be"):
        restore_backup(store, _Worker(WORKERS, "worker", 1, epochs=[2, 0]))


@pytest.fixture(scope="module")
def batch(tiny):
    config, data = tiny
    return next(iter(make_dataset(config.data, data, training=True, batch_size=2, seed=0)))


def test_each_loss_is_a_local_sum_over_its_normalizer(tiny, batch):
    # What _global_batch_losses relies on: loss * max(count, 1) adds up over images, with the
    # count of LOSS_NORMALIZERS[name], so re-normalizing by a summed count gives the batch loss.
    config, _ = tiny
    keras.utils.set_random_seed(0)
    model = compile_model(config)
    outputs = model(batch, training=True)
    images = [{key: value[i:i + 1] for key, value in outputs.items()} for i in range(2)]

    def sums(outs):
        losses = model.compute_losses(outs)
        return {name: float(losses[name]) * max(
            float(tf.reduce_sum(tf.cast(outs[LOSS_NORMALIZERS[name]], tf.float32))), 1.0)
            for name in LOSS_NAMES}

    whole, parts = sums(outputs), [sums(image) for image in images]
    counts = [float(tf.reduce_sum(tf.cast(image["mask_is_foreground"], tf.float32)))
              for image in images]
    assert counts[0] != counts[1], "pick images whose foreground counts differ"
    for name in LOSS_NAMES:
        assert whole[name] == pytest.approx(parts[0][name] + parts[1][name], rel=1e-5), name


def _one_step(config, batch, policy):
    """Losses of one train_step under `policy`, the weight change, and the model."""
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = compile_model(config)
        before = [v.numpy() for v in model.trainable_variables]
        logs = {name: float(value) for name, value in tf.function(model.train_step)(batch).items()}
        outputs = model(batch, training=True)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    change = {v.path: v.numpy() - b for v, b in zip(model.trainable_variables, before)}
    return logs, change, model, outputs


def test_mixed_bfloat16_training_step_is_close_to_float32(tiny, batch):
    config, _ = tiny
    logs32, change32, _, _ = _one_step(config, batch, "float32")
    logs16, change16, model16, outputs16 = _one_step(config, batch, "mixed_bfloat16")
    assert model16.backbone.compute_dtype == "bfloat16"
    assert model16.box_head.variable_dtype == "float32"
    # What the losses read stays float32 (the heads cast before returning).
    assert {v.dtype for v in outputs16.values() if v.dtype.is_floating} == {tf.float32}
    assert all(np.isfinite(list(logs16.values())))
    # Anchors, and with them the RPN samples, are the same in both runs.
    for name in ("rpn_objectness_loss", "rpn_box_loss"):
        assert logs16[name] == pytest.approx(logs32[name], rel=5e-3), name
    # Classification and masks see proposals ranked by slightly different RPN scores.
    for name in ("box_class_loss", "mask_loss"):
        assert logs16[name] == pytest.approx(logs32[name], rel=0.05), name
    # Box regression trains only on foreground RoIs, which an untrained RPN's near-equal scores
    # pick differently in bfloat16: finite is all there is to compare. The rest of the network
    # moves in the same direction.
    for path, step32 in change32.items():
        if "box_head/box_deltas" in path or not np.any(step32):
            continue
        step16 = change16[path]
        cosine = np.sum(step32 * step16) / (np.linalg.norm(step32) * np.linalg.norm(step16))
        assert cosine > 0.8, path
