"""Mask head: a small FCN predicting a mask per class for every RoI.

Shapes: B images, N RoIs, P pooled size (14), 2P mask size (28), C channels, K classes
including background.
"""

import keras
import tensorflow as tf

from mask_rcnn_tf.layers.roi_fcn import RoIFCNHead


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class MaskHead(RoIFCNHead):
    """num_convs x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv to K.

    Args:
        num_classes: K, background included (its channel is never trained), as torchvision.
        conv_dim: channels of the hidden convs.
        num_convs: number of 3x3 convs.
    """

    def __init__(self, num_classes, conv_dim=256, num_convs=4, **kwargs):
        init = keras.initializers.HeNormal()
        super().__init__(conv_dim, num_convs, conv_name="conv", kernel_initializer=init,
                         **kwargs)
        self.num_classes = num_classes
        policy = self.dtype_policy
        self.upsample = keras.layers.Conv2DTranspose(
            conv_dim, 2, strides=2, activation="relu", kernel_initializer=init, dtype=policy,
            name="upsample")
        self.logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer=init, dtype=policy,
                                          name="logits")

    def build(self, input_shape):
        size, channels = self.build_convs(input_shape)
        self.upsample.build((None, size, size, channels))
        self.logits.build((None, 2 * size, 2 * size, self.conv_dim))

    def call(self, roi_features):
        """Args: roi_features [B, N, P, P, C].

        Returns: float32 mask logits [B, N, 2P, 2P, K].
        """
        hidden = self.run_convs(roi_features)
        logits = tf.cast(self.logits(self.upsample(hidden)), tf.float32)
        return self.per_roi(logits, roi_features)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config
