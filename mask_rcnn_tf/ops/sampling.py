"""Balanced positive / negative sampling of labelled candidates (torchvision's
BalancedPositiveNegativeSampler), batched with a static output shape and no loops.

Shapes: B images, N candidates, S = num_samples.
"""

import tensorflow as tf


def _random_top(mask, keys, k):
    # Candidates outside the mask get key -1, below every uniform key, so they come last.
    return tf.math.top_k(tf.where(mask, keys, -1.0), k=k, sorted=True).indices


def sample_balanced(labels, num_samples, positive_fraction, seed=None):
    """Draw up to num_samples candidates per image, at most a fraction of them positive.

    Per image: p = min(#positives, int(num_samples * positive_fraction)) random positives, then
    min(#negatives, num_samples - p) random negatives, then padding. Ignored candidates (-1)
    are never drawn. Each draw is without replacement.

    Args:
        labels: int32 [B, N], 1 positive, 0 negative, -1 ignored.
        num_samples: Python int S > 0.
        positive_fraction: Python float in [0, 1].
        seed: optional Python int, the op seed of the random keys.

    Returns:
        indices: int32 [B, S] into N; positives first, then negatives, then padding (index 0).
        valid: bool [B, S], False for padding.

    Raises:
        ValueError: num_samples < 1 or positive_fraction outside [0, 1].
    """
    if num_samples < 1:
        raise ValueError(f"sample_balanced: num_samples must be >= 1, got {num_samples}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(
            f"sample_balanced: positive_fraction must be in [0, 1], got {positive_fraction}")
    labels = tf.cast(labels, tf.int32)
    # Pad with ignored candidates so top_k(k=S) is defined when N < S.
    short = tf.maximum(num_samples - tf.shape(labels)[1], 0)
    labels = tf.pad(labels, [[0, 0], [0, short]], constant_values=-1)
    positive = tf.equal(labels, 1)
    negative = tf.equal(labels, 0)
    keys = tf.random.uniform(tf.shape(labels), seed=seed)

    max_positives = int(num_samples * positive_fraction)
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), max_positives)
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), num_samples - num_pos)
    pos_indices = _random_top(positive, keys, num_samples)
    neg_indices = _random_top(negative, keys, num_samples)

    slot = tf.range(num_samples)[None, :]
    num_pos = num_pos[:, None]
    num_valid = num_pos + num_neg[:, None]
    neg_slot = tf.clip_by_value(slot - num_pos, 0, num_samples - 1)
    neg_indices = tf.gather(neg_indices, neg_slot, batch_dims=1)
    valid = slot < num_valid
    indices = tf.where(slot < num_pos, pos_indices, tf.where(valid, neg_indices, 0))
    return indices, valid
