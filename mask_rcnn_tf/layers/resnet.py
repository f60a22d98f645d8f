"""ResNet / ResNeXt backbone in torchvision's layout, returning the C2..C5 feature maps.

Shapes: B images of H x W pixels (NHWC); Ck has stride 2**k, i.e. ceil(H / 2**k) rows.

Sublayer names, chosen so a converter can map torchvision's state dict onto them
(s = 2..5 is the stage, b the block index inside it, i = 1..3):

    torchvision                      this layer
    conv1, bn1                       stem_conv, stem_norm
    layer{s-1}.{b}.conv{i}           res{s}_block{b}_conv{i}
    layer{s-1}.{b}.bn{i}             res{s}_block{b}_norm{i}
    layer{s-1}.{b}.downsample.0      res{s}_block{b}_downsample_conv
    layer{s-1}.{b}.downsample.1      res{s}_block{b}_downsample_norm

Conv kernels are [kh, kw, C_in / groups, C_out] (torchvision: [C_out, C_in / groups, kh, kw]);
the norms hold gamma, beta, moving_mean, moving_variance (torchvision: weight, bias,
running_mean, running_var). Weightless helpers are named after the conv they serve:
"<conv>_pad", "res{s}_block{b}_relu{i}", plus "stem_relu", "stem_pool_pad" and "stem_pool".
"""

import keras
from keras import ops

from mask_rcnn_tf.layers.norm import fold_frozen_norms, make_norm

# depth -> (bottleneck?, blocks per stage res2..res5), as torchvision's resnet18 .. resnet152.
_ARCHITECTURES = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
_BOTTLENECK_EXPANSION = 4
_STAGE_PLANES = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class ResNet(keras.layers.Layer):
    """ResNet-18/34/50/101/152 and ResNeXt body (no classifier), exactly torchvision's graph.

    Stem: 7x7/2 conv (no bias), norm, ReLU, 3x3/2 max pool with padding 1. Stages res2..res5
    of BasicBlocks (depth 18, 34) or Bottlenecks (expansion 4, depth >= 50); the first block of
    a stage gets a 1x1 conv + norm shortcut when stride or width change. Stride-2 convs are
    zero-padded explicitly and run "valid", because Keras' "same" pads the bottom/right only
    and converted torchvision weights would see shifted windows.

    Freezing sets `trainable = False` on the frozen sublayers (a "bn" norm there then also
    runs on its moving statistics). Setting `trainable = True` on this layer or on a model that
    contains it propagates to every sublayer and unfreezes them all.

    Args:
        depth: 18, 34, 50, 101 or 152.
        groups: Grouped-conv cardinality of the bottleneck 3x3 (ResNeXt-101 32x8d: 32).
        width_per_group: Bottleneck 3x3 channels per group for 64-plane stages
            (ResNeXt-101 32x8d: 8); 18/34 need groups=1, width_per_group=64.
        norm: "frozen_bn", "bn" or "gn", see make_norm.
        norm_groups: Groups for "gn".
        synchronized_bn: For norm "bn": batch statistics over all replicas, not per replica.
        stride_in_1x1: False puts a bottleneck's stride on its 3x3 conv (torchvision),
            True on its first 1x1 conv (MSRA / Caffe2 weights used by Detectron).
        freeze_at: 0 freezes nothing, 1 the stem, k >= 2 the stem and res2..res{k}.
        base_width: Stem channels; stage widths are 64, 128, 256, 512 times base_width / 64
            (64 is the standard network; 32 halves every width for CPU-sized runs).
        **kwargs: Standard Keras layer arguments (name, dtype, ...).
    """

    def __init__(
        self,
        depth=50,
        groups=1,
        width_per_group=64,
        norm="frozen_bn",
        norm_groups=32,
        synchronized_bn=False,
        stride_in_1x1=False,
        freeze_at=2,
        base_width=64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth not in _ARCHITECTURES:
            raise ValueError(f"ResNet: depth must be one of {sorted(_ARCHITECTURES)}, got {depth}")
        bottleneck, blocks_per_stage = _ARCHITECTURES[depth]
        if not bottleneck and (groups != 1 or width_per_group != 64 or stride_in_1x1):
            raise ValueError(
                f"ResNet: depth {depth} uses basic blocks, which need groups=1, "
                f"width_per_group=64 and stride_in_1x1=False; got groups={groups}, "
                f"width_per_group={width_per_group}, stride_in_1x1={stride_in_1x1}"
            )
        if groups < 1 or width_per_group < 1 or base_width < 1:
            raise ValueError(
                f"ResNet: groups, width_per_group and base_width must be >= 1, got "
                f"{groups}, {width_per_group}, {base_width}"
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet: freeze_at must be in 0..5, got {freeze_at}")
        self.depth = depth
        self.groups = groups
        self.width_per_group = width_per_group
        self.norm = norm
        self.norm_groups = norm_groups
        self.synchronized_bn = synchronized_bn
        self.stride_in_1x1 = stride_in_1x1
        self.freeze_at = freeze_at
        self.base_width = base_width

        self._stem = self._conv("stem_conv", base_width, 7, 2) + [
            self._norm("stem_norm"),
            keras.layers.ReLU(name="stem_relu", dtype=self.dtype_policy),
            # Zero padding stands in for PyTorch's -inf padding: the input is post-ReLU, >= 0.
            keras.layers.ZeroPadding2D(1, name="stem_pool_pad", dtype=self.dtype_policy),
            keras.layers.MaxPooling2D(3, 2, name="stem_pool", dtype=self.dtype_policy),
        ]
        # Each stage is a list of blocks, each block a pair [main path, shortcut] of layer lists;
        # an empty shortcut is the identity.
        self._stages = []
        in_channels = base_width
        for stage, (planes, stride, num_blocks) in enumerate(
            zip(_STAGE_PLANES, _STAGE_STRIDES, blocks_per_stage), start=2
        ):
            planes = planes * base_width // 64
            blocks = []
            for index in range(num_blocks):
                prefix = f"res{stage}_block{index}"
                block_stride = stride if index == 0 else 1
                if bottleneck:
                    main, out_channels = self._bottleneck(prefix, planes, block_stride)
                else:
                    main, out_channels = self._basic(prefix, planes, block_stride)
                shortcut = []
                if block_stride != 1 or in_channels != out_channels:
                    shortcut = self._conv(
                        f"{prefix}_downsample_conv", out_channels, 1, block_stride
                    ) + [self._norm(f"{prefix}_downsample_norm")]
                blocks.append([main, shortcut])
                in_channels = out_channels
            self._stages.append(blocks)

        if freeze_at >= 1:
            for layer in self._stem:
                layer.trainable = False
        for blocks in self._stages[: max(freeze_at - 1, 0)]:
            for main, shortcut in blocks:
                for layer in main + shortcut:
                    layer.trainable = False

    def _conv(self, name, filters, kernel_size, strides, groups=1):
        """Returns [optional ZeroPadding2D, Conv2D] padded as PyTorch's padding=kernel_size // 2."""
        layers = []
        if strides > 1 and kernel_size > 1:
            layers.append(
                keras.layers.ZeroPadding2D(
                    kernel_size // 2, name=f"{name}_pad", dtype=self.dtype_policy
                )
            )
            padding = "valid"
        else:
            # At stride 1 "same" pads an odd kernel symmetrically, exactly as PyTorch does.
            padding = "same" if kernel_size > 1 else "valid"
        layers.append(
            keras.layers.Conv2D(
                filters,
                kernel_size,
                strides=strides,
                padding=padding,
                groups=groups,
                use_bias=False,
                # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
                kernel_initializer=keras.initializers.VarianceScaling(
                    2.0, mode="fan_out", distribution="untruncated_normal"
                ),
                name=name,
                dtype=self.dtype_policy,
            )
        )
        return layers

    def _norm(self, name):
        return make_norm(
            self.norm,
            name,
            groups=self.norm_groups,
            synchronized=self.synchronized_bn,
            dtype=self.dtype_policy,
        )

    def _relu(self, name):
        return keras.layers.ReLU(name=name, dtype=self.dtype_policy)

    def _bottleneck(self, prefix, planes, stride):
        """Returns (main-path layers, output channels) of a torchvision Bottleneck."""
        width = int(planes * (self.width_per_group / 64.0)) * self.groups
        stride_1x1, stride_3x3 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        out_channels = planes * _BOTTLENECK_EXPANSION
        main = (
            self._conv(f"{prefix}_conv1", width, 1, stride_1x1)
            + [self._norm(f"{prefix}_norm1"), self._relu(f"{prefix}_relu1")]
            + self._conv(f"{prefix}_conv2", width, 3, stride_3x3, groups=self.groups)
            + [self._norm(f"{prefix}_norm2"), self._relu(f"{prefix}_relu2")]
            + self._conv(f"{prefix}_conv3", out_channels, 1, 1)
            + [self._norm(f"{prefix}_norm3")]
        )
        return main, out_channels

    def _basic(self, prefix, planes, stride):
        """Returns (main-path layers, output channels) of a torchvision BasicBlock."""
        main = (
            self._conv(f"{prefix}_conv1", planes, 3, stride)
            + [self._norm(f"{prefix}_norm1"), self._relu(f"{prefix}_relu1")]
            + self._conv(f"{prefix}_conv2", planes, 3, 1)
            + [self._norm(f"{prefix}_norm2")]
        )
        return main, planes

    def build(self, input_shape):
        """Creates every weight; input_shape is the images' (B, H, W, 3), B, H, W may be None."""
        shape = _build_sequence(self._stem, tuple(input_shape))
        for blocks in self._stages:
            for main, shortcut in blocks:
                _build_sequence(shortcut, shape)
                shape = _build_sequence(main, shape)

    def call(self, images):
        """Runs the backbone.

        Args:
            images: float [B, H, W, 3], normalized RGB.

        Returns:
            Dict "c2", "c3", "c4", "c5" of [B, ceil(H / s), ceil(W / s), C] in the compute
            dtype, strides s = 4, 8, 16, 32; C = 256, 512, 1024, 2048 (bottleneck) or
            64, 128, 256, 512 (basic), times base_width / 64.
        """
        x = images
        for layer in self._stem:
            x = layer(x)
        features = {}
        for stage, blocks in enumerate(self._stages, start=2):
            for main, shortcut in blocks:
                residual = x
                for layer in shortcut:
                    residual = layer(residual)
                for layer in main:
                    x = layer(x)
                x = ops.relu(x + residual)
            features[f"c{stage}"] = x
        return features

    def fold_frozen_norms(self):
        """Folds each frozen BatchNorm into the conv before it, for inference (see
        FrozenBatchNormalization.fold_into); returns how many were folded (0 unless frozen_bn)."""
        chains = [self._stem] + [path for blocks in self._stages for block in blocks
                                 for path in block]
        return sum(fold_frozen_norms(chain) for chain in chains)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "groups": self.groups,
                "width_per_group": self.width_per_group,
                "norm": self.norm,
                "norm_groups": self.norm_groups,
                "synchronized_bn": self.synchronized_bn,
                "stride_in_1x1": self.stride_in_1x1,
                "freeze_at": self.freeze_at,
                "base_width": self.base_width,
            }
        )
        return config


def _build_sequence(layers, shape):
    """Builds `layers` as a chain fed with `shape`; returns the chain's output shape."""
    for layer in layers:
        if not layer.built:
            layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape
