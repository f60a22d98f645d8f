import glob
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.errors import TrainingDiverged
from mask_rcnn_tf.training.callbacks import (
    CheckpointCallback,
    CocoEvalCallback,
    StopOnNonFiniteLoss,
    make_callbacks,
    raise_if_diverged,
)
from mask_rcnn_tf.training.checkpoints import CheckpointStore


class RecordWeights(keras.callbacks.Callback):
    """Keeps a copy of the model weights at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.by_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch[epoch + 1] = [v.numpy().copy() for v in self.model.weights]


def _compiled(model):
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    return model


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, make_toy, toy_data):
    x, y = toy_data
    # 4 steps per epoch (batch 2): optimizer step 9 is epoch 3, step 2 (1-based).
    model = _compiled(make_toy(nan_from_step=9))
    store = CheckpointStore(str(tmp_path), model, model.optimizer)
    guard = StopOnNonFiniteLoss(("loss", "rpn_loss"), store=store)
    recorder = RecordWeights()
    history = model.fit(
        x, y, batch_size=2, epochs=6, shuffle=False, verbose=0,
        callbacks=[guard, CheckpointCallback(store, guard), recorder],
    )
    assert guard.diverged and model.stop_training
    assert len(history.history["loss"]) == 3
    assert np.isnan(history.history["loss"][-1])
    assert int(model.optimizer.iterations.numpy()) == 10
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00001", "ckpt-00002"]
    assert not all(np.isfinite(w).all() for w in recorder.by_epoch[3])

    last_good = os.path.join(str(tmp_path), "ckpt-00002")
    with pytest.raises(TrainingDiverged) as info:
        raise_if_diverged([recorder, guard])
    assert str(info.value) == (
        f"training diverged: loss is nan at epoch 3 step 2; last good checkpoint: {last_good}"
    )

    fresh = _compiled(make_toy(seed=3))
    fresh_store = CheckpointStore(str(tmp_path), fresh, fresh.optimizer)
    assert fresh_store.restore_latest() == 2
    for restored, expected in zip(fresh.weights, recorder.by_epoch[2]):
        assert np.isfinite(expected).all()
        np.testing.assert_array_equal(restored.numpy(), expected)
    assert int(fresh.optimizer.iterations.numpy()) == 8


def test_infinite_value_is_caught_without_store(make_toy):
    model = make_toy()
    guard = StopOnNonFiniteLoss(("rpn_loss",))
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(4, {"loss": 1.0, "rpn_loss": 2.0})
    guard.raise_if_diverged()
    assert not guard.diverged
    guard.on_train_batch_end(5, {"loss": 1.0, "rpn_loss": float("inf")})
    assert guard.diverged and model.stop_training
    assert guard.message == (
        "training diverged: rpn_loss is inf at epoch 1 step 6; last good checkpoint: none"
    )
    guard.on_train_begin()
    assert not guard.diverged


def test_unknown_loss_name_is_an_error(make_toy):
    guard = StopOnNonFiniteLoss(("mask_loss",))
    guard.set_model(make_toy())
    with pytest.raises(ValueError, match="'mask_loss' is not in the training logs"):
        guard.on_train_batch_end(0, {"loss": 1.0})
    with pytest.raises(ValueError, match="names"):
        StopOnNonFiniteLoss("loss")


def test_coco_eval_every_n_epochs_and_last(make_toy, toy_data):
    x, y = toy_data
    calls = []

    def evaluate():
        calls.append(len(calls))
        return {"bbox": {"AP": 0.25 + len(calls), "AP50": 1}, "segm_AP": np.float32(0.5)}

    model = _compiled(make_toy())
    history = model.fit(
        x, y, batch_size=4, epochs=5, verbose=0,
        callbacks=[CocoEvalCallback(evaluate, every_n_epochs=2)],
    )
    # Epochs 2 and 4 by period, 5 because it is the last.
    assert len(calls) == 3
    assert history.history["val_bbox_AP"] == [1.25, 2.25, 3.25]
    assert history.history["val_bbox_AP50"] == [1.0, 1.0, 1.0]
    assert history.history["val_segm_AP"] == [0.5, 0.5, 0.5]


def test_coco_eval_rejects_non_numbers_and_bad_period():
    callback = CocoEvalCallback(lambda: {"bbox": {"AP": "0.3"}})
    callback.set_params({"epochs": 1})
    with pytest.raises(TypeError, match="val_bbox_AP = '0.3'"):
        callback.on_epoch_end(0, {})
    with pytest.raises(ValueError, match="every_n_epochs"):
        CocoEvalCallback(dict, every_n_epochs=0)


def test_make_callbacks_end_to_end(tmp_path, make_toy, toy_data):
    x, y = toy_data
    model = _compiled(make_toy())
    store = CheckpointStore(str(tmp_path), model, model.optimizer)
    callbacks = make_callbacks(
        store, log_dir=tmp_path / "tb",
        evaluate_fn=lambda: {"bbox": {"AP": 0.125}, "segm": {"AP": 0.0625}},
        loss_names=("loss", "rpn_loss"),
    )
    assert [type(c).__name__ for c in callbacks] == [
        "StopOnNonFiniteLoss", "CheckpointCallback", "CocoEvalCallback", "TensorBoard",
    ]
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    raise_if_diverged(callbacks)
    assert history.history["val_bbox_AP"] == [0.125, 0.125]
    assert history.history["val_segm_AP"] == [0.0625, 0.0625]
    assert sorted(e for e in os.listdir(tmp_path) if e.startswith("ckpt")) == [
        "ckpt-00001", "ckpt-00002",
    ]
    assert glob.glob(os.path.join(str(tmp_path), "tb", "train", "events.out.tfevents.*"))

    # The val_ metrics reach TensorBoard: they are logged after the evaluation ran.
    tags = set()
    for path in glob.glob(os.path.join(str(tmp_path), "tb", "validation", "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert "epoch_bbox_AP" in tags


def test_make_callbacks_without_tensorboard(tmp_path, make_toy, monkeypatch):
    model = _compiled(make_toy())
    store = CheckpointStore(str(tmp_path), model, model.optimizer)
    assert make_callbacks(store)[-1].log_dir == os.path.join(str(tmp_path), "logs")
    callbacks = make_callbacks(store, tensorboard=False)
    assert [type(c).__name__ for c in callbacks] == ["StopOnNonFiniteLoss", "CheckpointCallback"]
    assert callbacks[1].nan_guard is callbacks[0]
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        make_callbacks(store)


def test_resumed_run_matches_uninterrupted_run(tmp_path, make_toy, toy_data):
    x, y = toy_data
    fit = dict(batch_size=2, shuffle=False, verbose=0)
    straight = _compiled(make_toy())
    straight.fit(x, y, epochs=3, **fit)

    first = _compiled(make_toy())
    store = CheckpointStore(str(tmp_path), first, first.optimizer)
    first.fit(x, y, epochs=2, callbacks=[CheckpointCallback(store)], **fit)

    resumed = _compiled(make_toy(seed=9))
    resumed_store = CheckpointStore(str(tmp_path), resumed, resumed.optimizer)
    initial_epoch = resumed_store.restore_latest()
    assert initial_epoch == 2
    resumed.fit(
        x, y, epochs=3, initial_epoch=initial_epoch,
        callbacks=[CheckpointCallback(resumed_store)], **fit,
    )
    assert resumed_store.latest().endswith("ckpt-00003")
    assert int(resumed.optimizer.iterations.numpy()) == 12
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
