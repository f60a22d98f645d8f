"""sample_balanced: counts, fraction, no duplicates, no ignored candidates, padding."""

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops.sampling import sample_balanced


def _check(labels, indices, valid, num_samples, fraction):
    labels, indices, valid = np.asarray(labels), indices.numpy(), valid.numpy()
    assert indices.shape == valid.shape == (labels.shape[0], num_samples)
    assert indices.dtype == np.int32
    for b in range(labels.shape[0]):
        num_pos = min(int((labels[b] == 1).sum()), int(num_samples * fraction))
        num_neg = min(int((labels[b] == 0).sum()), num_samples - num_pos)
        np.testing.assert_array_equal(valid[b], np.arange(num_samples) < num_pos + num_neg)
        picked = labels[b][indices[b]]
        assert np.all(picked[:num_pos] == 1)
        assert np.all(picked[num_pos:num_pos + num_neg] == 0)
        kept = indices[b][valid[b]]
        assert len(np.unique(kept)) == len(kept)
        assert np.all(indices[b][~valid[b]] == 0)


def test_counts_fraction_and_uniqueness():
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1], size=(3, 500), p=[0.3, 0.6, 0.1]).astype(np.int32)
    labels[1][labels[1] == 1] = 0
    labels[1, :5] = 1      # fewer positives than the cap: negatives fill the rest
    labels[2, :100] = 1    # more positives than the cap
    indices, valid = sample_balanced(labels, 64, 0.25, seed=1)
    _check(labels, indices, valid, 64, 0.25)
    assert valid.numpy().all()
    assert (labels[1][indices.numpy()[1]] == 1).sum() == 5
    assert (labels[2][indices.numpy()[2]] == 1).sum() == 16


def test_all_negative_and_fewer_candidates_than_samples():
    labels = np.array([[0] * 20,
                       [1, 1, 1, 0, 0, -1, -1, 1, 1, 1, 1, 1, 0, 0] + [-1] * 6], np.int32)
    indices, valid = sample_balanced(labels, 32, 0.25, seed=2)
    _check(labels, indices, valid, 32, 0.25)
    assert valid.numpy()[0].sum() == 20        # every negative, no positive
    assert valid.numpy()[1].sum() == 8 + 4     # 8 positives (the cap), all 4 negatives


def test_random_choice_covers_positives_in_graph():
    labels = np.zeros((1, 300), np.int32)
    labels[0, :100] = 1
    run = tf.function(lambda l: sample_balanced(l, 32, 0.5))
    chosen = set()
    for _ in range(20):
        indices, valid = run(tf.constant(labels))
        _check(labels, indices, valid, 32, 0.5)
        chosen.update(indices.numpy()[0, :16].tolist())
    # Always taking the first 16 positives would cover 16; random draws cover nearly all 100.
    assert len(chosen) > 60


@pytest.mark.parametrize("num_samples,fraction", [(0, 0.5), (8, 1.5)])
def test_bad_arguments_raise(num_samples, fraction):
    with pytest.raises(ValueError, match="sample_balanced"):
        sample_balanced(np.zeros((1, 4), np.int32), num_samples, fraction)
