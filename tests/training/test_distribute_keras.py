"""Canaries for the Keras 3.15 behaviour that DistributedMaskRCNN's tf.distribute workarounds
exist for (training/keras_distribute.py). Each fails once Keras changes that behaviour, naming the
workaround to re-check or remove; test_distribute_runs.py shows each workaround is needed now
(its runs fail without any one of them).
"""

import inspect

import keras
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import optimizer as keras_tf_optimizer
from keras.src.backend.tensorflow import trainer as keras_tf_trainer
from keras.src.optimizers import base_optimizer, loss_scale_optimizer

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.training.keras_distribute import DistributedMaskRCNN

from tests.training.test_distribute_runs import CONFIG, TINY


def _source(function):
    return " ".join(inspect.getsource(function).split())


def test_keras_still_reduces_the_first_batch_to_build():
    # DistributedMaskRCNN._maybe_symbolic_build overrides this private method: its signature
    # must still match, and Keras must still reduce the first distributed batch (else remove
    # the override).
    method = keras_tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    assert list(inspect.signature(method).parameters) == ["self", "iterator", "data_batch"]
    assert "self.distribute_strategy.reduce(" in _source(method)


def test_keras_still_reduces_step_outputs_along_axis_0_across_workers():
    # DistributedMaskRCNN.step_logs reshapes the logs to [1] for this reduction.
    source = _source(keras_tf_trainer.reduce_per_replica)
    assert "if _collective_all_reduce_multi_worker(strategy):" in source
    assert 'return strategy.reduce("MEAN", v, axis=0)' in source
    assert "strategy.extended._in_multi_worker_mode()" in _source(
        keras_tf_trainer._collective_all_reduce_multi_worker)


def test_keras_still_clips_and_checks_finiteness_before_the_all_reduce():
    # DistributedMaskRCNN.gradients_to_apply sums the gradients itself for these two.
    apply = _source(base_optimizer.BaseOptimizer._backend_apply_gradients)
    assert apply.index("grads = self._clip_gradients(grads)") < apply.index(
        "self._backend_update_step(")
    assert "self._all_reduce_sum_gradients(grads_and_vars)" in _source(
        keras_tf_optimizer.TFOptimizer._backend_update_step)
    assert "experimental_local_results( finite_per_replica )[0]" in _source(
        loss_scale_optimizer.LossScaleOptimizer._tf_apply)


class _NoIteration:
    """An epoch iterator that must not be touched."""

    def __iter__(self):
        raise AssertionError("the first batch was fetched")


@pytest.fixture(scope="module")
def mirrored_model():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    keras.utils.set_random_seed(0)
    config = load_config(CONFIG, TINY)
    with strategy.scope():
        model = build_model(config.model, image_size=config.data.pad_size,
                            model_class=DistributedMaskRCNN)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def test_built_model_builds_without_a_batch(mirrored_model):
    assert isinstance(mirrored_model, DistributedMaskRCNN) and not mirrored_model.optimizer.built
    mirrored_model._maybe_symbolic_build(iterator=_NoIteration())
    assert mirrored_model.optimizer.built
