"""The fully convolutional part the mask and keypoint heads share: 3x3 conv + ReLU layers run on
every RoI's pooled features.

Shapes: B images, N RoIs, P pooled size, C input channels, D = conv_dim.
"""

import keras
import tensorflow as tf


class RoIFCNHead(keras.layers.Layer):
    """Base of a head that runs num_convs (3x3 conv + ReLU) on each RoI, then its own layers.

    Subclasses build their output layers after `build_convs` and run them on what `run_convs`
    returns, then give the result its RoI axes back with `per_roi`.

    Args:
        conv_dim: D, channels of the convs.
        num_convs: number of convs.
        conv_name: the convs are named conv_name + "1" .. (weight converters map these names).
        kernel_initializer: Keras initializer (or its config) of the conv kernels.
    """

    def __init__(self, conv_dim, num_convs, *, conv_name, kernel_initializer, **kwargs):
        super().__init__(**kwargs)
        self.conv_dim = conv_dim
        self.num_convs = num_convs
        self.convs = [
            keras.layers.Conv2D(conv_dim, 3, padding="same", activation="relu",
                                kernel_initializer=keras.initializers.get(kernel_initializer),
                                dtype=self.dtype_policy, name=f"{conv_name}{i + 1}")
            for i in range(num_convs)
        ]

    def build_convs(self, input_shape):
        """Builds the convs for input [B, N, P, P, C]; returns (P, channels of their output)."""
        size, channels = int(input_shape[2]), int(input_shape[4])
        for conv in self.convs:
            conv.build((None, size, size, channels))
            channels = self.conv_dim
        return size, channels

    def run_convs(self, roi_features):
        """[B, N, P, P, C] -> [B * N, P, P, D] (C when num_convs is 0)."""
        size, channels = roi_features.shape[2], roi_features.shape[4]
        hidden = tf.reshape(roi_features, [-1, size, size, channels])
        for conv in self.convs:
            hidden = conv(hidden)
        return hidden

    @staticmethod
    def per_roi(outputs, roi_features):
        """[B * N, S, S, K] -> [B, N, S, S, K], B and N those of roi_features; S and K must be
        static (losses and targets read them from the shape)."""
        shape = tf.shape(roi_features)
        return tf.reshape(outputs, [shape[0], shape[1], *outputs.shape[1:]])

    def get_config(self):
        config = super().get_config()
        config.update(conv_dim=self.conv_dim, num_convs=self.num_convs)
        return config
