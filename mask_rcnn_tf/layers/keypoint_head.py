"""Keypoint head: an FCN predicting one heatmap per keypoint for every RoI (paper section 5).

Shapes: B images, N RoIs, P pooled size (14), 4P heatmap size (56), C channels, K keypoints.

Sublayer names follow the reference implementations so a weight converter can map them:
    conv_fcn{i}, i = 1..num_convs    torchvision roi_heads.keypoint_head.{2 (i - 1)}
                                     (an nn.Sequential of conv, ReLU pairs); Detectron2
                                     roi_heads.keypoint_head.conv_fcn{i}
    kps_score_lowres                 torchvision roi_heads.keypoint_predictor.kps_score_lowres;
                                     Detectron2 roi_heads.keypoint_head.score_lowres
Kernel layouts: a Conv2D kernel [k, k, C_in, C_out] is torch's [C_out, C_in, k, k] transposed
(2, 3, 1, 0); the Conv2DTranspose kernel [4, 4, K, C_in] is torch's ConvTranspose2d weight
[C_in, K, 4, 4] transposed (2, 3, 1, 0), with no spatial flip.
"""

import keras
import tensorflow as tf

from mask_rcnn_tf.layers.roi_fcn import RoIFCNHead

# torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), zero bias. Keras
# counts a transposed kernel's fan_out over its input channels, as torch does.
_KAIMING_FAN_OUT = {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out",
                               "distribution": "untruncated_normal"}}


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class KeypointHead(RoIFCNHead):
    """num_convs x (3x3 conv + ReLU) -> 4x4 stride-2 transposed conv -> 2x bilinear upsampling.

    The transposed conv is torch's ConvTranspose2d(C, K, 4, stride=2, padding=1): output pixel
    y = 2 i + k - 1 gathers input i through kernel tap k, so P becomes 2P; Keras'
    padding="same" crops the same one pixel per side. The upsampling is torch's
    interpolate(scale_factor=2, mode="bilinear", align_corners=False), which is
    tf.image.resize's bilinear with half-pixel centres. No activation on the logits.

    Args:
        num_keypoints: K, heatmaps per RoI.
        conv_dim: channels of the hidden convs.
        num_convs: number of 3x3 convs.
    """

    def __init__(self, num_keypoints, conv_dim=512, num_convs=8, **kwargs):
        super().__init__(conv_dim, num_convs, conv_name="conv_fcn",
                         kernel_initializer=_KAIMING_FAN_OUT, **kwargs)
        self.num_keypoints = num_keypoints
        self.kps_score_lowres = keras.layers.Conv2DTranspose(
            num_keypoints, 4, strides=2, padding="same",
            kernel_initializer=keras.initializers.get(_KAIMING_FAN_OUT), dtype=self.dtype_policy,
            name="kps_score_lowres")

    def build(self, input_shape):
        size, channels = self.build_convs(input_shape)
        self.kps_score_lowres.build((None, size, size, channels))

    def call(self, roi_features):
        """Args: roi_features [B, N, P, P, C].

        Returns: float32 heatmap logits [B, N, 4P, 4P, K].
        """
        size = roi_features.shape[2]
        low = tf.cast(self.kps_score_lowres(self.run_convs(roi_features)), tf.float32)
        logits = tf.image.resize(low, [4 * size, 4 * size], method="bilinear")
        return self.per_roi(logits, roi_features)

    def get_config(self):
        config = super().get_config()
        config.update(num_keypoints=self.num_keypoints)
        return config
