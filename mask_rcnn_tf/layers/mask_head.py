"""Mask head: a small FCN predicting a mask per class for every RoI.

Shapes: B images, N RoIs, P pooled size (14), 2P mask size (28), C channels, K classes
including background.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class MaskHead(keras.layers.Layer):
    """num_convs x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv to K.

    Args:
        num_classes: K, background included (its channel is never trained), as torchvision.
        conv_dim: channels of the hidden convs.
        num_convs: number of 3x3 convs.
    """

    def __init__(self, num_classes, conv_dim=256, num_convs=4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv_dim = conv_dim
        self.num_convs = num_convs
        policy = self.dtype_policy
        init = keras.initializers.HeNormal()
        self.convs = [
            keras.layers.Conv2D(conv_dim, 3, padding="same", activation="relu",
                                kernel_initializer=init, dtype=policy, name=f"conv{i + 1}")
            for i in range(num_convs)
        ]
        self.upsample = keras.layers.Conv2DTranspose(
            conv_dim, 2, strides=2, activation="relu", kernel_initializer=init, dtype=policy,
            name="upsample")
        self.logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer=init, dtype=policy,
                                          name="logits")

    def build(self, input_shape):
        size, channels = int(input_shape[2]), int(input_shape[4])
        for conv in self.convs:
            conv.build((None, size, size, channels))
            channels = self.conv_dim
        self.upsample.build((None, size, size, channels))
        self.logits.build((None, 2 * size, 2 * size, self.conv_dim))

    def call(self, roi_features):
        """Args: roi_features [B, N, P, P, C].

        Returns: float32 mask logits [B, N, 2P, 2P, K].
        """
        shape = tf.shape(roi_features)
        size, channels = roi_features.shape[2], roi_features.shape[4]
        hidden = tf.reshape(roi_features, [-1, size, size, channels])
        for conv in self.convs:
            hidden = conv(hidden)
        logits = tf.cast(self.logits(self.upsample(hidden)), tf.float32)
        return tf.reshape(logits, [shape[0], shape[1], 2 * size, 2 * size, self.num_classes])

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, conv_dim=self.conv_dim,
                      num_convs=self.num_convs)
        return config
