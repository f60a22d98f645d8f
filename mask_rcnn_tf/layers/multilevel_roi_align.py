"""RoIAlign over FPN levels: each box is pooled from the level its size maps to."""

import keras
import tensorflow as tf

from mask_rcnn_tf.ops import roi_align


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class MultiLevelRoIAlign(keras.layers.Layer):
    """Assigns boxes to levels min_level..max_level and pools a P x P feature per box.

    Args:
        output_size: P.
        min_level, max_level: FPN levels pooled from (P2..P5 by default; strides 2**level).
        sampling_ratio: bilinear samples per bin side.
        aligned: half-pixel aligned coordinates (Detectron2) or not (torchvision v1).
        canonical_size, canonical_level: a box of canonical_size pixels maps to canonical_level.
    """

    def __init__(self, output_size, min_level=2, max_level=5, sampling_ratio=2, aligned=True,
                 canonical_size=224.0, canonical_level=4, **kwargs):
        super().__init__(**kwargs)
        self.output_size = output_size
        self.min_level = min_level
        self.max_level = max_level
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def call(self, features, boxes):
        """Pools box features.

        Args:
            features: dict "p2".."p5" of [B, Hl, Wl, C].
            boxes: float32 [B, N, 4], [y1, x1, y2, x2], input pixels.

        Returns:
            [B, N, P, P, C] in the features' dtype.
        """
        levels = range(self.min_level, self.max_level + 1)
        level_ids = roi_align.assign_levels(
            boxes, self.min_level, self.max_level, self.canonical_size, self.canonical_level)
        return roi_align.roi_align(
            [features[f"p{level}"] for level in levels], boxes, level_ids - self.min_level,
            strides=[2**level for level in levels], output_size=self.output_size,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_size=self.output_size, min_level=self.min_level, max_level=self.max_level,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned,
            canonical_size=self.canonical_size, canonical_level=self.canonical_level)
        return config
