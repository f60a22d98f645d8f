"""A toy detector stand-in: custom train_step reporting losses through Mean trackers."""

import keras
import numpy as np
import pytest
import tensorflow as tf


class ToyModel(keras.Model):
    """Dense -> BatchNorm -> Dense regression, logging "loss" and "rpn_loss" like the detector.

    `extra_layer` adds a frozen Dense layer, a model that a checkpoint of the plain one
    does not fit. From optimizer step `nan_from_step` on, the loss is multiplied by NaN, so
    the logged loss, the gradients and then the weights become NaN, as in a real divergence.
    """

    def __init__(self, hidden=4, nan_from_step=None, extra_layer=False, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden)
        self.norm = keras.layers.BatchNormalization()
        # Frozen, so the optimizer state still fits and only the model differs.
        self.extra = keras.layers.Dense(hidden, trainable=False) if extra_layer else None
        self.head = keras.layers.Dense(1)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.rpn_loss_tracker = keras.metrics.Mean(name="rpn_loss")
        self.nan_from_step = nan_from_step

    def call(self, x, training=False):
        x = self.norm(self.hidden(x), training=training)
        if self.extra is not None:
            x = self.extra(x)
        return self.head(x)

    @property
    def metrics(self):
        return [self.loss_tracker, self.rpn_loss_tracker]

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
            if self.nan_from_step is not None:
                poisoned = self.optimizer.iterations >= self.nan_from_step
                loss = loss * tf.where(poisoned, float("nan"), 1.0)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        self.rpn_loss_tracker.update_state(0.5 * loss)
        return {"loss": self.loss_tracker.result(), "rpn_loss": self.rpn_loss_tracker.result()}


@pytest.fixture
def make_toy():
    """Returns a factory of built ToyModels (input: float32 [B, 3])."""

    def make(hidden=4, nan_from_step=None, extra_layer=False, seed=0):
        keras.utils.set_random_seed(seed)
        model = ToyModel(hidden=hidden, nan_from_step=nan_from_step, extra_layer=extra_layer)
        model(np.zeros((1, 3), np.float32))
        return model

    return make


@pytest.fixture
def toy_data():
    """8 samples: x float32 [8, 3], y float32 [8, 1]."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    return x, x.sum(axis=1, keepdims=True)
