"""Box head: two fully connected layers, then class logits and class-specific box deltas.

Shapes: B images, N RoIs, P pooled size, C channels, K classes including background.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class BoxHead(keras.layers.Layer):
    """Flatten -> FC + ReLU -> FC + ReLU -> (K logits, 4K deltas).

    Args:
        num_classes: K, background included (class 0), as torchvision counts them.
        fc_dim: width of the two hidden layers.
    """

    def __init__(self, num_classes, fc_dim=1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        policy = self.dtype_policy
        self.fc1 = keras.layers.Dense(fc_dim, activation="relu", dtype=policy, name="fc1")
        self.fc2 = keras.layers.Dense(fc_dim, activation="relu", dtype=policy, name="fc2")
        # Small initial outputs (Detectron's choice): the first steps neither favour a class
        # nor move boxes far.
        self.class_logits = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=policy, name="class_logits")
        self.box_deltas = keras.layers.Dense(
            4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            dtype=policy, name="box_deltas")

    def build(self, input_shape):
        flat = int(input_shape[2]) * int(input_shape[3]) * int(input_shape[4])
        self.fc1.build((None, flat))
        self.fc2.build((None, self.fc_dim))
        self.class_logits.build((None, self.fc_dim))
        self.box_deltas.build((None, self.fc_dim))

    def call(self, roi_features):
        """Args: roi_features [B, N, P, P, C].

        Returns:
            class_logits float32 [B, N, K]; box_deltas float32 [B, N, K, 4] (dy, dx, dh, dw)
            in the coder's weighted units.
        """
        shape = tf.shape(roi_features)
        batch, num = shape[0], shape[1]
        flat_dim = roi_features.shape[2] * roi_features.shape[3] * roi_features.shape[4]
        hidden = tf.reshape(roi_features, [batch * num, flat_dim])
        hidden = self.fc2(self.fc1(hidden))
        logits = tf.reshape(tf.cast(self.class_logits(hidden), tf.float32), [batch, num, self.num_classes])
        deltas = tf.reshape(tf.cast(self.box_deltas(hidden), tf.float32), [batch, num, self.num_classes, 4])
        return logits, deltas

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, fc_dim=self.fc_dim)
        return config
