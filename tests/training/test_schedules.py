import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.training.schedules import WarmupCosineDecay, WarmupStepDecay


def _at(schedule, step):
    return float(schedule(tf.constant(step, tf.int64)))


def test_step_decay_detectron_1x_values():
    # Detectron 1x: 0.02, 1000 warm-up steps from 1/1000, /10 at 60k and 80k.
    s = WarmupStepDecay(0.02, 1000, 0.001, [60000, 80000])
    expected = {
        0: 0.02 * 0.001,
        500: 0.02 * (0.001 + 0.999 * 0.5),
        999: 0.02 * (0.001 + 0.999 * 0.999),
        1000: 0.02,
        59999: 0.02,
        60000: 0.002,
        79999: 0.002,
        80000: 0.0002,
        90000: 0.0002,
    }
    for step, value in expected.items():
        assert _at(s, step) == pytest.approx(value, rel=1e-5), step


def test_step_decay_milestone_inside_warmup_multiplies():
    s = WarmupStepDecay(1.0, 10, 0.5, [5], gamma=0.1)
    assert _at(s, 4) == pytest.approx(0.5 + 0.5 * 0.4, rel=1e-6)
    assert _at(s, 6) == pytest.approx((0.5 + 0.5 * 0.6) * 0.1, rel=1e-6)
    assert _at(s, 10) == pytest.approx(0.1, rel=1e-6)


def test_no_warmup_and_no_milestones():
    s = WarmupStepDecay(0.3, 0, 0.001, [])
    assert _at(s, 0) == pytest.approx(0.3)
    assert _at(s, 12345) == pytest.approx(0.3)


def test_cosine_values():
    s = WarmupCosineDecay(0.1, 100, 0.1, 1100, final_factor=0.01)
    half_cos = lambda p: 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    expected = {
        0: 0.01,
        50: 0.1 * (0.1 + 0.9 * 0.5),
        100: 0.1,
        350: 0.1 * (0.01 + 0.99 * half_cos(0.25)),
        600: 0.1 * (0.01 + 0.99 * 0.5),
        1100: 0.001,
        5000: 0.001,
    }
    for step, value in expected.items():
        assert _at(s, step) == pytest.approx(value, rel=1e-5), step


def test_inside_tf_function_with_optimizer_iterations():
    s = WarmupStepDecay(0.02, 1000, 0.001, [60000, 80000])
    optimizer = keras.optimizers.SGD(learning_rate=s)
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    lr = tf.function(lambda: optimizer.learning_rate)
    optimizer.iterations.assign(60000)
    assert float(lr()) == pytest.approx(0.002, rel=1e-5)
    optimizer.iterations.assign(500)
    assert float(lr()) == pytest.approx(0.02 * 0.5005, rel=1e-5)


@pytest.mark.parametrize(
    "schedule",
    [
        WarmupStepDecay(0.02, 1000, 0.001, [60000, 80000], gamma=0.2),
        WarmupCosineDecay(0.02, 500, 1 / 3, 9000, final_factor=0.05),
    ],
)
def test_serialization_round_trip(schedule):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for step in (0, 250, 700, 8000, 85000):
        assert _at(restored, step) == _at(schedule, step)
    optimizer = keras.optimizers.SGD.from_config(
        keras.optimizers.SGD(learning_rate=schedule).get_config()
    )
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    optimizer.iterations.assign(700)
    assert float(optimizer.learning_rate) == pytest.approx(_at(schedule, 700))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: WarmupStepDecay(0.02, 10, 0.1, [50, 50]), "milestones"),
        (lambda: WarmupStepDecay(0.02, 10, 0.1, [0, 50]), "milestones"),
        (lambda: WarmupStepDecay(0.02, 10, 1.5, [50]), "warmup_factor"),
        (lambda: WarmupStepDecay(0.0, 10, 0.1, [50]), "base_lr"),
        (lambda: WarmupStepDecay(0.02, -1, 0.1, [50]), "warmup_steps"),
        (lambda: WarmupStepDecay(0.02, 10, 0.1, [50], gamma=0), "gamma"),
        (lambda: WarmupCosineDecay(0.02, 100, 0.1, 100), "total_steps"),
        (lambda: WarmupCosineDecay(0.02, 10, 0.1, 100, final_factor=2), "final_factor"),
    ],
)
def test_invalid_arguments(make, field):
    with pytest.raises(ValueError, match=field):
        make()
