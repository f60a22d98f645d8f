import os

import keras
import numpy as np
import pytest

from mask_rcnn_tf.training.checkpoints import CheckpointStore, checkpoint_path
from mask_rcnn_tf.weights.io import latest_checkpoint, load_model_weights


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, size=variable.shape).astype(np.float32))


def _train_steps(model, optimizer, steps, seed=0):
    rng = np.random.default_rng(seed)
    variables = model.trainable_variables
    for _ in range(steps):
        optimizer.apply(
            [rng.normal(size=v.shape).astype(np.float32) for v in variables], variables
        )


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _assert_same(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def _store(model_dir, model, keep_last=3):
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    return CheckpointStore(str(model_dir), model, optimizer, keep_last=keep_last)


def test_round_trip_restores_weights_optimizer_and_epoch(tmp_path, make_toy):
    model = make_toy()
    store = _store(tmp_path, model)
    store.optimizer.build(model.trainable_variables)
    _randomize(model, seed=1)  # includes BatchNorm moving statistics
    _train_steps(model, store.optimizer, steps=3)
    path = store.save(2)
    assert path == os.path.join(str(tmp_path), "ckpt-00002")
    assert sorted(os.listdir(path)) == sorted(
        ["state.index", "state.data-00000-of-00001", "model.weights.h5"]
    )

    fresh = make_toy(seed=7)
    fresh_store = _store(tmp_path, fresh)
    assert not fresh_store.optimizer.built
    assert fresh_store.restore_latest() == 2
    _assert_same(_values(fresh.weights), _values(model.weights))
    assert int(fresh_store.optimizer.iterations.numpy()) == 3
    # All optimizer variables, momentum slots included, in the same order.
    assert len(store.optimizer.variables) == 2 + len(model.trainable_variables)
    _assert_same(_values(fresh_store.optimizer.variables), _values(store.optimizer.variables))
    assert np.abs(fresh_store.optimizer.variables[-1].numpy()).sum() > 0


def test_empty_directory(tmp_path, make_toy):
    store = _store(tmp_path / "missing", make_toy())
    assert store.latest() is None
    assert store.restore_latest() == 0
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*missing"):
        load_model_weights(make_toy(), model_dir=str(tmp_path / "missing"))


@pytest.mark.parametrize("kwargs", [dict(hidden=6), dict(extra_layer=True)])
def test_restore_into_different_model_is_a_clear_error(tmp_path, make_toy, kwargs):
    _store(tmp_path, make_toy()).save(1)
    with pytest.raises(ValueError, match="ckpt-00001 does not match"):
        _store(tmp_path, make_toy(**kwargs)).restore_latest()


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, make_toy, monkeypatch):
    model = make_toy()
    store = _store(tmp_path, model)
    _randomize(model, seed=1)
    first = store.save(1)
    saved = _values(model.weights)
    _randomize(model, seed=2)

    seen_during_save = []

    def crash(*args, **kwargs):
        # A kill at this point leaves no cleanup: what a reader sees now is what remains.
        seen_during_save.append((store.latest(), latest_checkpoint(str(tmp_path))))
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(model, "save_weights", crash)
    with pytest.raises(RuntimeError, match="killed"):
        store.save(2)
    assert seen_during_save == [(first, first)]
    assert store.latest() == first
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00001"]

    fresh = make_toy(seed=5)
    assert _store(tmp_path, fresh).restore_latest() == 1
    _assert_same(_values(fresh.weights), saved)


def test_leftover_temporary_folder_is_ignored_then_removed(tmp_path, make_toy):
    model = make_toy()
    store = _store(tmp_path, model)
    store.save(1)
    leftover = tmp_path / ".tmp-ckpt-2-99999"
    leftover.mkdir()
    (leftover / "state.index").write_bytes(b"partial")
    assert store.latest() == checkpoint_path(str(tmp_path), 1)
    assert latest_checkpoint(str(tmp_path)) == checkpoint_path(str(tmp_path), 1)
    store.save(2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00001", "ckpt-00002"]


def test_keep_last_prunes_oldest(tmp_path, make_toy):
    store = _store(tmp_path, make_toy(), keep_last=2)
    for epoch in range(1, 5):
        store.save(epoch)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00003", "ckpt-00004"]
    assert store.latest() == checkpoint_path(str(tmp_path), 4)


def test_save_must_be_newer_than_latest(tmp_path, make_toy):
    store = _store(tmp_path, make_toy())
    store.save(3)
    for epoch in (3, 1):
        with pytest.raises(ValueError, match="cannot save epoch"):
            store.save(epoch)
    with pytest.raises(ValueError, match="keep_last"):
        _store(tmp_path, make_toy(), keep_last=0)


def test_weights_only_loading(tmp_path, make_toy):
    model = make_toy()
    store = _store(tmp_path, model)
    _randomize(model, seed=1)
    store.save(1)
    epoch1 = _values(model.weights)
    _randomize(model, seed=2)
    store.save(2)
    epoch2 = _values(model.weights)

    target = make_toy(seed=3)
    assert load_model_weights(target, model_dir=str(tmp_path)).endswith(
        os.path.join("ckpt-00002", "model.weights.h5")
    )
    _assert_same(_values(target.weights), epoch2)

    older = os.path.join(str(tmp_path), "ckpt-00001", "model.weights.h5")
    load_model_weights(target, weights=older)
    _assert_same(_values(target.weights), epoch1)

    other = make_toy(seed=4)
    _store(tmp_path, other).restore_weights_only(checkpoint_path(str(tmp_path), 2))
    _assert_same(_values(other.weights), epoch2)


def test_weights_only_errors(tmp_path, make_toy):
    model = make_toy()
    _store(tmp_path, model).save(1)
    weights = os.path.join(str(tmp_path), "ckpt-00001", "model.weights.h5")
    with pytest.raises(ValueError, match="exactly one"):
        load_model_weights(model)
    with pytest.raises(ValueError, match="exactly one"):
        load_model_weights(model, model_dir=str(tmp_path), weights=weights)
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        load_model_weights(model, weights=missing)
    with pytest.raises(ValueError, match="cannot load weights file .*model.weights.h5") as info:
        load_model_weights(make_toy(hidden=6), weights=weights)
    assert "\n" not in str(info.value)
