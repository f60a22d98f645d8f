"""Feature Pyramid Network (Lin et al. 2017) over C2..C5, torchvision's FeaturePyramidNetwork.

Shapes: B images; level k has stride 2**k and Hk x Wk cells (Hk = ceil(H / 2**k) for a
ResNet on an H x W input); C is num_channels.

Sublayer names (torchvision fpn.inner_blocks.{i} / fpn.layer_blocks.{i}, i = k - 2):
"lateral_c{k}" (1x1 conv with bias) and "output_p{k}" (3x3 conv with bias), k = 2..5; with a
norm the convs have no bias and are followed by "lateral_c{k}_norm" / "output_p{k}_norm".
"""

import keras
from keras import ops

from mask_rcnn_tf.layers.norm import fold_frozen_norms, make_norm

_LEVELS = (2, 3, 4, 5)


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class FPN(keras.layers.Layer):
    """Lateral 1x1 convs, top-down nearest upsampling + add, 3x3 output convs; optional P6.

    Args:
        num_channels: Channels of every output level.
        use_p6: Also return "p6", used by the RPN only.
        p6_mode: How P6 is made; "maxpool" is torchvision's LastLevelMaxPool (kernel 1,
            stride 2 on P5, i.e. every other row and column of P5). The only mode.
        norm: None (convs with bias, as torchvision's default) or a make_norm kind applied
            after every conv.
        norm_groups: Groups for norm "gn".
        **kwargs: Standard Keras layer arguments (name, dtype, ...).
    """

    def __init__(
        self,
        num_channels=256,
        use_p6=True,
        p6_mode="maxpool",
        norm=None,
        norm_groups=32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_channels < 1:
            raise ValueError(f"FPN: num_channels must be >= 1, got {num_channels}")
        if p6_mode != "maxpool":
            raise ValueError(f"FPN: unknown p6_mode {p6_mode!r}; expected 'maxpool'")
        self.num_channels = num_channels
        self.use_p6 = use_p6
        self.p6_mode = p6_mode
        self.norm = norm
        self.norm_groups = norm_groups

        self._laterals = [self._conv_norm(f"lateral_c{k}", 1) for k in _LEVELS]
        self._outputs = [self._conv_norm(f"output_p{k}", 3) for k in _LEVELS]

    def _conv_norm(self, name, kernel_size):
        """Returns [Conv2D] or [Conv2D, norm]; torchvision drops the bias when a norm follows."""
        layers = [
            keras.layers.Conv2D(
                self.num_channels,
                kernel_size,
                padding="same",
                use_bias=self.norm is None,
                # torchvision: kaiming_uniform_(a=1), i.e. U(+-sqrt(3 / fan_in)); zero bias.
                kernel_initializer=keras.initializers.VarianceScaling(
                    1.0, mode="fan_in", distribution="uniform"
                ),
                bias_initializer="zeros",
                name=name,
                dtype=self.dtype_policy,
            )
        ]
        if self.norm is not None:
            layers.append(
                make_norm(
                    self.norm, f"{name}_norm", groups=self.norm_groups, dtype=self.dtype_policy
                )
            )
        return layers

    def build(self, input_shape):
        """Creates every weight; input_shape is a dict "c2".."c5" of (B, Hk, Wk, C_k) shapes."""
        missing = [f"c{k}" for k in _LEVELS if f"c{k}" not in input_shape]
        if missing:
            raise ValueError(f"FPN: input dict lacks {missing}; got keys {sorted(input_shape)}")
        for k, lateral, output in zip(_LEVELS, self._laterals, self._outputs):
            c_shape = tuple(input_shape[f"c{k}"])
            lateral[0].build(c_shape)
            for layer in lateral[1:] + output:
                layer.build(c_shape[:-1] + (self.num_channels,))

    def call(self, features):
        """Builds the pyramid.

        Args:
            features: dict "c2".."c5" of float [B, Hk, Wk, C_k] (other keys are ignored).

        Returns:
            Dict "p2".."p5" (and "p6" when use_p6) of [B, Hk, Wk, num_channels] in the
            compute dtype; P6 is [B, ceil(H5 / 2), ceil(W5 / 2), num_channels].
        """
        laterals = []
        for k, lateral in zip(_LEVELS, self._laterals):
            x = features[f"c{k}"]
            for layer in lateral:
                x = layer(x)
            laterals.append(x)

        merged = [laterals[-1]]
        for x in reversed(laterals[:-1]):
            merged.insert(0, x + _upsample_nearest(merged[0], ops.shape(x)[1:3]))

        pyramid = {}
        for k, x, output in zip(_LEVELS, merged, self._outputs):
            for layer in output:
                x = layer(x)
            pyramid[f"p{k}"] = x
        if self.use_p6:
            pyramid["p6"] = pyramid["p5"][:, ::2, ::2, :]
        return pyramid

    def fold_frozen_norms(self):
        """As ResNet.fold_frozen_norms, for FPN convs with norm "frozen_bn"."""
        return sum(fold_frozen_norms(chain) for chain in self._laterals + self._outputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_channels": self.num_channels,
                "use_p6": self.use_p6,
                "p6_mode": self.p6_mode,
                "norm": self.norm,
                "norm_groups": self.norm_groups,
            }
        )
        return config


def _upsample_nearest(x, size):
    """Nearest resize of x [B, h, w, C] to size (H, W), as PyTorch's F.interpolate(size=...).

    Output cell i reads input cell floor(i * h / H), in integers; for H = 2h this repeats every
    row twice, for H = 2h - 1 (odd lateral maps) it does the same and drops the last row.
    tf.image.resize's "nearest" uses half-pixel centres and picks other rows in that case.
    """
    in_h, in_w = ops.shape(x)[1], ops.shape(x)[2]
    rows = (ops.arange(size[0]) * in_h) // size[0]
    cols = (ops.arange(size[1]) * in_w) // size[1]
    return ops.take(ops.take(x, rows, axis=1), cols, axis=2)

