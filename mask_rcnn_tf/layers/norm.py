"""Normalization layers for the backbone and FPN: frozen BatchNorm and a factory by kind."""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class FrozenBatchNormalization(keras.layers.Layer):
    """BatchNorm with fixed statistics and affine parameters (torchvision FrozenBatchNorm2d).

    Computes y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta over the
    last (channel) axis. All four weights are non-trainable and carry the names Keras'
    BatchNormalization uses, so ImageNet BatchNorm weights load into it unchanged. Per-replica
    batches of one or two images give useless batch statistics, which is why detection
    backbones freeze them.

    Args:
        epsilon: Added to the variance before the square root; torchvision uses 1e-5.
        **kwargs: Standard Keras layer arguments (name, dtype, ...).
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        if epsilon < 0:
            raise ValueError(f"FrozenBatchNormalization: epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon
        self.folded = False

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"FrozenBatchNormalization '{self.name}': the channel axis of input shape "
                f"{input_shape} must be known"
            )
        # autocast=False: under a mixed policy Keras would otherwise hand call() bfloat16
        # copies, and the scale/shift must be derived in float32 before the cast.
        for name, initializer in (
            ("gamma", "ones"),
            ("beta", "zeros"),
            ("moving_mean", "zeros"),
            ("moving_variance", "ones"),
        ):
            setattr(
                self,
                name,
                self.add_weight(
                    shape=(channels,),
                    initializer=initializer,
                    trainable=False,
                    autocast=False,
                    name=name,
                ),
            )

    def call(self, inputs):
        """Applies the frozen affine transform.

        Args:
            inputs: float [..., C], any leading shape, channels last.

        Returns:
            Tensor of the same shape, in the layer's compute dtype.
        """
        if self.folded:
            # A BiasAdd op (not an Add) is what TensorFlow's CPU remapper fuses into the
            # convolution before it, with the ReLU after it, into one oneDNN kernel.
            return tf.nn.bias_add(inputs, ops.cast(self.beta, self.compute_dtype))
        scale, shift = self._scale_and_shift()
        return inputs * ops.cast(scale, self.compute_dtype) + ops.cast(shift, self.compute_dtype)

    def _scale_and_shift(self):
        """float32 [C] scale and shift with call(x) = x * scale + shift."""
        gamma = ops.cast(self.gamma, "float32")
        beta = ops.cast(self.beta, "float32")
        mean = ops.cast(self.moving_mean, "float32")
        variance = ops.cast(self.moving_variance, "float32")
        scale = gamma * ops.rsqrt(variance + self.epsilon)
        return scale, beta - mean * scale

    def fold_into(self, conv):
        """Moves this layer's scale into the kernel of `conv`, the bias-free Conv2D it follows.

        Afterwards conv's kernel is kernel * scale (per output channel, computed in float32),
        beta holds the shift, gamma / moving_mean / moving_variance hold 1 / 0 / 1 - epsilon (so
        the four weights still describe the layer's function), and call() only adds beta. For
        inference graphs (the export): conv + bias + ReLU then run as one fused kernel instead
        of a convolution followed by a multiply and an add over the whole activation map. Not
        undone: weights saved afterwards belong to the folded model.

        Raises:
            ValueError: conv has a bias, its output channels differ from this layer's, or the
                layer is folded already.
        """
        if self.folded:
            raise ValueError(f"FrozenBatchNormalization '{self.name}' is folded already")
        if conv.use_bias or conv.filters != self.gamma.shape[0]:
            raise ValueError(
                f"FrozenBatchNormalization '{self.name}' folds only into a bias-free conv of "
                f"{self.gamma.shape[0]} filters; '{conv.name}' has use_bias={conv.use_bias}, "
                f"{conv.filters} filters"
            )
        scale, shift = self._scale_and_shift()
        # Kernels are [..., C_in / groups, C_out]: the scale broadcasts over the last axis.
        conv.kernel.assign(ops.cast(conv.kernel, "float32") * scale)
        self.beta.assign(shift)
        self.gamma.assign(ops.ones_like(shift))
        self.moving_mean.assign(ops.zeros_like(shift))
        self.moving_variance.assign(ops.ones_like(shift) - self.epsilon)
        self.folded = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


def fold_frozen_norms(layers):
    """Folds every FrozenBatchNormalization that directly follows a Conv2D in the chain `layers`
    and is not folded yet into that conv (FrozenBatchNormalization.fold_into); returns how many
    it folded."""
    folded = 0
    for conv, norm in zip(layers, layers[1:]):
        if (isinstance(conv, keras.layers.Conv2D) and isinstance(norm, FrozenBatchNormalization)
                and not norm.folded):
            norm.fold_into(conv)
            folded += 1
    return folded


def make_norm(kind, name, groups=32, synchronized=False, dtype=None):
    """Creates a normalization layer by kind.

    Args:
        kind: "frozen_bn" (FrozenBatchNormalization), "bn" (trainable BatchNormalization,
            momentum 0.9 = PyTorch's 0.1) or "gn" (GroupNormalization).
        name: Layer name.
        groups: Number of groups for "gn"; ignored otherwise.
        synchronized: For "bn": synchronize batch statistics across replicas.
        dtype: Keras dtype policy (or its name) for the layer; None uses the global policy.

    Returns:
        A keras.layers.Layer normalizing the last axis with epsilon 1e-5.

    Raises:
        ValueError: If kind is unknown.
    """
    if kind == "frozen_bn":
        return FrozenBatchNormalization(epsilon=1e-5, name=name, dtype=dtype)
    if kind == "bn":
        return keras.layers.BatchNormalization(
            epsilon=1e-5, momentum=0.9, synchronized=synchronized, name=name, dtype=dtype
        )
    if kind == "gn":
        return keras.layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name, dtype=dtype)
    raise ValueError(f"make_norm: unknown norm kind {kind!r}; expected 'frozen_bn', 'bn' or 'gn'")
