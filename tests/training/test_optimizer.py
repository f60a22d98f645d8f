import keras
import numpy as np
import pytest

from mask_rcnn_tf.training.optimizer import build_optimizer, no_decay_variables


class FrozenBN(keras.layers.BatchNormalization):
    """A BatchNorm subclass whose own name lacks "Normalization"."""


class Block(keras.layers.Layer):
    """Nested sublayers: the walk over the model must reach them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4, bias_initializer="ones", name="inner_dense")
        self.norm = keras.layers.GroupNormalization(
            groups=2, beta_initializer="ones", name="inner_gn"
        )

    def call(self, x):
        return self.norm(self.dense(x))


def _model():
    # Nonzero biases and betas, so that a wrong decay would change them.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, bias_initializer="ones", name="d1")(inputs)
    x = keras.layers.BatchNormalization(beta_initializer="ones", name="bn")(x)
    x = Block(name="block")(x)
    x = FrozenBN(beta_initializer="ones", name="frozen")(x)
    x = keras.layers.LayerNormalization(beta_initializer="ones", name="ln")(x)
    outputs = keras.layers.Dense(2, bias_initializer="ones", name="d2")(x)
    return keras.Model(inputs, outputs)


NORM_PATHS = {
    "bn/gamma", "bn/beta", "block/inner_gn/gamma", "block/inner_gn/beta",
    "frozen/gamma", "frozen/beta", "ln/gamma", "ln/beta",
}
BIAS_PATHS = {"d1/bias", "block/inner_dense/bias", "d2/bias"}


def _zero_grad_steps(model, optimizer, steps):
    variables = model.trainable_variables
    for _ in range(steps):
        optimizer.apply([np.zeros(v.shape, np.float32) for v in variables], variables)


def test_no_decay_variables_lists_norm_params_and_optionally_biases():
    model = _model()
    assert {v.path for v in no_decay_variables(model)} == NORM_PATHS
    assert {v.path for v in no_decay_variables(model, decay_biases=False)} == (
        NORM_PATHS | BIAS_PATHS
    )


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("decay_biases", [True, False])
def test_weight_decay_skips_norm_parameters(name, decay_biases):
    model = _model()
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    lr, wd, steps = 0.1, 0.5, 3
    optimizer = build_optimizer(
        model, name=name, learning_rate=lr, weight_decay=wd, decay_biases=decay_biases
    )
    _zero_grad_steps(model, optimizer, steps)
    for variable in model.trainable_variables:
        key = variable.path
        kept = key in NORM_PATHS or (key in BIAS_PATHS and not decay_biases)
        expected = before[key] if kept else _decayed(name, before[key], lr, wd, 0.9, steps)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, err_msg=key)


def _decayed(name, weight, lr, wd, momentum, steps):
    """NumPy reference for zero gradients: AdamW shrinks decoupled; SGD follows
    torch.optim.SGD, where the decay term w * wd enters the momentum buffer."""
    if name == "adamw":
        return weight * (1 - lr * wd) ** steps
    weight, buffer = weight.astype(np.float64), np.zeros_like(weight, np.float64)
    for _ in range(steps):
        buffer = momentum * buffer + wd * weight
        weight = weight - lr * buffer
    return weight


def test_sgd_momentum_is_used():
    weight = keras.Variable(np.zeros(3, np.float32))
    model_like = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    optimizer = build_optimizer(
        model_like, name="sgd", learning_rate=0.1, momentum=0.5, weight_decay=0.0
    )
    assert optimizer.momentum == 0.5
    for _ in range(3):
        optimizer.apply([np.ones(3, np.float32)], [weight])
    # velocity: -0.1, -0.15, -0.175 -> weight -0.425
    np.testing.assert_allclose(weight.numpy(), -0.425, rtol=1e-6)


def test_sgd_nesterov():
    weight = keras.Variable(np.zeros(1, np.float32))
    model_like = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    optimizer = build_optimizer(
        model_like, name="sgd", learning_rate=0.1, momentum=0.5, weight_decay=0.0,
        nesterov=True,
    )
    for _ in range(2):
        optimizer.apply([np.ones(1, np.float32)], [weight])
    # m1 = -0.1, step -0.05 - 0.1; m2 = -0.15, step -0.075 - 0.1
    np.testing.assert_allclose(weight.numpy(), -0.325, rtol=1e-6)


def test_adamw_arguments_and_clipping():
    model = _model()
    optimizer = build_optimizer(
        model, name="adamw", learning_rate=1e-3, momentum=0.8, weight_decay=0.05,
        global_clipnorm=2.0,
    )
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.beta_1 == 0.8
    assert optimizer.weight_decay == 0.05
    assert optimizer.global_clipnorm == 2.0
    sgd = build_optimizer(model, name="sgd", learning_rate=0.02, clipnorm=1.0)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.clipnorm == 1.0
    assert sgd.weight_decay == 1e-4


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(name="rmsprop"), "rmsprop"),
        (dict(name="adamw", nesterov=True), "nesterov"),
        (dict(name="sgd", momentum=1.0), "momentum"),
        (dict(name="sgd", weight_decay=-1.0), "weight_decay"),
    ],
)
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_optimizer(_model(), learning_rate=0.1, **kwargs)


def test_unbuilt_model_is_an_error():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.norm = keras.layers.BatchNormalization()

        def call(self, x):
            return self.norm(self.dense(x))

    with pytest.raises(ValueError, match="build"):
        build_optimizer(Sub(), name="sgd", learning_rate=0.1)
