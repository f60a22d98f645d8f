"""Region Proposal Network head, shared over FPN levels.

Shapes: B images, Hl x Wl cells at level l, A anchors per cell.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class RPNHead(keras.layers.Layer):
    """3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A box deltas per cell.

    Args:
        num_anchors: A, anchors per location.
        num_channels: channels of the 3x3 conv (the FPN width).
    """

    def __init__(self, num_anchors, num_channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.num_channels = num_channels
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = keras.layers.Conv2D(
            num_channels, 3, padding="same", activation="relu", kernel_initializer=init,
            dtype=self.dtype_policy, name="conv")
        self.objectness = keras.layers.Conv2D(
            num_anchors, 1, kernel_initializer=init, dtype=self.dtype_policy, name="objectness")
        self.box_deltas = keras.layers.Conv2D(
            4 * num_anchors, 1, kernel_initializer=init, dtype=self.dtype_policy, name="box_deltas")

    def build(self, input_shape):
        shape = input_shape[0]
        self.conv.build(shape)
        out_shape = tuple(shape[:-1]) + (self.num_channels,)
        self.objectness.build(out_shape)
        self.box_deltas.build(out_shape)

    def call(self, features):
        """Runs the head on each level.

        Args:
            features: list of [B, Hl, Wl, C] FPN maps.

        Returns:
            (logits, deltas): lists per level of float32 [B, Hl*Wl*A] objectness logits and
            float32 [B, Hl*Wl*A, 4] deltas (dy, dx, dh, dw), ordered cell-major, anchor-minor
            as the anchor generator orders anchors.
        """
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            batch = tf.shape(feature)[0]
            logits.append(tf.reshape(tf.cast(self.objectness(hidden), tf.float32), [batch, -1]))
            deltas.append(tf.reshape(tf.cast(self.box_deltas(hidden), tf.float32), [batch, -1, 4]))
        return logits, deltas

    def get_config(self):
        config = super().get_config()
        config.update(num_anchors=self.num_anchors, num_channels=self.num_channels)
        return config
